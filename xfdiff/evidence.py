"""What a comparison saw, kept in memory for the pitfall detectors.

A :class:`Report` holds small summaries; detectors need the full tensors of
the culprit layer (inputs, outputs, parameters, config on both sides). This
object carries them from :func:`xfdiff.compare` to the diagnosis step and is
dropped afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .align import Alignment
from .layout import Transform
from .metrics import Tolerance
from .report import LayerDiff
from .trace import CallRecord, Trace


@dataclass
class Row:
    """One aligned call with everything recorded about it on both sides."""

    layer: LayerDiff
    torch: CallRecord
    flax: CallRecord
    ref_key: str | None  # output leaf compared (reference side)
    port_key: str | None  # output leaf compared (port side)
    transform: Transform | None  # reference layout -> port layout
    port_local: CallRecord | None = None  # the port call under teacher forcing
    input_map: dict[str, str] = field(default_factory=dict)  # port input leaf -> ref input leaf
    gap: tuple | None = None  # (child row, port input leaf) where this call's own code shows under forcing


@dataclass
class Evidence:
    """Traces, alignment and rows of one comparison (reference and port sides named)."""

    torch_trace: Trace
    flax_trace: Trace
    alignment: Alignment
    rows: list[Row]
    tolerance: Tolerance
    reference: str = "torch"
    flax_local_trace: Trace | None = None
    torch_local_trace: Trace | None = None
    torch_model: Any = None
    flax_model: Any = None
    final: Row | None = None

    @property
    def port(self) -> str:
        return "flax" if self.reference == "torch" else "torch"

    def trace(self, side: str) -> Trace:
        return self.torch_trace if side == "torch" else self.flax_trace

    def params(self, side: str, path: str | None) -> dict[str, np.ndarray]:
        if path is None:
            return {}
        return self.trace(side).params.get(path, {})

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
