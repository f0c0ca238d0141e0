"""Capture every module call of a Flax NNX model.

NNX has no method interceptor, so for the duration of one capture xfdiff
replaces ``__call__`` on the classes that occur in the model graph (a class
that inherits ``__call__`` gets its own wrapper) and tags each module instance
with its path as a static attribute. The tag is part of the graph definition,
so it survives ``nnx.split``/``nnx.merge`` and therefore the copies that
``nnx.jit``, ``nnx.scan`` and friends make inside the forward pass; it also
carries a per-capture token, so functions the user jitted earlier are traced
again rather than served from their cache without the wrappers. Classes and
instances are restored in ``finally``, also when the forward raises.

The forward runs on ``nnx.merge(nnx.split(model))``, a copy: batch statistics,
RNG counters and any other state the call mutates stay untouched on the
user's model, and every capture sees the same random streams.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
from typing import Any

import jax
import numpy as np
from flax import nnx

from ..errors import CaptureError, ModelTypeError
from ..trace import Trace, canonical_path
from ._common import config_of
from ._jax import add_param, to_jax_inputs
from .base import Substitute
from .jax_record import active, run_once, run_with_fallbacks

TAG = "_xfdiff_path"
_tokens = itertools.count(1)


def _is_graph_node(x: Any) -> bool:
    """Modules, Rngs and Variables passed as arguments are state, not inputs."""
    return isinstance(x, (nnx.Pytree, nnx.Variable))


def module_paths(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every module of the graph by canonical path (``layers.3.up``), the root as ``""``."""
    out: dict[str, nnx.Module] = {}
    for parts, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            out.setdefault(canonical_path(tuple(str(p) for p in parts)), node)
    return out


def _collection(var: nnx.Variable) -> str:
    if isinstance(var, nnx.Param):
        return ""
    if isinstance(var, nnx.BatchStat):
        return "batch_stats."
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(var).__name__).lower() + "."


def params_by_module(
    model: nnx.Module, modules: dict[str, nnx.Module], tokens: dict | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Float arrays each module owns directly (not its children's), by local name (and tokens of JAX arrays)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for parts, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Variable) or isinstance(node, nnx.RngState):
            continue
        value = node.get_value()
        if not isinstance(value, (jax.Array, np.ndarray)) or not np.issubdtype(value.dtype, np.inexact):
            continue
        strs = tuple(str(p) for p in parts)
        for cut in range(len(strs) - 1, -1, -1):  # the nearest enclosing module owns it
            owner = canonical_path(strs[:cut])
            if owner in modules:
                name = _collection(node) + ".".join(strs[cut:])
                add_param(out, tokens, owner, name, value)
                break
    return out


def module_config(mod: nnx.Module) -> dict[str, Any]:
    """Settings of a module (epsilon, use_bias, approximate, dtype and activation names); never raises."""
    try:
        items = [(k, v) for k, v in vars(mod).items() if not k.startswith("_")]
    except TypeError:
        return {}
    return config_of((k, v) for k, v in items if not isinstance(v, (nnx.Pytree, nnx.Variable)))


def _resolve_call(cls: type) -> Any:
    """The raw ``__call__`` a class uses (its own or inherited), or None."""
    for base in cls.__mro__:
        if base is object:
            return None
        if "__call__" in vars(base):
            return vars(base)["__call__"]
    return None


def _wrapper(raw: Any):
    def __call__(self, *args, **kwargs):
        bound = raw.__get__(self, type(self)) if hasattr(raw, "__get__") else functools.partial(raw, self)
        rec = active()
        tag = getattr(self, TAG, None)
        if rec is None or tag is None or tag[1] != rec.token or rec.inside(self):
            return bound(*args, **kwargs)
        return rec.call(tag[0], type(self).__name__, {}, bound, args, kwargs, skip=_is_graph_node, owner=self)

    __call__.__xfdiff_wrapped__ = raw
    return __call__


@contextlib.contextmanager
def patched(modules: dict[str, nnx.Module], token: int):
    """Wrap ``__call__`` of every class in the graph and tag every instance; undo on exit."""
    saved: dict[type, tuple[bool, Any]] = {}
    tagged: list[nnx.Module] = []
    try:
        raws = {}
        for mod in modules.values():
            cls = type(mod)
            if cls not in raws:
                raws[cls] = _resolve_call(cls)
        for cls, raw in raws.items():
            if raw is None:
                continue
            saved[cls] = ("__call__" in vars(cls), vars(cls).get("__call__"))
            cls.__call__ = _wrapper(raw)
        for path, mod in modules.items():
            setattr(mod, TAG, (path, token))
            tagged.append(mod)
        yield
    finally:
        for mod in tagged:
            with contextlib.suppress(AttributeError):
                delattr(mod, TAG)
        for cls, (had, orig) in saved.items():
            if had:
                cls.__call__ = orig
            else:
                delattr(cls, "__call__")


def accepts(model: Any) -> bool:
    """An ``nnx.Module``."""
    return isinstance(model, nnx.Module)


def make_side(model: Any, inputs: Any, *, jit: bool = True) -> NnxSide:
    """The capture side of an NNX model."""
    return NnxSide(model, inputs, jit=jit)


class NnxSide:
    """Records every ``nnx.Module`` call of ``model(*args, **kwargs)``.

    Args:
        model: an ``nnx.Module``.
        inputs: a dict (keyword arguments), a tuple (positional) or one array.
        jit: run the forward under ``jax.jit`` (falls back to eager when the
            model needs concrete values).
    """

    name = "flax"
    framework = "nnx"
    supports_streaming = False
    supports_sink = False

    def __init__(self, model: Any, inputs: Any, jit: bool = True):
        if not isinstance(model, nnx.Module):
            raise ModelTypeError(f"NnxSide needs an nnx.Module, got {type(model).__name__}.")
        self.model = model
        self.args, self.kwargs = to_jax_inputs(inputs, "flax_inputs")
        self.jit = jit
        self.mode = "direct"

    def describe(self) -> str:
        return type(self.model).__name__

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        """Run the model once and record every module call (see :mod:`xfdiff.capture`)."""
        modules = module_paths(self.model)

        def attempt(jit: bool, mode: str):
            # A fresh token per attempt: an inner nnx.jit must not reuse a trace made by an earlier attempt.
            token = next(_tokens)
            with patched(modules, token):
                graphdef, state = nnx.split(self.model)

                def body(tree, rec):
                    state, args, kwargs = tree
                    nnx.merge(graphdef, state)(*args, **kwargs)

                def setup(rec):
                    rec.token = token
                    rec.tap_skip = _is_graph_node

                return run_once(body, (state, self.args, self.kwargs), substitute, record_outputs, jit, mode, setup)

        try:
            rec, returned, self.jit, self.mode = run_with_fallbacks(attempt, self.jit, self.mode)
        except Exception as e:
            raise CaptureError(
                f"The NNX model {self.describe()} raised {type(e).__name__} during its forward pass: {e}. "
                "Check that the inputs fit this model (names, shapes, dtypes); pass `flax_inputs=` if the "
                "Flax side takes different arguments than the PyTorch side. The model is unchanged."
            ) from e
        return self._trace(modules, rec, returned)

    def _trace(self, modules: dict[str, nnx.Module], rec, returned) -> Trace:
        trace = Trace(side="flax", framework="nnx")
        for path, mod in modules.items():
            trace.module_types[path] = type(mod).__name__
            trace.config[path] = module_config(mod)
        rec.fill(trace, returned)
        trace.params = params_by_module(self.model, modules, trace.param_tokens)
        trace.meta.update(
            {
                "model": self.describe(),
                "backend": jax.default_backend(),
                "x64": bool(jax.config.jax_enable_x64),
                "matmul_precision": str(jax.config.jax_default_matmul_precision),
                "jax_version": jax.__version__,
                "jit": self.jit,
                "capture_mode": self.mode,
            }
        )
        return trace
