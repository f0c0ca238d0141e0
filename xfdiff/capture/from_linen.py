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
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ..errors import CaptureError, InputError, ModelTypeError
from ..trace import CallRecord, ParamToken, Trace, canonical_path
from . import Substitute, leaf_key

_SCALARS = (bool, int, float, str)
# Errors raised while tracing a model that needs concrete values: run it eagerly instead.
_NEEDS_CONCRETE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


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
        elif (
            v is not None
            and type(v).__name__ in ("dtype", "type")
            or (isinstance(v, type) and issubclass(v, np.generic))
        ):
            cfg[f.name] = np.dtype(v).name
    return cfg


def params_by_path(variables: Mapping, tokens: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Arrays each module owns directly, by canonical module path.

    ``tokens``, when given, receives a :class:`~xfdiff.trace.ParamToken` per JAX array.
    """
    out: dict[str, dict[str, np.ndarray]] = {}

    def walk(tree: Any, parts: tuple, collection: str) -> None:
        for k, v in tree.items():
            if isinstance(v, Mapping):
                walk(v, parts + (k,), collection)
            elif isinstance(v, (jax.Array, np.ndarray)) or hasattr(v, "value"):
                arr = getattr(v, "value", v)
                name = k if collection == "params" else f"{collection}.{k}"
                add_param(out, tokens, canonical_path(parts), name, arr)

    for collection, tree in variables.items():
        if isinstance(tree, Mapping):
            walk(tree, (), collection)
    return out


def add_param(out: dict, tokens: dict | None, owner: str, name: str, value: Any) -> None:
    """Store ``value`` as parameter ``name`` of module ``owner`` on the host, and in ``tokens``
    its :class:`~xfdiff.trace.ParamToken` when it is a JAX array (immutable: the object is the
    identity of its values)."""
    out.setdefault(owner, {})[name] = np.asarray(value)
    if tokens is not None and isinstance(value, jax.Array):
        tokens.setdefault(owner, {})[name] = ParamToken(("jax", id(value)), value)


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


def shape_placeholder(shape: tuple, dtype: Any) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that takes no memory.

    Floats are NaN, so a placeholder never passes for real values.
    """
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind in "fc" or dtype.name == "bfloat16" else 0
    return np.broadcast_to(np.array(fill, dtype=dtype), tuple(shape))


def _host(v: Any) -> np.ndarray:
    if isinstance(v, jax.ShapeDtypeStruct):
        return shape_placeholder(v.shape, v.dtype)
    return np.asarray(v)


class _LazyValues(Mapping):
    """Substituted inputs keyed ``path#index#leaf``, converted only when a call asks for them."""

    def __init__(self, subst: Mapping):
        self._subst = subst

    def __getitem__(self, key: str):
        path, idx, leaf = key.rsplit("#", 2)
        return jnp.asarray(self._subst[(path, int(idx))][leaf])

    def __iter__(self):
        return (f"{p}#{i}#{leaf}" for (p, i), d in self._subst.items() for leaf in d)

    def __len__(self) -> int:
        return sum(len(d) for d in self._subst.values())


# Jitted capture functions by (model, call signature): a repeated compare() (or the
# teacher-forced re-run of the same model) reuses the compiled executable instead of
# tracing and compiling the whole forward again. Entries hold the model weakly.
_JIT_CACHE: OrderedDict = OrderedDict()
_JIT_CACHE_SIZE = 8


def _signature(variables, leaves, treedef, dyn_idx, sub_keys, sub_vals, record_outputs) -> tuple | None:
    """A hashable description of everything a traced capture depends on, or None."""
    dyn = set(dyn_idx)
    try:
        static = tuple((i, leaf) for i, leaf in enumerate(leaves) if i not in dyn)
        hash(static)
    except TypeError:
        return None
    shapes = tuple((np.shape(leaves[i]), str(leaves[i].dtype)) for i in dyn_idx)
    vleaves, vdef = jax.tree_util.tree_flatten(variables)
    vshapes = tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in vleaves)
    subs = tuple(sorted((k, tuple(np.shape(v)), str(v.dtype)) for k, v in sub_vals.items()))
    return (treedef, static, shapes, vdef, vshapes, subs, tuple(sorted(sub_keys.items())), record_outputs)


def _cached_jit(owner: Any, sig: tuple | None, run: Callable, statics: list) -> tuple[Callable, list]:
    """The jitted ``run`` for ``(owner, sig)`` and the statics list its traces fill."""
    if sig is None:
        return jax.jit(run), statics
    key = (id(owner), sig)
    hit = _JIT_CACHE.get(key)
    if hit is not None and hit[0]() is owner:
        _JIT_CACHE.move_to_end(key)
        return hit[1], hit[2]
    try:
        ref = weakref.ref(owner)
    except TypeError:
        return jax.jit(run), statics
    fn = jax.jit(run)
    _JIT_CACHE[key] = (ref, fn, statics)
    while len(_JIT_CACHE) > _JIT_CACHE_SIZE:
        _JIT_CACHE.popitem(last=False)
    return fn, statics


class LinenSide:
    """Records every method call of a linen module (or a Hugging Face Flax model)."""

    name = "flax"
    framework = "linen"

    def __init__(self, model: Any, inputs: Any, jit: bool = True):
        if is_hf_flax(model):
            self.module = model.module
            # Models with batch statistics (ResNet, RegNet) keep every collection in ``model.params``.
            whole = isinstance(model.params, Mapping) and {"params", "batch_stats"} <= set(model.params)
            self.variables = dict(model.params) if whole else {"params": model.params}
            hf = weakref.ref(model)  # the jit cache below must not keep the model (and its params) alive

            def call(variables, args, kwargs):
                return hf()(*args, params=variables if whole else variables["params"], **kwargs)

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
        self._owner = model if is_hf_flax(model) else self.module

    def describe(self) -> str:
        return self.label

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        if self.jit:
            try:
                return self._capture(substitute, True, record_outputs)
            except _NEEDS_CONCRETE:
                self.jit = False  # the model needs concrete values; run it eagerly
        return self._capture(substitute, False, record_outputs)

    def skeleton(self) -> Trace:
        """Calls, output shapes and parameters of the forward pass, without computing it.

        Runs the capture under ``jax.eval_shape``; array leaves of the records
        are placeholders of the right shape and dtype (see :func:`shape_placeholder`).
        """
        return self._capture(None, False, shapes_only=True)

    def stream(self, on_call: Callable, substitute: Substitute | None = None) -> Trace:
        """Run eagerly and hand each call to ``on_call`` as it returns; keep no arrays.

        ``on_call(path, call_index, module_type, method, order, inputs, outputs, raw_inputs)``
        receives live JAX arrays (possibly sharded) that are dropped once it
        returns. ``substitute`` values are read one call at a time, when that
        call runs, so they may live on disk. Returns the calls without arrays.
        """
        return self._capture(substitute, False, on_call=on_call)

    def _capture(
        self,
        substitute: Substitute | None,
        jit: bool,
        record_outputs: bool = True,
        on_call: Callable | None = None,
        shapes_only: bool = False,
    ) -> Trace:
        statics: list[tuple] = []
        subst = substitute or {}
        sub_keys = {k: tuple(v) for k, v in subst.items()}
        if on_call is not None:
            sub_vals = _LazyValues(subst)
        else:
            sub_vals = {f"{p}#{i}#{leaf}": jnp.asarray(a) for (p, i), d in subst.items() for leaf, a in d.items()}
        leaves, treedef = jax.tree_util.tree_flatten((self.args, self.kwargs))
        dyn_idx = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, np.ndarray))]
        call = self.call

        def run(variables, dyn, svals):
            statics.clear()  # a (re)trace records the call structure afresh
            full = list(leaves)
            for i, x in zip(dyn_idx, dyn, strict=True):
                full[i] = x
            args, kwargs = jax.tree_util.tree_unflatten(treedef, full)
            uniq: list = []  # every recorded value once: a block's output is also its last child's
            where: dict[int, int] = {}
            counters: dict[str, int] = {}
            stack: list[tuple] = []

            def slots(leaves: dict) -> dict[str, int]:
                out = {}
                for k, v in leaves.items():
                    i = where.get(id(v))  # uniq holds every value, so ids stay unique
                    if i is None:
                        i = where[id(v)] = len(uniq)
                        uniq.append(v)
                    out[k] = i
                return out

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
                where_from = None
                if on_call is not None:
                    on_call(path, idx, type(mod).__name__, name, len(statics), ins, outs, raw)
                else:
                    where_from = (slots(ins), slots(outs), slots(raw))
                statics.append((path, idx, type(mod).__name__, name, module_config(mod), where_from))
                return out

            with nn.intercept_methods(interceptor):
                out = call(variables, args, kwargs)
            return out, uniq

        fn = run
        if shapes_only:
            fn = functools.partial(jax.eval_shape, run)
        elif jit:
            sig = _signature(self.variables, leaves, treedef, dyn_idx, sub_keys, sub_vals, record_outputs)
            fn, statics = _cached_jit(self._owner, sig, run, statics)
        try:
            _, values = fn(self.variables, [leaves[i] for i in dyn_idx], sub_vals)
        except _NEEDS_CONCRETE:
            raise  # capture() retries eagerly
        except Exception as e:
            raise CaptureError(
                f"The Flax model {self.label} raised {type(e).__name__} during its forward pass: {e}. "
                "Check that the inputs fit this model (names, shapes, dtypes); pass `flax_inputs=` if the "
                "Flax side takes different arguments than the PyTorch side."
            ) from e
        trace = Trace(side="flax", framework="linen")
        host = [_host(v) for v in values]  # one numpy array per distinct value, shared by the records
        for order, (path, idx, typ, method, cfg, where_from) in enumerate(statics):
            rec = CallRecord(path=path, call_index=idx, module_type=typ, order=order, method=method)
            if where_from is not None:  # None: the values went to on_call
                ins, outs, raw = ({k: host[i] for k, i in d.items()} for d in where_from)
                rec.inputs, rec.outputs, rec.raw_inputs = ins, outs, raw
            trace.records.append(rec)
            trace.module_types.setdefault(path, typ)
            trace.config.setdefault(path, cfg)
        trace.params = params_by_path(self.variables, trace.param_tokens)
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
