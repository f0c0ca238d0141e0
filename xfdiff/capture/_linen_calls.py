"""What a traced linen forward records, and how calls inside the model's own JAX transforms reach the host.

Design note. Under ``jax.jit`` a call's values are tracers of the jitted
function and are returned from it. A call inside a transform of the model's
own (``nn.scan``, ``nn.remat``, ``nn.vmap``, an inner ``jax.jit``) holds
tracers of an inner trace that cannot be returned; such a call hands its
values to the host with ``jax.debug.callback`` when it actually runs (once
per scan step, once per example under ``vmap``, where the examples are
stacked back into one call), and fetches its teacher-forced inputs with
``jax.pure_callback`` (``nn.remat`` rejects effectful callbacks) by the index
of that run, since its trace-time index says nothing about which step is
running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np


class Static(NamedTuple):
    """What is known of one call when it is traced."""

    path: str
    index: int
    module_type: str
    method: str
    config: dict
    slots: tuple | None  # (ins, outs, raw) positions in the returned values; None: values went elsewhere
    via_callback: bool  # values inside a JAX transform: they reach the host through a callback
    batch: dict  # leaf key -> vmap axis, for calls traced per example under nn.vmap
    batch_size: int  # examples per vmapped call (0: not vmapped)
    error: str | None


class Calls:
    """The calls one traced forward records: static facts at trace time, values from callbacks at run time.

    A cached jitted function keeps its ``Calls``: the statics are filled when
    it is traced, ``host`` afresh each time it runs.
    """

    def __init__(self) -> None:
        self.statics: list[Static] = []
        self.host: list[tuple[int, dict, dict, dict]] = []
        self.on_call: Callable | None = None
        self.shape_values: list = []  # skeleton: every value as a jax.ShapeDtypeStruct
        self.subst: Mapping = {}  # this run's teacher forcing, read by calls inside transforms
        self.fetch_counts: dict[str, int] = {}
        self.run_counts: dict[str, int] = {}

    def reset(self, on_call: Callable | None, subst: Mapping) -> None:
        """Before each run of the (possibly cached) forward."""
        self.host.clear()
        self.on_call, self.subst = on_call, subst
        self.fetch_counts, self.run_counts = {}, {}

    def on_host(self, entry: int, ins, outs, raw) -> None:
        """Runs when a call inside a JAX transform actually executed (once per scan step / vmap example)."""
        ins, outs, raw = ({k: np.asarray(v) for k, v in d.items()} for d in (ins, outs, raw))
        if self.on_call is None:
            self.host.append((entry, ins, outs, raw))
            return
        self.host.append((entry, {}, {}, {}))  # streaming keeps no arrays
        st = self.statics[entry]
        idx = self.run_counts.get(st.path, 0)
        self.run_counts[st.path] = idx + 1
        self.on_call(st.path, idx, st.module_type, st.method, entry, ins, outs, raw)


def fetch_at_run_time(calls: Calls, path: str, keys: list[str], originals: list) -> list:
    """The substitutes of ``path``'s current run (or the originals where it has none), fetched from the host."""

    def fetch(*values):
        idx = calls.fetch_counts.get(path, 0)
        calls.fetch_counts[path] = idx + 1
        d = calls.subst.get((path, idx)) or {}
        keyed = dict(zip(keys, values, strict=True))
        return [
            np.asarray(d[k]).astype(v.dtype).reshape(v.shape) if k in d else np.asarray(v) for k, v in keyed.items()
        ]

    shapes = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in originals]
    # A pure callback carries no effect, so nn.remat (whose partial evaluation rejects effects) can hold it;
    # its result replaces the call's inputs, so it is never dropped, and a scan's steps run it in order.
    return jax.pure_callback(fetch, shapes, *originals, vmap_method="sequential")


def inner_tracer(values, outer: Any) -> bool:
    """True when a value belongs to a trace inside the forward (nn.scan, nn.remat, nn.vmap, an inner jit)."""
    return any(isinstance(v, jax.core.Tracer) and getattr(v, "_trace", None) is not outer for v in values)


def batch_axes(leaves: dict) -> dict[str, int]:
    """Leaf key -> batch axis of values traced per example under ``vmap`` (empty when unknown)."""
    out = {}
    for k, v in leaves.items():
        dim = getattr(v, "batch_dim", None) if type(v).__name__ == "BatchTracer" else None
        if isinstance(dim, int):
            out[k] = dim
    return out


def _stack_examples(group: list[tuple], batch: dict) -> tuple:
    """One record's (ins, outs, raw) from the per-example callbacks of a vmapped call."""
    first = group[0]
    merged = []
    for i in range(1, 4):
        d = {}
        for k, v in first[i].items():
            axis = batch.get(k)
            d[k] = np.stack([g[i][k] for g in group], axis=axis) if axis is not None else v
        merged.append(d)
    return tuple(merged)


def group_start(statics: list[Static], entry: int) -> int:
    """The first entry of the run of consecutive callback entries holding ``entry``: where their records go."""
    while entry > 0 and statics[entry - 1].via_callback:
        entry -= 1
    return entry


def host_calls(calls: Calls) -> list[tuple]:
    """Callback values in the order they ran; the per-example calls of a vmapped call stacked into one."""
    out: list[tuple] = []
    pending: dict[int, list] = {}
    for entry, ins, outs, raw in calls.host:
        batch = calls.statics[entry].batch
        if not batch:
            out.append((entry, ins, outs, raw))
            continue
        group = pending.setdefault(entry, [])
        group.append((entry, ins, outs, raw))
        if len(group) == calls.statics[entry].batch_size:
            out.append((entry, *_stack_examples(group, batch)))
            del pending[entry]
    for group in pending.values():  # an incomplete batch: keep the examples as they came
        out.extend(group)
    return out
