"""Recording calls inside JAX code: NNX module calls and ``xfdiff.tap`` steps.

Design note. Values can leave a traced forward pass in two ways:

- ``direct``: each call's inputs and outputs are collected while the forward
  runs (at trace time under ``jax.jit``) and returned from the jitted
  function. Order and call indices are exact and cheap.
- ``callback``: when the model applies its own transforms (``nnx.jit``,
  ``jax.lax.scan``, ``jax.checkpoint`` ...) values live in an inner trace and
  cannot be returned; each call then hands its values to the host through
  ``jax.debug.callback`` and gets its call index when it actually runs, so a
  cached inner function that runs twice still gives two records.

A side first tries ``direct`` and switches to ``callback`` when a value escaped
an inner trace. Teacher forcing (``substitute``) is looked up with trace-time
call indices in both modes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..tap import _active, set_recorder
from ..trace import CallRecord, Trace, user_path
from ._common import is_output_leaf
from ._jax import CONCRETE_ERRORS, as_jax, device_mode, flatten_leaves, keep, replace_leaves
from .base import Substitute

DIRECT, CALLBACK, UNORDERED = "direct", "callback", "unordered"

# Errors meaning "a value escaped an inner transform": retry with callbacks.
ESCAPE_ERRORS: tuple[type[BaseException], ...] = (jax.errors.UnexpectedTracerError,)


class Escaped(Exception):
    """Raised in eager direct mode when a recorded value is an inner-transform tracer."""


def substitute_arrays(substitute: Substitute | None) -> dict[str, Any]:
    """Substituted values keyed ``path#index#leaf`` (passed to the jitted run as arguments)."""
    return {f"{p}#{i}#{leaf}": as_jax(a) for (p, i), d in (substitute or {}).items() for leaf, a in d.items()}


class Recorder:
    """Collects the calls of one forward run.

    Args:
        substitute: teacher-forcing inputs ``{(path, index): {leaf: array}}``.
        svals: the same values as arrays usable inside the run (tracers under jit).
        record_outputs: record output leaves.
        mode: ``"direct"``, ``"callback"`` (ordered) or ``"unordered"``.
        eager: True when no outer ``jax.jit`` wraps the run.
    """

    def __init__(self, substitute, svals, record_outputs: bool, mode: str, eager: bool):
        self.sub_keys = {k: tuple(v) for k, v in (substitute or {}).items()}
        self.svals = svals
        self.record_outputs = record_outputs
        self.mode = mode
        self.eager = eager
        self.trace_counts: dict[str, int] = {}
        self.statics: list[tuple] = []  # (path, type, method, config, trace index)
        self.values: list[tuple] = []  # direct: (entry, ins, outs, raw)
        self.host: list[CallRecord] = []  # callback: records as they ran
        self.run_counts: dict[str, int] = {}
        self.stack: list[int] = []
        self.scope: list[str] = []  # paths of the NNX module calls now running (taps inside are relative)
        self.tap_skip: Callable[[Any], bool] | None = None  # subtrees a tapped step does not take as inputs
        self.token: Any = None  # which capture an NNX module's path tag belongs to
        self.on_device = device_mode()  # records keep jax.Array values (statistics run where they live)

    # --- at call time ----------------------------------------------------------------
    def call(
        self,
        path: str,
        typ: str,
        cfg: dict,
        fn: Callable,
        args: tuple,
        kwargs: dict,
        skip=None,
        owner: Any = None,
        method: str = "__call__",
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as the call ``path``: force inputs, record both sides."""
        idx = self._next(path)
        keys = self.sub_keys.get((path, idx), ())
        out_keys = [k for k in keys if is_output_leaf(k)]
        keys = [k for k in keys if not is_output_leaf(k)]
        raw = {}
        if keys:
            own = {**flatten_leaves(args, ("args",), skip), **flatten_leaves(kwargs, ("kwargs",), skip)}
            raw = {k: v for k, v in own.items() if k in keys}
            s = {k: self.svals[f"{path}#{idx}#{k}"] for k in keys}
            args = replace_leaves(args, ("args",), s, skip)
            kwargs = replace_leaves(kwargs, ("kwargs",), s, skip)
        ins = {**flatten_leaves(args, ("args",), skip), **flatten_leaves(kwargs, ("kwargs",), skip)}
        self.stack.append(id(owner))
        if owner is not None:
            self.scope.append(path)
        try:
            out = fn(*args, **kwargs)
        finally:
            self.stack.pop()
            if owner is not None:
                self.scope.pop()
        out = self._splice(path, idx, out_keys, out, skip)
        outs = flatten_leaves(out, ("out",), skip) if self.record_outputs else {}
        self._emit((path, typ, method, cfg, idx), ins, outs, raw)
        return out

    def tap_value(self, path: str, value: Any) -> Any:
        """``xfdiff.tap(path, value)`` while this recorder is active."""
        return self.value(self._tap_path(path), value)

    def tap_call(self, path: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """``xfdiff.tap(path, fn, *args, **kwargs)`` while this recorder is active."""
        name = getattr(fn, "__name__", type(fn).__name__)
        return self.call(self._tap_path(path), name, {}, fn, tuple(args), dict(kwargs), skip=self.tap_skip)

    def _tap_path(self, path: str) -> str:
        path = user_path(path)  # the user's own name, kept as written
        parent = self.scope[-1] if self.scope else ""
        return f"{parent}.{path}" if parent else path

    def value(self, path: str, value: Any) -> Any:
        """Record ``value`` as the output of the call ``path`` (no inputs)."""
        idx = self._next(path)
        value = self._splice(path, idx, [k for k in self.sub_keys.get((path, idx), ()) if is_output_leaf(k)], value)
        outs = flatten_leaves(value, ("out",)) if self.record_outputs else {}
        self._emit((path, "tap", "__call__", {}, idx), {}, outs, {})
        return value

    def _splice(self, path: str, idx: int, out_keys: list, out: Any, skip=None) -> Any:
        """``out`` with the output leaves given for this call replaced (splicing)."""
        if not out_keys:
            return out
        return replace_leaves(out, ("out",), {k: self.svals[f"{path}#{idx}#{k}"] for k in out_keys}, skip)

    def inside(self, owner: Any) -> bool:
        """True while ``owner``'s own call is running (a ``super().__call__`` is not a new call)."""
        return bool(self.stack) and self.stack[-1] == id(owner)

    def _next(self, path: str) -> int:
        idx = self.trace_counts.get(path, 0)
        self.trace_counts[path] = idx + 1
        return idx

    def _emit(self, static: tuple, ins: dict, outs: dict, raw: dict) -> None:
        entry = len(self.statics)
        self.statics.append(static)
        if self.mode == DIRECT:
            if self.eager and any(isinstance(v, jax.core.Tracer) for d in (ins, outs, raw) for v in d.values()):
                raise Escaped(static[0])
            self.values.append((entry, ins, outs, raw))
            return
        jax.debug.callback(functools.partial(self._on_host, entry), ins, outs, raw, ordered=self.mode == CALLBACK)

    def _on_host(self, entry: int, ins, outs, raw) -> None:
        """Runs when the call actually executed: its call index counts executions, not traces."""
        self.host.append(self._record(entry, self._run_index(self.statics[entry][0]), ins, outs, raw))

    def _run_index(self, path: str) -> int:
        idx = self.run_counts.get(path, 0)
        self.run_counts[path] = idx + 1
        return idx

    def _record(self, entry: int, idx: int, ins, outs, raw) -> CallRecord:
        path, typ, method, _, _ = self.statics[entry]
        rec = CallRecord(path=path, call_index=idx, module_type=typ, method=method)
        dev = self.on_device
        rec.inputs = {k: keep(v, dev) for k, v in ins.items()}
        rec.outputs = {k: keep(v, dev) for k, v in outs.items()}
        rec.raw_inputs = {k: keep(v, dev) for k, v in raw.items()}
        return rec

    # --- after the run --------------------------------------------------------------
    def returned(self) -> list:
        """What a jitted run returns in direct mode (the traced values)."""
        return [(ins, outs, raw) for _, ins, outs, raw in self.values] if self.mode == DIRECT else []

    def fill(self, trace: Trace, returned: list | None) -> None:
        """Append the records of this run to ``trace`` in completion order, with configs."""
        if self.mode == DIRECT:
            vals = returned if returned is not None else self.returned()
            recs = [self._record(e, self.statics[e][4], *v) for (e, *_), v in zip(self.values, vals, strict=True)]
        else:
            recs = self.host
        for order, rec in enumerate(recs):
            rec.order = order
            trace.records.append(rec)
            trace.module_types.setdefault(rec.path, rec.module_type)
        for path, _, _, cfg, _ in self.statics:
            trace.config.setdefault(path, cfg)
        trace.meta["on_device"] = self.on_device


@contextlib.contextmanager
def recording(rec: Recorder):
    """Make ``rec`` the recorder that ``xfdiff.tap`` and patched NNX calls report to."""
    prev = set_recorder(rec)
    try:
        yield rec
    finally:
        set_recorder(prev)


def active() -> Recorder | None:
    """The recorder of the capture running on this thread, if any."""
    return _active()


_runs = itertools.count(1)


def fresh_traces():
    """A context in which JAX traces functions again instead of reusing earlier traces.

    A helper the user jitted, or a ``lax.scan`` body, that ran before the
    capture would be served from JAX's caches, where no tap or hook runs. XLA
    metadata is part of those cache keys; a distinct value per run makes them
    miss. The metadata only annotates the compiled program's operations.
    """
    try:
        from jax.experimental.xla_metadata import set_xla_metadata
    except ImportError:  # pragma: no cover - older/newer JAX without it: taps in cached code are missed
        return contextlib.nullcontext()
    return set_xla_metadata(xfdiff_capture=str(next(_runs)))


def run_once(
    body: Callable,
    tree: Any,
    substitute: Substitute | None,
    record_outputs: bool,
    jit: bool,
    mode: str,
    setup: Callable[[Recorder], None] | None = None,
) -> tuple[Recorder, list]:
    """Run ``body(tree, recorder)`` once (under ``jax.jit`` when ``jit``) and return what was recorded.

    ``tree`` holds every array the forward needs (parameters, inputs); under
    jit it is the jitted function's argument so nothing large becomes a constant.
    """
    svals = substitute_arrays(substitute)
    made: list[Recorder] = []
    # Only arrays are traced; flags such as deterministic=True stay Python values.
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dyn_idx = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, np.ndarray))]

    def run(dyn, svals):
        full = list(leaves)
        for i, x in zip(dyn_idx, dyn, strict=True):
            full[i] = x
        tree = jax.tree_util.tree_unflatten(treedef, full)
        rec = Recorder(substitute, svals, record_outputs, mode, eager=not jit)
        if setup is not None:
            setup(rec)
        made.append(rec)
        with recording(rec):
            body(tree, rec)
        return rec.returned()

    dyn = [leaves[i] for i in dyn_idx]
    with fresh_traces():
        returned = jax.jit(run)(dyn, svals) if jit else run(dyn, svals)
    if mode != DIRECT:
        jax.effects_barrier()  # wait until every host callback has run
    return made[-1], returned


def run_with_fallbacks(attempt: Callable[[bool, str], tuple], jit: bool, mode: str = DIRECT) -> tuple:
    """Call ``attempt(jit, mode)``: direct first, host callbacks when values sit in inner transforms,
    unordered callbacks where ordered ones are refused (``vmap``), eager when jit needs concrete values.

    Returns:
        ``attempt``'s result followed by the ``jit`` and ``mode`` that worked.
    """
    while True:
        try:
            return (*attempt(jit, mode), jit, mode)
        except (Escaped, *ESCAPE_ERRORS):
            if mode != DIRECT:
                raise
            mode = CALLBACK
        except CONCRETE_ERRORS:
            if not jit:
                raise
            jit = False
        except Exception as e:
            if mode == CALLBACK and "ordered" in str(e).lower():
                warnings.warn(
                    "xfdiff: this model's transforms refuse ordered host callbacks; calls are recorded "
                    "in the order they ran, which may not be completion order.",
                    stacklevel=4,
                )
                mode = UNORDERED
            else:
                raise
