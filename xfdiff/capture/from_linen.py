"""Capture every module call of a Flax linen model with ``nn.intercept_methods``.

``capture_intermediates`` records outputs only; teacher forcing and several
pitfall tests need each call's *inputs*, so xfdiff intercepts methods instead.

Under ``jax.jit`` the interceptor runs at trace time: it appends the traced
inputs/outputs to a list that the jitted function returns, and records the
static facts (path, type, config) on the side. Substituted inputs (teacher
forcing) are passed in as jit arguments.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ..errors import CaptureError, InputError, ModelTypeError
from ..trace import CallRecord, Trace, canonical_path
from . import Substitute, leaf_key

_SCALARS = (bool, int, float, str)


def key_str(entry: Any) -> str:
    """One jax key-path entry as a string component."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten_arrays(obj: Any, prefix: tuple) -> dict[str, Any]:
    """Array leaves (jax, numpy, tracers) of a pytree keyed by their path."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(obj)
    out = {}
    for path, leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray)):
            out[leaf_key(prefix + tuple(key_str(p) for p in path))] = leaf
    return out


def replace_arrays(obj: Any, prefix: tuple, subst: Mapping[str, Any]) -> Any:
    """A copy of pytree ``obj`` with leaves at keys in ``subst`` replaced."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(obj)
    new = []
    for path, leaf in leaves:
        key = leaf_key(prefix + tuple(key_str(p) for p in path))
        if key in subst and isinstance(leaf, (jax.Array, np.ndarray)):
            new.append(jnp.asarray(subst[key], dtype=leaf.dtype).reshape(leaf.shape))
        else:
            new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


def function_name(fn: Any) -> str | None:
    if isinstance(fn, functools.partial):
        inner = function_name(fn.func)
        kw = ",".join(f"{k}={v}" for k, v in fn.keywords.items() if isinstance(v, _SCALARS))
        return f"{inner}({kw})" if kw else inner
    return getattr(fn, "__name__", None)


def module_config(mod: Any) -> dict[str, Any]:
    """Scalar dataclass fields of a module, plus names of activation functions."""
    cfg: dict[str, Any] = {}
    if not dataclasses.is_dataclass(mod):
        return cfg
    for f in dataclasses.fields(mod):
        if f.name in ("parent", "name"):
            continue
        try:
            v = getattr(mod, f.name)
        except Exception:
            continue
        if isinstance(v, _SCALARS):
            cfg[f.name] = v
        elif isinstance(v, tuple) and len(v) <= 8 and all(isinstance(x, _SCALARS) for x in v):
            cfg[f.name] = list(v)
        elif callable(v) and not isinstance(v, type) and not isinstance(v, nn.Module):
            name = function_name(v)
            if name:
                cfg[f.name] = name
        elif v is not None and type(v).__name__ in ("dtype", "type") or (
            isinstance(v, type) and issubclass(v, np.generic)
        ):
            cfg[f.name] = np.dtype(v).name
    return cfg


def params_by_path(variables: Mapping) -> dict[str, dict[str, np.ndarray]]:
    """Arrays each module owns directly, by canonical module path."""
    out: dict[str, dict[str, np.ndarray]] = {}

    def walk(tree: Any, parts: tuple, collection: str) -> None:
        for k, v in tree.items():
            if isinstance(v, Mapping):
                walk(v, parts + (k,), collection)
            elif isinstance(v, (jax.Array, np.ndarray)) or hasattr(v, "value"):
                arr = getattr(v, "value", v)
                name = k if collection == "params" else f"{collection}.{k}"
                out.setdefault(canonical_path(parts), {})[name] = np.asarray(arr)

    for collection, tree in variables.items():
        if isinstance(tree, Mapping):
            walk(tree, (), collection)
    return out


def to_jax_inputs(inputs: Any, name: str = "inputs") -> tuple[tuple, dict]:
    def conv(v: Any) -> Any:
        if type(v).__module__.startswith("torch"):
            from .from_torch import to_numpy

            return jnp.asarray(to_numpy(v))
        if isinstance(v, np.ndarray):
            return jnp.asarray(v)
        return v

    if isinstance(inputs, Mapping):
        return (), {k: conv(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(conv(v) for v in inputs), {}
    if isinstance(inputs, (np.ndarray, jax.Array)) or type(inputs).__module__.startswith("torch"):
        return (conv(inputs),), {}
    raise InputError(
        f"{name} must be a dict (keyword arguments), a tuple (positional arguments) or one array; "
        f"got {type(inputs).__name__}."
    )


def is_hf_flax(model: Any) -> bool:
    return any(c.__name__ == "FlaxPreTrainedModel" for c in type(model).__mro__)


class LinenSide:
    """Records every method call of a linen module (or a Hugging Face Flax model)."""

    name = "flax"
    framework = "linen"

    def __init__(self, model: Any, inputs: Any, jit: bool = True):
        if is_hf_flax(model):
            self.module = model.module
            self.variables = {"params": model.params}
            hf = model

            def call(variables, args, kwargs):
                return hf(*args, params=variables["params"], **kwargs)

            self.call: Callable = call
            self.label = type(model).__name__
        elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
            self.module, self.variables = model
            if not isinstance(self.variables, Mapping):
                raise ModelTypeError(
                    f"flax_model=(module, variables): variables must be the dict returned by module.init, "
                    f"got {type(self.variables).__name__}."
                )
            mod = self.module

            def call(variables, args, kwargs):
                return mod.apply(variables, *args, **kwargs)

            self.call = call
            self.label = type(self.module).__name__
        else:
            raise ModelTypeError(
                f"Unsupported flax_model of type {type(model).__name__}: pass a Hugging Face "
                "FlaxPreTrainedModel, a (linen_module, variables) tuple, an nnx.Module, or a function "
                "whose values are marked with xfdiff.tap()."
            )
        self.args, self.kwargs = to_jax_inputs(inputs, "flax_inputs")
        self.jit = jit

    def describe(self) -> str:
        return self.label

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        if self.jit:
            try:
                return self._capture(substitute, True, record_outputs)
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
                    jax.errors.TracerIntegerConversionError, jax.errors.TracerArrayConversionError):
                self.jit = False  # the model needs concrete values; run it eagerly
        return self._capture(substitute, False, record_outputs)

    def _capture(self, substitute: Substitute | None, jit: bool, record_outputs: bool = True) -> Trace:
        statics: list[tuple] = []
        subst = substitute or {}
        sub_keys = {k: tuple(v) for k, v in subst.items()}
        sub_vals = {f"{p}#{i}#{leaf}": jnp.asarray(a) for (p, i), d in subst.items() for leaf, a in d.items()}
        leaves, treedef = jax.tree_util.tree_flatten((self.args, self.kwargs))
        dyn_idx = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, np.ndarray))]
        call = self.call

        def run(variables, dyn, svals):
            full = list(leaves)
            for i, x in zip(dyn_idx, dyn):
                full[i] = x
            args, kwargs = jax.tree_util.tree_unflatten(treedef, full)
            captured: list = []
            counters: dict[str, int] = {}
            stack: list[tuple] = []

            def interceptor(next_fun, a, kw, ctx):
                name = ctx.method_name
                if name == "setup" or (name.startswith("_") and name != "__call__"):
                    return next_fun(*a, **kw)
                mod = ctx.module
                parts = tuple(mod.path)
                if not parts and stack:
                    # A submodule run through `.apply` inside the forward (e.g. a tied LM
                    # head) starts a new scope; name it under the module that applies it.
                    parts = stack[-1] + (mod.name or type(mod).__name__,)
                path = canonical_path(parts, name)
                idx = counters.get(path, 0)
                counters[path] = idx + 1
                keys = sub_keys.get((path, idx))
                raw = {}
                if keys:
                    own = {**flatten_arrays(tuple(a), ("args",)), **flatten_arrays(dict(kw), ("kwargs",))}
                    raw = {k: v for k, v in own.items() if k in keys}
                    s = {k: svals[f"{path}#{idx}#{k}"] for k in keys}
                    a = replace_arrays(tuple(a), ("args",), s)
                    kw = replace_arrays(dict(kw), ("kwargs",), s)
                ins = {**flatten_arrays(tuple(a), ("args",)), **flatten_arrays(dict(kw), ("kwargs",))}
                stack.append(parts)
                try:
                    out = next_fun(*a, **kw)
                finally:
                    stack.pop()
                outs = flatten_arrays(out, ("out",)) if record_outputs else {}
                statics.append((path, idx, type(mod).__name__, name, module_config(mod)))
                captured.append((ins, outs, raw))
                return out

            with nn.intercept_methods(interceptor):
                out = call(variables, args, kwargs)
            return out, captured

        fn = jax.jit(run) if jit else run
        try:
            _, captured = fn(self.variables, [leaves[i] for i in dyn_idx], sub_vals)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
                jax.errors.TracerIntegerConversionError, jax.errors.TracerArrayConversionError):
            raise
        except Exception as e:
            raise CaptureError(
                f"The Flax model {self.label} raised {type(e).__name__} during its forward pass: {e}. "
                "Check that the inputs fit this model (names, shapes, dtypes); pass `flax_inputs=` if the "
                "Flax side takes different arguments than the PyTorch side."
            ) from e
        trace = Trace(side="flax", framework="linen")
        for order, ((path, idx, typ, method, cfg), (ins, outs, raw)) in enumerate(zip(statics, captured)):
            rec = CallRecord(path=path, call_index=idx, module_type=typ, order=order, method=method)
            rec.inputs = {k: np.asarray(v) for k, v in ins.items()}
            rec.outputs = {k: np.asarray(v) for k, v in outs.items()}
            rec.raw_inputs = {k: np.asarray(v) for k, v in raw.items()}
            trace.records.append(rec)
            trace.module_types.setdefault(path, typ)
            trace.config.setdefault(path, cfg)
        trace.params = params_by_path(self.variables)
        for p in trace.params:
            trace.module_types.setdefault(p, "?")
        trace.meta.update(
            {
                "model": self.label,
                "backend": jax.default_backend(),
                "x64": bool(jax.config.jax_enable_x64),
                "matmul_precision": str(jax.config.jax_default_matmul_precision),
                "jax_version": jax.__version__,
                "jit": jit,
            }
        )
        return trace
