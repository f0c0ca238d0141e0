"""What a comparison saw, kept in memory for the pitfall detectors.

A :class:`Report` holds small summaries; detectors need the full tensors of
the culprit layer (inputs, outputs, parameters, config on both sides). This
object carries them from :func:`xfdiff.compare` to the diagnosis step and is
dropped afterwards.

Reference and port are named once: every :class:`Row` and the
:class:`Evidence` hold ``ref`` and ``port``; ``torch`` / ``flax`` are derived
from which framework the reference is (:func:`by_framework`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .align import Alignment
from .layout import Transform
from .report import LayerDiff
from .stats import Tolerance
from .stats.meet import host_dict
from .trace import CallRecord, Trace

FRAMEWORKS = ("torch", "flax")


def other(framework: str) -> str:
    """The framework that is not ``framework``."""
    return "flax" if framework == "torch" else "torch"


def by_framework(reference: str, ref: Any, port: Any) -> tuple[Any, Any]:
    """``(torch_thing, flax_thing)`` from the reference's and the port's, given which framework the reference is.

    The same swap read backwards: ``by_framework(reference, torch_thing, flax_thing)`` is ``(ref, port)``.
    """
    return (ref, port) if reference == "torch" else (port, ref)


@dataclass
class Row:
    """One aligned call with everything recorded about it on both sides."""

    layer: LayerDiff
    ref: CallRecord
    port: CallRecord
    reference: str  # the reference's framework: "torch" | "flax"
    ref_key: str | None = None  # output leaf compared (reference side)
    port_key: str | None = None  # output leaf compared (port side)
    transform: Transform | None = None  # reference layout -> port layout
    port_local: CallRecord | None = None  # the port call under teacher forcing
    # port input leaf -> (reference input leaf, transform): what teacher forcing feeds the port call
    inputs_from_ref: dict[str, tuple[str, Transform]] = field(default_factory=dict)
    gap: tuple | None = None  # (child row, port input leaf) where this call's own code shows under forcing
    # paired by output values only, and its inputs differ from the reference call's in the plain run:
    # teacher forcing would feed it a tensor it does not take, so it is not forced and makes no own-error claim
    unverified_inputs: bool = False

    @property
    def input_map(self) -> dict[str, str]:
        """Port input leaf -> the reference input leaf that feeds it."""
        return {pk: rk for pk, (rk, _) in self.inputs_from_ref.items()}

    @property
    def torch(self) -> CallRecord:
        return by_framework(self.reference, self.ref, self.port)[0]

    @property
    def flax(self) -> CallRecord:
        return by_framework(self.reference, self.ref, self.port)[1]


@dataclass
class Side:
    """One side of a comparison as the detectors see it."""

    framework: str  # "torch" | "flax"
    trace: Trace
    model: Any = None
    local_trace: Trace | None = None  # the port under teacher forcing (the reference has none)


@dataclass
class Evidence:
    """Traces, alignment and rows of one comparison (reference and port sides named)."""

    ref: Side
    port: Side
    alignment: Alignment
    rows: list[Row]
    tolerance: Tolerance
    final: Row | None = None

    @property
    def reference(self) -> str:
        return self.ref.framework

    def side(self, framework: str) -> Side:
        return self.ref if self.ref.framework == framework else self.port

    @property
    def torch_trace(self) -> Trace:
        return self.side("torch").trace

    @property
    def flax_trace(self) -> Trace:
        return self.side("flax").trace

    @property
    def torch_model(self) -> Any:
        return self.side("torch").model

    @property
    def flax_model(self) -> Any:
        return self.side("flax").model

    def trace(self, side: str) -> Trace:
        return self.side(side).trace

    def params(self, side: str, path: str | None) -> dict[str, np.ndarray]:
        if path is None:
            return {}
        # On the device path parameters stay where they live; a check reads these on the host.
        return host_dict(self.trace(side).params.get(path, {}))

    def config(self, side: str, path: str | None) -> dict[str, Any]:
        if path is None:
            return {}
        return self.trace(side).config.get(path, {})

    def children(self, side: str, path: str, call_index: int = 0) -> list[CallRecord]:
        """Direct child calls of ``path`` recorded on ``side`` (execution order)."""
        prefix = path + "." if path else ""
        depth = path.count(".") + 1 if path else 0
        return [
            r
            for r in self.trace(side).records
            if r.path.startswith(prefix) and r.path.count(".") == depth and r.path != path
        ]

    def row_for(self, torch_path: str | None, call_index: int = 0) -> Row | None:
        for r in self.rows:
            if r.layer.torch_path == torch_path and r.layer.call_index == call_index:
                return r
        return None


def rows_to_host(ev: Evidence, rows: list[Row]) -> None:
    """Host copies of the device values of ``rows`` and of every call inside them, in place.

    A device capture keeps activations where they were computed; the
    detectors read the rows still blamed after the rounding floor (and the
    calls inside them) as numpy, so only those move, once. Nothing moves on
    a clean comparison.
    """
    from .trace import to_host

    ref_paths, port_paths = set(), set()
    for row in rows:
        for rec in (row.ref, row.port, row.port_local):
            if rec is not None:
                to_host(rec)
        if row.gap is not None:
            for rec in (row.gap[0].ref, row.gap[0].port, row.gap[0].port_local):
                if rec is not None:
                    to_host(rec)
        ref_paths.add(row.ref.path)
        port_paths.add(row.port.path)
    for trace, paths in ((ev.ref.trace, ref_paths), (ev.port.trace, port_paths), (ev.port.local_trace, port_paths)):
        if trace is None or not trace.meta.get("on_device") or not paths:
            continue
        if "" in paths:
            for rec in trace.records:
                to_host(rec)
            continue
        prefixes = tuple(p + "." for p in paths)
        for rec in trace.records:
            if rec.path.startswith(prefixes):
                to_host(rec)
