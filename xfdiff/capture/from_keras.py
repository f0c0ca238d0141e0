"""Capture every layer call of a Keras model: Keras 3 (any backend) or tf-keras (Keras 2).

Keras has no hook API, so for the duration of one capture xfdiff gives each
layer class that occurs in the model its own ``__call__`` wrapper (the
wrapper calls the ``__call__`` the class had, found along its MRO). Only
instances of this model are recorded; any other layer passes straight
through. Classes are restored in ``finally``, also when the forward raises:
a class that had no ``__call__`` of its own gets none back.

Paths are attribute paths from the model (``bert.encoder.layer.0.attention``;
a layer reached only through Keras's layer list, as in functional and
Sequential models, is named by its ``name``). Variables are owned by the
layer that created them; a variable created under a name scope of its own
inside a layer (Hugging Face's ``embeddings/word_embeddings/weight``) gets
the path of that scope, so it pairs with the PyTorch module that holds the
same values.

How the forward runs (``jit``):

- TensorFlow (tf-keras, or Keras 3 with ``KERAS_BACKEND=tensorflow``): under
  ``tf.function``; the wrappers run while it is traced and collect symbolic
  tensors, which the function returns. Autograph still converts each
  layer's ``call`` as Keras does. A model that cannot be traced (Python
  control flow on values, values inside its own inner ``tf.function``) runs
  eagerly instead.
- Keras 3 on JAX: under ``jax.jit`` in the same way.
- Otherwise (Keras 3 on PyTorch, ``jit=False``): eagerly.

Teacher forcing (``substitute``) replaces a call's input leaves before the
call runs; the values are passed into the traced function as arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import CaptureError, InputError, ModelTypeError
from ..trace import CallRecord, Trace, canonical_path
from . import Substitute, leaf_key

_SCALARS = (bool, int, float, str)
_KERAS_PACKAGES = ("keras", "tf_keras", "tensorflow")
# Keras's own bookkeeping attributes: never a path component.
_INTERNAL = frozenset(
    {
        "_layers",
        "_operations",
        "_self_tracked_trackables",
        "_tracker",
        "_inbound_nodes",
        "_outbound_nodes",
        "_inputs",
        "_outputs",
        "_nodes_by_depth",
        "_output_layers",
        "_input_layers",
        "_compiled_trainable_state",
        "_parent",
    }
)
_STANDARD_PARAMS = frozenset(
    {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance", "embeddings", "weight", "scale"}
)


def accepts(model: Any) -> bool:
    """True for a Keras 3 or tf-keras layer/model; imports nothing."""
    if not any(m in sys.modules for m in ("keras", "tf_keras")):
        return False
    for c in type(model).__mro__:
        mod = c.__module__ or ""
        if c.__name__ == "Layer" and mod.split(".")[0] in _KERAS_PACKAGES:
            return True
    return False


def flavour(model: Any) -> str:
    """``"tf_keras"`` (Keras 2) or ``"keras"`` (Keras 3)."""
    for c in type(model).__mro__:
        if c.__name__ == "Layer":
            root = (c.__module__ or "").split(".")[0]
            if root == "tf_keras" or c.__module__.startswith("tensorflow.python.keras"):
                return "tf_keras"
            if root == "keras":
                return "keras"
    raise ModelTypeError(f"{type(model).__name__} is not a Keras layer or model.")


def _layer_base(model: Any) -> type:
    for c in type(model).__mro__:
        if c.__name__ == "Layer" and (c.__module__ or "").split(".")[0] in _KERAS_PACKAGES:
            return c
    raise ModelTypeError(f"{type(model).__name__} is not a Keras layer or model.")


def backend_of(model: Any) -> str:
    """The array framework the model computes with: ``tensorflow``, ``jax``, ``torch`` or ``numpy``."""
    if flavour(model) == "tf_keras":
        return "tensorflow"
    import keras

    return keras.backend.backend()


# --- paths and parameters ---------------------------------------------------------------------


def _children(layer: Any, base: type) -> list[tuple[str, Any]]:
    """(name, sub-layer) pairs: public attributes, then private ones, then Keras's layer list."""
    public, private = [], []
    attrs = dict(vars(layer))
    mods = attrs.get("_modules")  # Keras 3 on PyTorch: sub-layers are torch submodules
    if isinstance(mods, Mapping):
        attrs.update({k: v for k, v in mods.items() if k not in attrs})
    for k, v in list(attrs.items()):
        if k in _INTERNAL or k.startswith("__"):
            continue
        target = private if k.startswith("_") else public
        name = k.lstrip("_")
        if isinstance(v, base):
            target.append((name, v))
        elif not k.startswith("_") and isinstance(v, (list, tuple)):
            target += [(f"{name}.{i}", x) for i, x in enumerate(v) if isinstance(x, base)]
        elif not k.startswith("_") and isinstance(v, Mapping):
            with contextlib.suppress(Exception):
                target += [(f"{name}.{kk}", x) for kk, x in v.items() if isinstance(x, base)]
    rest = []
    flat = getattr(layer, "_flatten_layers", None)
    if callable(flat):
        with contextlib.suppress(Exception):
            rest = [(x.name, x) for x in flat(include_self=False, recursive=False)]
    return public + private + rest


def _snake(name: str) -> str:
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", name).lower().lstrip("_")


def given_name(layer: Any) -> str | None:
    """The name the model's author gave a layer (``name="output"``), None for Keras's generated ones."""
    n = getattr(layer, "name", None)
    if not isinstance(n, str) or not n or "/" in n:
        return None
    if re.fullmatch(re.escape(_snake(type(layer).__name__)) + r"(_\d+)?", n):
        return None
    return n.replace("_._", ".")  # Hugging Face names list items "layer_._3"


def layer_paths(model: Any) -> dict[int, tuple[str, Any]]:
    """Every layer reachable from ``model`` by ``id``: (canonical path, layer); shortest path wins.

    A path component is the name the author gave the layer where there is one
    (Hugging Face TF layers carry their PyTorch attribute names:
    ``self.dense_output = TFBertSelfOutput(..., name="output")``), else the attribute
    name (``self.fc1 = Dense(...)`` -> ``fc1``), else Keras's layer name.
    """
    base = _layer_base(model)
    out: dict[int, tuple[str, Any]] = {id(model): ("", model)}
    used = {""}
    queue: deque = deque([(model, ())])
    while queue:
        layer, parts = queue.popleft()
        for name, child in _children(layer, base):
            if id(child) in out:
                continue
            path = None
            for comp in (given_name(child), name):
                if comp is None:
                    continue
                p = parts + tuple(comp.split("."))
                if canonical_path(p) not in used:
                    path = p
                    break
            if path is None:
                continue
            out[id(child)] = (canonical_path(path), child)
            used.add(canonical_path(path))
            queue.append((child, path))
    return out


def _own_variables(layer: Any) -> list[Any]:
    own = []
    for attr in ("_trainable_variables", "_non_trainable_variables", "_trainable_weights", "_non_trainable_weights"):
        own += list(getattr(layer, attr, None) or [])
    seen, out = set(), []
    for v in own:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _var_parts(v: Any) -> list[str]:
    name = getattr(v, "path", None) or getattr(v, "name", "") or ""
    return [p for p in re.sub(r":\d+$", "", str(name)).split("/") if p]


def to_numpy(v: Any) -> np.ndarray:
    """A host copy of a tensor or variable of any Keras backend."""
    if isinstance(v, np.ndarray):
        return v.copy()
    mod = type(v).__module__
    if mod.startswith("torch"):
        from ._torch import to_numpy as torch_numpy

        return torch_numpy(v)
    value = getattr(v, "value", None)  # a Keras 3 variable
    if value is not None and not callable(value) and type(v).__module__.startswith("keras"):
        return to_numpy(value)
    if hasattr(v, "numpy"):
        return np.array(v.numpy())
    return np.array(v)


def params_by_path(
    paths: dict[int, tuple[str, Any]], parts_out: list[str] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Float variables each layer owns directly, by canonical path and local name.

    A variable made under a name scope of its own inside its layer
    (``embeddings/position_embeddings/embeddings``) is placed at
    ``<layer path>.<scope>``; ``parts_out`` receives those paths.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for path, layer in paths.values():
        attr_of = {id(v): k.lstrip("_") for k, v in vars(layer).items() if not k.startswith("__")}
        for v in _own_variables(layer):
            parts = _var_parts(v)
            try:
                arr = to_numpy(v)
            except Exception:
                continue
            if arr.dtype.kind not in "fc" and arr.dtype.name != "bfloat16":
                continue
            owner, name = path, attr_of.get(id(v)) or (parts[-1] if parts else "weight")
            lname = getattr(layer, "name", "")
            if len(parts) >= 2 and parts[-2] != lname and lname in parts[:-2]:
                scope = parts[parts.index(lname) + 1 : -1]
                owner = canonical_path(tuple(x for x in (path, *scope) if x))
                name = parts[-1]
                if parts_out is not None and owner not in parts_out:
                    parts_out.append(owner)
            elif name not in _STANDARD_PARAMS and parts and parts[-1] in _STANDARD_PARAMS:
                name = parts[-1] if parts[-1] not in out.get(owner, {}) else name
            d = out.setdefault(owner, {})
            while name in d:
                name += "_"
            d[name] = arr
    return out


def function_name(fn: Any) -> str | None:
    name = getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):
        return function_name(fn.func)
    return name


def layer_config(layer: Any) -> dict[str, Any]:
    """Scalar settings of a layer (epsilon, momentum, padding, strides, activation, data_format)."""
    cfg: dict[str, Any] = {}
    items = list(vars(layer).items())
    with contextlib.suppress(Exception):
        items += list(layer.get_config().items())
    for k, v in items:
        if k.startswith("_") or k in ("name", "trainable", "dtype"):
            continue
        if isinstance(v, _SCALARS):
            cfg[k] = v
        elif isinstance(v, (tuple, list)) and len(v) <= 8 and all(isinstance(x, _SCALARS) for x in v):
            cfg[k] = list(v)
        elif k in ("activation", "approximate") and callable(v):
            name = function_name(v)
            if name:
                cfg[k] = name
    act = fused_activation(layer)
    if act is not None:
        cfg["fused_activation"] = function_name(act)
    policy = getattr(layer, "dtype_policy", None)
    if policy is not None and getattr(policy, "name", None):
        cfg["dtype_policy"] = str(policy.name)
    return cfg


# --- arrays of every backend ------------------------------------------------------------------


def _tensor_types() -> tuple[type, ...]:
    types: list[type] = [np.ndarray]
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        types += [tf.Tensor, tf.Variable]
    if "jax" in sys.modules:
        types.append(sys.modules["jax"].Array)
    if "torch" in sys.modules:
        types.append(sys.modules["torch"].Tensor)
    return tuple(types)


def _walk(obj: Any, prefix: tuple, out: dict, types: tuple) -> None:
    if isinstance(obj, types):
        out[leaf_key(prefix)] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _walk(v, prefix + (k,), out, types)
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            _walk(v, prefix + (i,), out, types)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), prefix + (f.name,), out, types)


def flatten(obj: Any, prefix: tuple, types: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _walk(obj, prefix, out, types)
    return out


def _replace(obj: Any, prefix: tuple, subst: Mapping[str, Any], make: Callable, types: tuple) -> Any:
    if isinstance(obj, types):
        key = leaf_key(prefix)
        return make(subst[key], obj) if key in subst else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_replace(v, prefix + (i,), subst, make, types) for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [_replace(v, prefix + (i,), subst, make, types) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _replace(v, prefix + (k,), subst, make, types) for k, v in obj.items()}
    return obj


def _maker(backend: str) -> Callable[[Any, Any], Any]:
    """``make(value, like)``: ``value`` as a tensor of ``like``'s framework, dtype and shape."""
    if backend == "tensorflow":
        import tensorflow as tf

        def make_tf(value, like):
            if isinstance(like, np.ndarray):
                return np.asarray(value, dtype=like.dtype).reshape(like.shape)
            t = tf.cast(tf.convert_to_tensor(value), like.dtype)
            return tf.reshape(t, tf.shape(like))

        return make_tf
    if backend == "jax":
        import jax.numpy as jnp

        def make_jax(value, like):
            return jnp.asarray(value, dtype=like.dtype).reshape(like.shape)

        return make_jax
    if backend == "torch":
        from ._torch import from_numpy

        def make_torch(value, like):
            if isinstance(like, np.ndarray):
                return np.asarray(value, dtype=like.dtype).reshape(like.shape)
            return from_numpy(np.asarray(value), like=like).reshape(like.shape)

        return make_torch
    return lambda value, like: np.asarray(value, dtype=like.dtype).reshape(like.shape)


def to_backend_inputs(inputs: Any, backend: str, name: str = "inputs") -> tuple[tuple, dict]:
    """(args, kwargs) with every array (numpy, torch, jax, tf) as a tensor of ``backend``."""

    def conv(v: Any) -> Any:
        if isinstance(v, (list, tuple)) and v and all(_is_arraylike(x) for x in v):
            return type(v)(conv(x) for x in v)
        if not _is_arraylike(v):
            return v
        a = v if isinstance(v, np.ndarray) else to_numpy(v)
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.convert_to_tensor(a)
        if backend == "jax":
            import jax.numpy as jnp

            return jnp.asarray(a)
        if backend == "torch":
            from ._torch import from_numpy

            return from_numpy(a)
        return a

    if isinstance(inputs, Mapping):
        return (), {k: conv(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(conv(v) for v in inputs), {}
    if _is_arraylike(inputs):
        return (conv(inputs),), {}
    raise InputError(
        f"{name} must be a dict (keyword arguments), a tuple (positional arguments) or one array; "
        f"got {type(inputs).__name__}."
    )


def _is_arraylike(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return True
    return type(v).__module__.split(".")[0] in ("torch", "jax", "jaxlib", "tensorflow") and hasattr(v, "shape")


# --- recording --------------------------------------------------------------------------------

_STATE = threading.local()


def _active() -> _Recorder | None:
    return getattr(_STATE, "rec", None)


class _Recorder:
    """The calls of one forward run; ``graph``: values are symbolic and returned by the traced function."""

    def __init__(self, paths, substitute, svals, record_outputs: bool, graph: bool, make: Callable, types: tuple):
        self.paths = paths
        self.sub_keys = {k: tuple(v) for k, v in (substitute or {}).items()}
        self.svals = svals
        self.record_outputs = record_outputs
        self.graph = graph
        self.make = make
        self.types = types
        self.reset()

    def reset(self) -> None:
        self.counters: dict[str, int] = {}
        self.stack: list[int] = []
        self.calls: list[tuple] = []  # (path, idx, type, ins, outs, raw, error)
        self.uniq: list[Any] = []
        self._where: dict[int, int] = {}
        self._host: dict[int, tuple[Any, np.ndarray]] = {}

    def _keep(self, leaves: dict[str, Any]) -> dict[str, Any]:
        """Graph mode: slot numbers into ``uniq``; eager: host copies (one per tensor object)."""
        out = {}
        for k, v in leaves.items():
            if self.graph:
                i = self._where.get(id(v))
                if i is None:
                    i = self._where[id(v)] = len(self.uniq)
                    self.uniq.append(v)
                out[k] = i
            else:
                hit = self._host.get(id(v))
                if hit is None or hit[0] is not v:
                    hit = (v, to_numpy(v))
                    self._host[id(v)] = hit
                out[k] = hit[1]
        return out

    def call(self, layer: Any, raw_call: Callable, args: tuple, kwargs: dict) -> Any:
        path = self.paths[id(layer)][0]
        idx = self.counters.get(path, 0)
        self.counters[path] = idx + 1
        ins = outs = raw = {}
        error = None
        try:
            keys = self.sub_keys.get((path, idx))
            if keys:
                own = {**flatten(args, ("args",), self.types), **flatten(kwargs, ("kwargs",), self.types)}
                raw = self._keep({k: v for k, v in own.items() if k in keys})
                s = {k: self.svals[f"{path}#{idx}#{k}"] for k in keys if k in own}
                args = _replace(args, ("args",), s, self.make, self.types)
                kwargs = _replace(kwargs, ("kwargs",), s, self.make, self.types)
            ins = self._keep({**flatten(args, ("args",), self.types), **flatten(kwargs, ("kwargs",), self.types)})
        except Exception as e:  # never break the user's forward
            error = f"input capture failed: {type(e).__name__}: {e}"
        act = fused_activation(layer)
        self.stack.append(id(layer))
        try:
            if act is None:
                out = raw_call(layer, *args, **kwargs)
            else:  # record the value before the layer's own activation (PyTorch applies it as a module)
                object.__setattr__(layer, "activation", _identity)
                try:
                    out = raw_call(layer, *args, **kwargs)
                finally:
                    object.__setattr__(layer, "activation", act)
        finally:
            self.stack.pop()
        try:
            if self.record_outputs:
                outs = self._keep(flatten(out, ("out",), self.types))
        except Exception as e:
            error = f"output capture failed: {type(e).__name__}: {e}"
        self.calls.append((path, idx, type(layer).__name__, ins, outs, raw, error))
        return out if act is None else act(out)


def _identity(x: Any) -> Any:
    return x


def fused_activation(layer: Any) -> Callable | None:
    """A Dense/Conv layer's own non-linear ``activation`` (``Dense(units, activation="tanh")``), or None."""
    if (type(layer).__module__ or "").split(".")[0] not in ("keras", "tf_keras"):
        return None  # a user layer's `activation` attribute is its own business (it may call it itself)
    act = vars(layer).get("activation")
    if act is None or not callable(act) or isinstance(act, type) or hasattr(act, "built"):
        return None  # an Activation layer held as an attribute is a sub-layer, recorded on its own
    return None if function_name(act) in ("linear", "_identity", None) else act


def _resolve_call(cls: type) -> Any:
    for base in cls.__mro__:
        if "__call__" in vars(base):
            return vars(base)["__call__"]
    return None


def _wrapper(raw: Any):
    def __call__(self, *args, **kwargs):
        rec = _active()
        if rec is None or id(self) not in rec.paths or id(self) in rec.stack[-1:]:
            return raw(self, *args, **kwargs)
        return rec.call(self, raw, args, kwargs)

    __call__.__xfdiff_wrapped__ = raw
    # Autograph calls the wrapper as it is (it is no user code to convert) and keeps its status,
    # so Keras still converts each layer's `call` as it does without xfdiff.
    __call__.autograph_info__ = frozenset()
    return __call__


@contextlib.contextmanager
def patched(layers: list[Any]):
    """Wrap ``__call__`` of every layer class in ``layers``; undo on exit, also on error."""
    saved: dict[type, tuple[bool, Any]] = {}
    graphs: dict[type, Any] = {}
    try:
        for layer in layers:
            cls = type(layer)
            if cls in saved:
                continue
            raw = _resolve_call(cls)
            saved[cls] = ("__call__" in vars(cls), vars(cls).get("__call__"))
            cls.__call__ = _wrapper(raw)
            owner = next((b for b in cls.__mro__ if "call" in vars(b)), None)
            fn = vars(owner).get("call") if owner is not None else None
            if owner not in graphs and hasattr(fn, "python_function"):
                # `call` is a tf.function whose cached graph was traced without the wrappers:
                # run its Python function for this capture (inlined in xfdiff's own trace).
                graphs[owner] = fn
                owner.call = fn.python_function
        yield
    finally:
        for owner, fn in graphs.items():
            owner.call = fn
        for cls, (had, orig) in saved.items():
            if had:
                cls.__call__ = orig
            else:
                with contextlib.suppress(AttributeError):
                    delattr(cls, "__call__")


@contextlib.contextmanager
def recording(rec: _Recorder):
    prev = _active()
    _STATE.rec = rec
    try:
        yield
    finally:
        _STATE.rec = prev


# --- the side ---------------------------------------------------------------------------------


class KerasSide:
    """Records every layer call of a Keras model ``model(*args, **kwargs)``.

    Args:
        model: a Keras 3 or tf-keras layer or model (Hugging Face ``TF*`` classes included),
            built and holding the weights to compare.
        inputs: a dict (keyword arguments), a tuple (positional) or one array.
        jit: trace the forward (``tf.function`` / ``jax.jit``); eager when that fails.
    """

    name = "flax"  # the second slot of a comparison (xfdiff.compare's second argument)
    supports_streaming = False
    supports_sink = False

    def __init__(self, model: Any, inputs: Any, jit: bool = True):
        if not accepts(model):
            raise ModelTypeError(f"KerasSide needs a Keras layer or model, got {type(model).__name__}.")
        self.model = model
        self.framework = flavour(model)
        self.backend = backend_of(model)
        _check_built(model)
        self.args, self.kwargs = to_backend_inputs(inputs, self.backend, "flax_inputs")
        _check_ranks(model, self.args, self.kwargs)
        self.jit = jit and self.backend in ("tensorflow", "jax")
        self.mode = "eager"

    def describe(self) -> str:
        return type(self.model).__name__

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        """Run the model once and record every layer call (see :mod:`xfdiff.capture`)."""
        paths = layer_paths(self.model)
        rec = None
        if self.jit:
            try:
                rec, values = self._run(paths, substitute, record_outputs, graph=True)
                self.mode = "tf.function" if self.backend == "tensorflow" else "jax.jit"
            except Exception:
                self.jit = False  # not traceable as it is: run eagerly from now on
        if rec is None:
            try:
                rec, values = self._run(paths, substitute, record_outputs, graph=False)
            except Exception as e:
                raise CaptureError(
                    f"The Keras model {self.describe()} raised {type(e).__name__} during its forward pass: {e}. "
                    f"Inputs given: {_shapes(self.args, self.kwargs)}. Check that the inputs fit this model "
                    "(names, shapes, dtypes, channels_last images for Keras convolutions); pass `flax_inputs=` "
                    "if this side takes different arguments than the other. The model is unchanged."
                ) from e
            self.mode = "eager"
        return self._trace(paths, rec, values)

    def _run(self, paths, substitute, record_outputs: bool, graph: bool):
        types = _tensor_types()
        make = _maker(self.backend)
        subst = substitute or {}
        layers = [layer for _, layer in paths.values()]
        model, args, kwargs = self.model, self.args, self.kwargs

        if not graph:
            svals = {f"{p}#{i}#{leaf}": a for (p, i), d in subst.items() for leaf, a in d.items()}
            rec = _Recorder(paths, subst, svals, record_outputs, False, make, types)
            with patched(layers), recording(rec):
                model(*args, **kwargs)
            return rec, None
        rec = _Recorder(paths, subst, {}, record_outputs, True, make, types)

        def body(a, kw, svals):
            rec.reset()
            rec.svals = svals
            with recording(rec):
                model(*a, **kw)
            return list(rec.uniq)

        svals = {f"{p}#{i}#{leaf}": np.asarray(a) for (p, i), d in subst.items() for leaf, a in d.items()}
        with patched(layers):
            if self.backend == "tensorflow":
                import tensorflow as tf

                out = tf.function(body)(args, kwargs, {k: tf.convert_to_tensor(v) for k, v in svals.items()})
            else:
                import jax
                import jax.numpy as jnp

                out = jax.jit(body)(args, kwargs, {k: jnp.asarray(v) for k, v in svals.items()})
        return rec, [to_numpy(v) for v in out]

    def _trace(self, paths, rec: _Recorder, values) -> Trace:
        trace = Trace(side="flax", framework=self.framework)
        for path, layer in paths.values():
            trace.module_types[path] = type(layer).__name__
            trace.config[path] = layer_config(layer)
        for order, (path, idx, typ, ins, outs, raw, error) in enumerate(rec.calls):
            r = CallRecord(path=path, call_index=idx, module_type=typ, order=order, error=error)
            if values is not None:
                ins, outs, raw = ({k: values[i] for k, i in d.items()} for d in (ins, outs, raw))
            r.inputs, r.outputs, r.raw_inputs = ins, outs, raw
            trace.records.append(r)
        weight_parts: list[str] = []
        trace.params = params_by_path(paths, weight_parts)
        for p in trace.params:
            trace.module_types.setdefault(p, "?")
        trace.meta.update(_meta(self.model, self.framework, self.backend))
        trace.meta.update({"model": self.describe(), "jit": self.mode != "eager", "capture_mode": self.mode})
        # paths of weights held as parts of a called layer (no calls of their own): align pairs them too
        trace.meta["weight_parts"] = [p for p in weight_parts if p not in set(trace.paths())]
        return trace


def _meta(model: Any, framework: str, backend: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"keras_backend": backend, "framework": framework}
    if framework == "tf_keras":
        import tf_keras

        meta["keras_version"] = tf_keras.__version__
    else:
        import keras

        meta["keras_version"] = keras.__version__
        with contextlib.suppress(Exception):
            meta["dtype_policy"] = keras.config.dtype_policy().name
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        meta["tf_version"] = tf.__version__
        with contextlib.suppress(Exception):
            meta["tf32"] = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    meta["jit_compile"] = bool(getattr(model, "_jit_compile", None) or False)
    return meta


def _shapes(args: tuple, kwargs: dict) -> dict[str, tuple]:
    out = {f"arg{i}": tuple(v.shape) for i, v in enumerate(args) if hasattr(v, "shape")}
    out.update({k: tuple(v.shape) for k, v in kwargs.items() if hasattr(v, "shape")})
    return out


def _check_built(model: Any) -> None:
    """A model without weights would be built on the first call with fresh random ones."""
    if getattr(model, "built", True) and _all_variables(model):
        return
    raise ModelTypeError(
        f"The Keras model {type(model).__name__} has no weights yet: it was never built or called, so a "
        "forward pass would create fresh random ones. Build it and load the reference weights first: call it "
        "once on an example input (or model.build(input_shape)), then model.set_weights(...) / "
        "load_pytorch_model_in_tf2_model(tf_model, pt_model) for a Hugging Face TF class."
    )


def _all_variables(model: Any) -> list:
    for attr in ("variables", "weights"):
        with contextlib.suppress(Exception):
            v = getattr(model, attr)
            if v:
                return list(v)
    return []


def _check_ranks(model: Any, args: tuple, kwargs: dict) -> None:
    """Functional and Sequential models declare their input ranks: say which input misses it."""
    specs = None
    with contextlib.suppress(Exception):
        specs = model.inputs
    if not specs or kwargs or len(args) != len(specs):
        return
    for i, (a, s) in enumerate(zip(args, specs, strict=True)):
        want = getattr(s, "shape", None)
        if want is None or not hasattr(a, "shape"):
            continue
        want = tuple(want)
        if len(tuple(a.shape)) != len(want):
            raise InputError(
                f"Input {i} of the Keras model {type(model).__name__} has shape {tuple(a.shape)} "
                f"(rank {len(tuple(a.shape))}) but the model takes rank {len(want)} {want} (None = any size). "
                "Keras images are channels_last (N, H, W, C): pass flax_inputs= with the layout this model "
                "takes (e.g. np.transpose(x, (0, 2, 3, 1)) for an NCHW PyTorch input)."
            )


def make_side(model: Any, inputs: Any, *, jit: bool = True) -> KerasSide:
    """The registry's factory (see :mod:`xfdiff.capture.registry`)."""
    return KerasSide(model, inputs, jit=jit)
