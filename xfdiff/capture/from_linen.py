"""Capture every module call of a Flax linen model with ``nn.intercept_methods``.

``capture_intermediates`` records outputs only; teacher forcing and several
pitfall tests need each call's *inputs*, so xfdiff intercepts methods instead.

Under ``jax.jit`` the interceptor runs at trace time: it appends the traced
inputs/outputs to a list that the jitted function returns, and records the
static facts (path, type, config) on the side. Substituted inputs (teacher
forcing) are passed in as jit arguments.

Calls inside a JAX transform of the model's own (``nn.scan``, ``nn.remat``,
``nn.vmap``, an inner ``jax.jit``) hold values of an inner trace that cannot
be returned; those calls send their values to the host with
``jax.debug.callback`` and are recorded when they actually run (one record
per scan step; the per-example calls of ``nn.vmap`` stacked back into one).

What a module holds or takes never fails a capture: settings xfdiff cannot
read are left out of the record's config, non-array arguments and outputs are
passed over. A failure of xfdiff's own recording code is raised as
:class:`~xfdiff.errors.InternalError`, never blamed on the model.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from ..errors import CaptureError, InternalError, ModelTypeError
from ..trace import CallRecord, Trace, canonical_path
from ._common import config_of, is_output_leaf
from ._jax import (
    CONCRETE_ERRORS,
    add_param,
    as_jax,
    device_mode,
    flatten_leaves,
    is_array,
    keep,
    replace_leaves,
    to_jax_inputs,
)
from ._linen_calls import Calls, Static, batch_axes, fetch_at_run_time, group_start, host_calls, inner_tracer
from .base import Substitute


# Method names that are not calls of the user's code: linen's own wrappers (``<lambda>``), setup, private methods.
def _is_user_method(name: str) -> bool:
    return name.isidentifier() and name != "setup" and (not name.startswith("_") or name == "__call__")


def module_config(mod: Any) -> dict[str, Any]:
    """Settings of a module (its dataclass fields) that the detectors can read; never raises.

    Fields may hold anything (module classes, partials, nested modules,
    dataclasses, dtypes in any spelling): see :func:`~xfdiff.capture._common.config_value`.
    """
    try:
        fields = dataclasses.fields(mod) if dataclasses.is_dataclass(mod) else ()
    except TypeError:
        return {}
    items = []
    for f in fields:
        if f.name in ("parent", "name"):
            continue
        try:
            items.append((f.name, getattr(mod, f.name)))
        except Exception:  # a property-like field that fails outside the forward: skip it
            continue
    return config_of(items)


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
                if not is_array(arr):
                    continue  # a boxed non-array (a PRNG key, metadata): not a parameter to compare
                name = k if collection == "params" else f"{collection}.{k}"
                add_param(out, tokens, canonical_path(parts), name, arr)

    for collection, tree in variables.items():
        if isinstance(tree, Mapping):
            walk(tree, (), collection)
    return out


def is_hf_flax(model: Any) -> bool:
    return any(c.__name__ == "FlaxPreTrainedModel" for c in type(model).__mro__)


def accepts(model: Any) -> bool:
    """A Hugging Face ``FlaxPreTrainedModel`` or a ``(linen_module, variables)`` tuple."""
    return is_hf_flax(model) or (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module))


def make_side(model: Any, inputs: Any, *, jit: bool = True) -> LinenSide:
    """The capture side of a linen model."""
    return LinenSide(model, inputs, jit=jit)


class _LazyValues(Mapping):
    """Substituted inputs keyed ``path#index#leaf``, converted only when a call asks for them."""

    def __init__(self, subst: Mapping):
        self._subst = subst

    def __getitem__(self, key: str):
        path, idx, leaf = key.rsplit("#", 2)
        return as_jax(self._subst[(path, int(idx))][leaf])

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


def _cached_jit(owner: Any, sig: tuple | None, run: Callable, calls: Calls) -> tuple[Callable, Calls]:
    """The jitted ``run`` for ``(owner, sig)`` and the :class:`Calls` its traces fill."""
    if sig is None:
        return jax.jit(run), calls
    key = (id(owner), sig)
    hit = _JIT_CACHE.get(key)
    if hit is not None and hit[0]() is owner:
        _JIT_CACHE.move_to_end(key)
        return hit[1], hit[2]
    try:
        ref = weakref.ref(owner)
    except TypeError:
        return jax.jit(run), calls
    fn = jax.jit(run)
    _JIT_CACHE[key] = (ref, fn, calls)
    while len(_JIT_CACHE) > _JIT_CACHE_SIZE:
        _JIT_CACHE.popitem(last=False)
    return fn, calls


class _OwnFailure(Exception):
    """xfdiff's own recording code failed inside the forward (not the user's model)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _RetryUnordered(Exception):
    """A transform in the model (``vmap``) refuses ordered host callbacks: capture again without ordering."""


def _is_ordered_refusal(e: Exception) -> bool:
    return "ordered" in str(e).lower() and "effect" in str(e).lower()


def _make_run(call, leaves, treedef, dyn_idx, sub_keys, record_outputs, on_call, shapes_only, ordered) -> Callable:
    """The forward with the interceptor that records every module method call into a :class:`Calls`."""

    def run(calls: Calls, variables, dyn, svals):
        calls.statics.clear()  # a (re)trace records the call structure afresh
        calls.shape_values = []
        full = list(leaves)
        for i, x in zip(dyn_idx, dyn, strict=True):
            full[i] = x
        args, kwargs = jax.tree_util.tree_unflatten(treedef, full)
        outer = next((getattr(x, "_trace", None) for x in jax.tree_util.tree_leaves((variables, dyn))), None)
        uniq: list = []  # every recorded value once: a block's output is also its last child's
        where: dict[int, int] = {}
        counters: dict[str, int] = {}
        stack: list[tuple] = []

        def slots(values: dict) -> dict[str, int]:
            out = {}
            for k, v in values.items():
                i = where.get(id(v))  # uniq holds every value, so ids stay unique
                if i is None:
                    i = where[id(v)] = len(uniq)
                    uniq.append(jax.ShapeDtypeStruct(v.shape, v.dtype) if shapes_only else v)
                out[k] = i
            return out

        def begin(mod, name, a, kw):
            """Path, call index and (teacher-forced) arguments of one call; xfdiff's side only."""
            parts = tuple(str(p) for p in mod.path) if mod.scope is not None else ()
            if not parts and stack and all(id(mod.scope) != sc for _, sc in stack):
                # A submodule run through `.apply` inside the forward (e.g. a tied LM
                # head) starts a new scope; name it under the module that applies it.
                parts = stack[-1][0] + (mod.name or type(mod).__name__,)
            path = canonical_path(parts, name)
            idx = counters.get(path, 0)
            counters[path] = idx + 1
            ins = {**flatten_leaves(tuple(a), ("args",)), **flatten_leaves(dict(kw), ("kwargs",))}
            inner = inner_tracer(ins.values(), outer)
            raw, note = {}, None
            if inner:
                # Inside nn.scan / nn.remat a traced call runs any number of times: its
                # substitutes are fetched when it runs, by the index of that run.
                keys = sorted({k for (p, _), ks in sub_keys.items() if p == path for k in ks if k in ins})
                if keys and batch_axes(ins):
                    note = "teacher forcing not applied: the call runs per example inside nn.vmap"
                elif keys:
                    forced = fetch_at_run_time(calls, path, keys, [ins[k] for k in keys])
                    raw = {k: ins[k] for k in keys}
                    s = dict(zip(keys, forced, strict=True))
                    a, kw = replace_leaves(tuple(a), ("args",), s), replace_leaves(dict(kw), ("kwargs",), s)
                    ins = {**flatten_leaves(a, ("args",)), **flatten_leaves(kw, ("kwargs",))}
            elif [k for k in sub_keys.get((path, idx), ()) if not is_output_leaf(k)]:
                keys = [k for k in sub_keys[(path, idx)] if not is_output_leaf(k)]
                raw = {k: v for k, v in ins.items() if k in keys}
                s = {k: svals[f"{path}#{idx}#{k}"] for k in keys}
                a = replace_leaves(tuple(a), ("args",), s)
                kw = replace_leaves(dict(kw), ("kwargs",), s)
                ins = {**flatten_leaves(a, ("args",)), **flatten_leaves(kw, ("kwargs",))}
            return (parts, id(mod.scope)), path, idx, a, kw, ins, raw, inner, note

        def finish(mod, name, path, idx, ins, raw, out, inner, note) -> None:
            outs = flatten_leaves(out, ("out",)) if record_outputs else {}
            inner = inner or inner_tracer(outs.values(), outer)
            entry = len(calls.statics)
            typ, cfg = type(mod).__name__, module_config(mod)
            if inner and not shapes_only:
                batch = {**batch_axes(ins), **batch_axes(outs), **batch_axes(raw)}
                size = 0
                if batch:
                    v = next(v for k, v in (*ins.items(), *outs.items(), *raw.items()) if k in batch)
                    size = v.val.shape[v.batch_dim]
                st = Static(path, idx, typ, name, cfg, None, True, batch, size, note)
                calls.statics.append(st)
                jax.debug.callback(functools.partial(calls.on_host, entry), ins, outs, raw, ordered=ordered)
                return
            where_from = None
            if on_call is not None and not shapes_only:
                on_call(path, idx, typ, name, entry, ins, outs, raw)
            else:
                where_from = (slots(ins), slots(outs), slots(raw))
            calls.statics.append(Static(path, idx, typ, name, cfg, where_from, False, {}, 0, note))

        def interceptor(next_fun, a, kw, ctx):
            name = ctx.method_name
            if not _is_user_method(name):
                return next_fun(*a, **kw)
            mod = ctx.module
            try:
                frame, path, idx, a2, kw2, ins, raw, inner, note = begin(mod, name, a, kw)
            except Exception as e:
                raise _OwnFailure(f"reading the inputs of a call of {type(mod).__name__}.{name}") from e
            stack.append(frame)
            try:
                out = next_fun(*a2, **kw2)  # the user's code: its exceptions pass through untouched
            finally:
                stack.pop()
            out_keys = [k for k in sub_keys.get((path, idx), ()) if is_output_leaf(k)]
            if out_keys and not inner:  # splicing: downstream code sees the given values
                out = replace_leaves(out, ("out",), {k: svals[f"{path}#{idx}#{k}"] for k in out_keys})
            try:
                finish(mod, name, path, idx, ins, raw, out, inner, note)
            except Exception as e:
                raise _OwnFailure(f"recording the call {path or '(root)'} ({type(mod).__name__}.{name})") from e
            return out

        with nn.intercept_methods(interceptor):
            out = call(variables, args, kwargs)
        if shapes_only:
            calls.shape_values = uniq
            return out, []
        return out, uniq

    return run


class LinenSide:
    """Records every method call of a linen module (or a Hugging Face Flax model)."""

    name = "flax"
    framework = "linen"
    supports_streaming = True
    supports_sink = False

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
                f"LinenSide needs a Hugging Face FlaxPreTrainedModel or a (linen_module, variables) tuple, "
                f"got {type(model).__name__}."
            )
        self.args, self.kwargs = to_jax_inputs(inputs, "flax_inputs")
        self.jit = jit
        self.ordered = True  # host callbacks in program order; vmap refuses them, then unordered
        self._owner = model if is_hf_flax(model) else self.module

    def describe(self) -> str:
        return self.label

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        """Run the model once and record every module method call (see :mod:`xfdiff.capture.base`)."""
        if self.jit:
            try:
                return self._capture(substitute, True, record_outputs)
            except CONCRETE_ERRORS:
                self.jit = False  # the model needs concrete values; run it eagerly
        return self._capture(substitute, False, record_outputs)

    def skeleton(self) -> Trace:
        """Calls, output shapes and parameters of the forward pass, without computing it.

        Runs the capture under ``jax.eval_shape``; array leaves of the records
        are placeholders of the right shape and dtype (see :func:`~xfdiff.capture._jax.shape_placeholder`).
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
        while True:
            try:
                return self._capture_once(substitute, jit, record_outputs, on_call, shapes_only)
            except _RetryUnordered:
                self.ordered = False

    def _capture_once(self, substitute, jit, record_outputs, on_call, shapes_only) -> Trace:
        calls = Calls()
        subst = substitute or {}
        sub_keys = {k: tuple(v) for k, v in subst.items()}
        if on_call is not None:
            sub_vals = _LazyValues(subst)
        else:
            sub_vals = {f"{p}#{i}#{leaf}": as_jax(a) for (p, i), d in subst.items() for leaf, a in d.items()}
        leaves, treedef = jax.tree_util.tree_flatten((self.args, self.kwargs))
        dyn_idx = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, np.ndarray))]
        run = _make_run(
            self.call, leaves, treedef, dyn_idx, sub_keys, record_outputs, on_call, shapes_only, self.ordered
        )
        fn = functools.partial(run, calls)
        if shapes_only:
            fn = functools.partial(jax.eval_shape, fn)
        elif jit:
            sig = _signature(self.variables, leaves, treedef, dyn_idx, sub_keys, sub_vals, record_outputs)
            sig = None if sig is None else (*sig, self.ordered)
            jitted, calls = _cached_jit(self._owner, sig, lambda *a, _c=calls: run(_c, *a), calls)
            fn = jitted
        calls.reset(on_call, subst)
        try:
            _, values = fn(self.variables, [leaves[i] for i in dyn_idx], sub_vals)
            if any(st.via_callback for st in calls.statics):
                jax.effects_barrier()  # every host callback has run
        except (*CONCRETE_ERRORS, _RetryUnordered):
            raise  # capture() retries eagerly / without ordered callbacks
        except _OwnFailure as e:
            raise InternalError(
                f"xfdiff failed while recording the Flax model {self.label} ({e.what}: "
                f"{type(e.__cause__).__name__}: {e.__cause__}). This is a limitation or bug of xfdiff, "
                "not of your model; please report it with the model's structure. The model is unchanged."
            ) from e.__cause__
        except jax.errors.UnexpectedTracerError as e:
            raise InternalError(
                f"xfdiff could not bring a value of the Flax model {self.label} out of a JAX transform "
                f"inside it ({str(e).splitlines()[0]}). This is a limitation of xfdiff, not a fault of your "
                "model; please report it with the model's structure. The model is unchanged."
            ) from e
        except Exception as e:
            if self.ordered and calls.statics and any(s.via_callback for s in calls.statics) and _is_ordered_refusal(e):
                raise _RetryUnordered() from e
            raise CaptureError(
                f"The Flax model {self.label} raised {type(e).__name__} during its forward pass: {e}. "
                "Check that the inputs fit this model (names, shapes, dtypes); pass `flax_inputs=` if the "
                "Flax side takes different arguments than the PyTorch side."
            ) from e
        if shapes_only:
            values = calls.shape_values
        on_device = not shapes_only and on_call is None and device_mode()
        trace = self._trace(calls, [keep(v, on_device) for v in values], jit)
        trace.meta["on_device"] = on_device
        return trace

    def _trace(self, calls: Calls, host: list, jit: bool) -> Trace:
        trace = Trace(side="flax", framework="linen")
        keyed = []
        for entry, st in enumerate(calls.statics):
            if st.via_callback:
                continue
            rec = CallRecord(path=st.path, call_index=st.index, module_type=st.module_type, method=st.method)
            rec.error = st.error
            if st.slots is not None:  # None: the values went to on_call
                rec.inputs, rec.outputs, rec.raw_inputs = ({k: host[i] for k, i in d.items()} for d in st.slots)
            keyed.append(((entry, 0, 0), rec))
        for seq, (entry, ins, outs, raw) in enumerate(host_calls(calls)):
            st = calls.statics[entry]
            rec = CallRecord(path=st.path, call_index=0, module_type=st.module_type, method=st.method)
            rec.error = st.error
            if calls.on_call is None:
                rec.inputs, rec.outputs, rec.raw_inputs = ins, outs, raw
            keyed.append(((group_start(calls.statics, entry), 1, seq), rec))
        counts: dict[str, int] = {}
        for order, (_, rec) in enumerate(sorted(keyed, key=lambda kr: kr[0])):
            rec.order = order
            rec.call_index = counts.get(rec.path, 0)
            counts[rec.path] = rec.call_index + 1
            trace.records.append(rec)
            trace.module_types.setdefault(rec.path, rec.module_type)
        for st in calls.statics:
            trace.config.setdefault(st.path, st.config)
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
