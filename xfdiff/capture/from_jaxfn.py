"""Capture plain JAX functions whose values are marked with :func:`xfdiff.tap`.

A model written as functions over a parameter tree has no modules to hook,
so the user names the values (or steps) worth comparing::

    def forward(params, x):
        for i, p in enumerate(params["layers"]):
            h = xfdiff.tap(f"layers.{i}.fc1", dense, p["fc1"], x)   # a step: local error too
            x = xfdiff.tap(f"layers.{i}", x + dense(p["fc2"], gelu(h)))  # a value
        return x

    xfdiff.compare(pt_model, (forward, params), x)

Each tap becomes one call record under its dotted name, kept as written
(``ln_1`` stays ``ln_1``; ``/`` reads as ``.``); the function itself is the root record ``""``. With
``(fn, params)`` the function is called ``fn(params, *args, **kwargs)`` and the
parameter tree gives each tap path its parameters (the dict holding arrays
``kernel`` / ``bias`` at ``params["layers"][0]["fc1"]`` belongs to
``layers.0.fc1``; an array beside subtrees, like GPT-2's ``wte`` at the root,
belongs to the path of its own key), so alignment can use parameter fingerprints; a leading
``{"params": ...}`` collection is looked through, as in linen variables.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from ..errors import CaptureError, ModelTypeError
from ..trace import Trace, user_path
from ._common import framework_of, function_name
from ._jax import add_param, key_str, to_jax_inputs
from .base import Substitute
from .jax_record import run_once, run_with_fallbacks


def params_by_path(params: Any, tokens: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Float arrays of a parameter tree grouped by the path of the dict that holds them (and tokens of JAX arrays)."""
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    out: dict[str, dict[str, np.ndarray]] = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray)) or not np.issubdtype(leaf.dtype, np.inexact):
            continue
        parts = [key_str(p) for p in path]
        # An array beside subtrees (GPT-2's wte/wpe at the root) is a weight of its own: its path is its
        # key, so a tap of that name holds it. Arrays in a dict of arrays (w, b, g) are one module's.
        own = len(parts) >= 1 and _beside_subtrees(params, path[:-1])
        owner = user_path(tuple(parts if own else parts[:-1]))
        add_param(out, tokens, owner, parts[-1] if parts else "value", leaf)
    return out


def _beside_subtrees(tree: Any, path: tuple) -> bool:
    """Whether the container at ``path`` also holds dicts or lists (not arrays only)."""
    node = tree
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                k = getattr(entry, attr)
                node = getattr(node, k) if attr == "name" else node[k]
                break
    values = node.values() if isinstance(node, Mapping) else node if isinstance(node, (list, tuple)) else ()
    return any(isinstance(v, (Mapping, list, tuple)) for v in values)


def _unjit(fn: Callable) -> Callable:
    """The Python function behind a ``jax.jit`` wrapper: xfdiff jits (or not) the forward itself."""
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None and hasattr(fn, "lower") and callable(inner):
        return inner
    return fn


# Callables of these frameworks are models of their own adapters (or of none), not tapped JAX functions.
_NOT_FUNCTIONS = ("torch", "flax", "keras", "tf_keras", "tensorflow")


def accepts(model: Any) -> bool:
    """A plain JAX function (not a class, not another framework's model), alone or as ``(fn, params)``."""
    fn = model[0] if isinstance(model, tuple) and len(model) == 2 else model
    return callable(fn) and not isinstance(fn, type) and framework_of(fn) not in _NOT_FUNCTIONS


def make_side(model: Any, inputs: Any, *, jit: bool = True) -> TapSide:
    """The capture side of a tapped JAX function."""
    return TapSide(model, inputs, jit=jit)


class TapSide:
    """Records the taps of one call of a JAX function.

    Args:
        fn: the function, or ``(fn, params)``: then it is called as
            ``fn(params, *args, **kwargs)`` and ``params`` (a pytree of arrays)
            supplies each tap path's parameters for alignment.
        inputs: a dict (keyword arguments), a tuple (positional) or one array.
        jit: trace the function under ``jax.jit`` (falls back to eager when
            it needs concrete values).
        params: the parameter tree, instead of passing ``(fn, params)``.
    """

    name = "flax"
    framework = "jax"
    supports_streaming = False
    supports_sink = False

    def __init__(self, fn: Any, inputs: Any, jit: bool = True, params: Any = None):
        if isinstance(fn, tuple):
            if len(fn) != 2 or not callable(fn[0]):
                raise ModelTypeError(
                    "A function port is passed as fn or (fn, params); got a tuple of "
                    f"{len(fn)} whose first item is {type(fn[0]).__name__}."
                )
            fn, params = fn
        if not callable(fn):
            raise ModelTypeError(f"TapSide needs a callable, got {type(fn).__name__}.")
        self.fn = _unjit(fn)
        self.params = params
        self.args, self.kwargs = to_jax_inputs(inputs, "flax_inputs")
        self.jit = jit
        self.mode = "direct"
        self.label = function_name(self.fn) or type(self.fn).__name__

    def describe(self) -> str:
        return self.label

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        """Call the function once and record the root call and every tap (see :mod:`xfdiff.capture`)."""
        fn, has_params = self.fn, self.params is not None

        def body(tree, rec):
            params, args, kwargs = tree
            ids = {id(x) for x in jax.tree_util.tree_leaves(params)}
            rec.tap_skip = (lambda x: id(x) in ids) if ids else None
            call = (lambda *a, **k: fn(params, *a, **k)) if has_params else fn
            rec.call("", self.label, {}, call, args, kwargs)

        def attempt(jit: bool, mode: str):
            return run_once(body, (self.params, self.args, self.kwargs), substitute, record_outputs, jit, mode)

        try:
            rec, returned, self.jit, self.mode = run_with_fallbacks(attempt, self.jit, self.mode)
        except Exception as e:
            raise CaptureError(
                f"The JAX function {self.label} raised {type(e).__name__} during its forward pass: {e}. "
                "Check that the inputs fit this function; pass `flax_inputs=` if it takes different "
                "arguments than the PyTorch model."
            ) from e
        trace = Trace(side="flax", framework="jax")
        rec.fill(trace, returned)
        if len(trace.records) <= 1:
            warnings.warn(
                f"xfdiff: no xfdiff.tap() ran inside {self.label}; only its final output is compared. "
                "Mark values with xfdiff.tap(path, value).",
                stacklevel=3,
            )
        trace.params = params_by_path(self.params, trace.param_tokens) if has_params else {}
        for p in trace.params:
            trace.module_types.setdefault(p, "params")
        trace.meta.update(
            {
                "model": self.label,
                "backend": jax.default_backend(),
                "x64": bool(jax.config.jax_enable_x64),
                "jax_version": jax.__version__,
                "jit": self.jit,
                "capture_mode": self.mode,
            }
        )
        return trace
