"""Framework-free helpers shared by the capture adapters.

A module's settings are read into a small dict of JSON-able values (the
``config`` of its records) for the pitfall detectors. Modules hold anything:
classes, partials, callables, dtypes in several spellings, nested modules,
dataclasses. :func:`config_value` turns what it understands into a plain
value and everything else into ``None``; it never raises.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

SCALARS = (bool, int, float, str)

#: ``XFDIFF_DEVICE_STATS=1`` keeps every captured activation on its device (a torch tensor or a
#: ``jax.Array``, CPU included), where the statistics are computed; ``=0`` copies them all to host
#: numpy at capture time. Unset: each side decides by where it runs (see :func:`keep_on_device`).
DEVICE_ENV = "XFDIFF_DEVICE_STATS"


def keep_on_device(default: bool) -> bool:
    """Whether a capture keeps its activations where they were computed (see :data:`DEVICE_ENV`).

    ``default`` is the side's own answer when the switch is unset: True for a torch model on an
    accelerator or a JAX side whose default backend is not the CPU (on the CPU the host
    kernels are faster and copies cost little).
    """
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced in ("1", "on", "true", "yes"):
        return True
    if forced in ("0", "off", "false", "no"):
        return False
    return default


_MAX_TUPLE = 8


def leaf_key(parts) -> str:
    """Join key-path components: ``("kwargs", "hidden_states")`` -> ``kwargs.hidden_states``."""
    return ".".join(str(p) for p in parts)


def is_output_leaf(key: str) -> bool:
    """True for a substitution key that names an output leaf (``out``, ``out.0`` ...)."""
    return key == "out" or key.startswith("out.")


def split_substitute(substitute: Any) -> tuple[dict, dict]:
    """``(input substitutions, output substitutions)`` of a :data:`~xfdiff.capture.base.Substitute`.

    Output leaves (keys ``out`` / ``out.*``) replace what a call returns, so everything
    downstream sees the given values (splicing, :mod:`xfdiff.splice`).
    """
    ins: dict = {}
    outs: dict = {}
    for key, leaves in (substitute or {}).items():
        i = {k: v for k, v in leaves.items() if not is_output_leaf(k)}
        o = {k: v for k, v in leaves.items() if is_output_leaf(k)}
        if i:
            ins[key] = i
        if o:
            outs[key] = o
    return ins, outs


def function_name(fn: Any) -> str | None:
    """``gelu``; a partial with scalar keywords as ``gelu(approximate=False)``; None when nameless."""
    if isinstance(fn, functools.partial):
        inner = function_name(fn.func)
        kw = ",".join(f"{k}={v}" for k, v in fn.keywords.items() if isinstance(v, SCALARS))
        return f"{inner}({kw})" if kw and inner else inner
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None


def dtype_name(v: Any) -> str | None:
    """``"float32"`` for a numpy/JAX dtype, a scalar type (``jnp.float32``) or a dtype string; else None."""
    if isinstance(v, np.dtype):
        return v.name
    if isinstance(v, type) and issubclass(v, np.generic):
        return np.dtype(v).name
    if type(v).__name__ == "_ScalarMeta" or (isinstance(v, type) and hasattr(v, "dtype")):
        try:
            return np.dtype(v).name
        except TypeError:
            return None
    return None


def config_value(v: Any) -> Any:
    """A JSON-able summary of one setting, or None when there is nothing worth recording.

    Scalars stay as they are, short tuples of scalars become lists, dtypes
    their names, functions (and partials of functions) their names; classes,
    partials of classes, modules, dataclass instances and anything else give
    None. Never raises: a setting xfdiff does not understand is skipped.
    """
    try:
        return _config_value(v)
    except Exception:  # a setting is a hint for the detectors, never worth failing a capture
        return None


def _config_value(v: Any) -> Any:
    if isinstance(v, SCALARS):
        return v
    if isinstance(v, (tuple, list)):
        if len(v) <= _MAX_TUPLE and all(isinstance(x, SCALARS) for x in v):
            return list(v)
        return None
    name = dtype_name(v)
    if name is not None:
        return name
    if isinstance(v, type) or dataclasses.is_dataclass(v):
        return None  # a class (nn.Conv, a module factory) or a config object: no scalar meaning
    target = v.func if isinstance(v, functools.partial) else v
    if isinstance(target, type):
        return None  # functools.partial(nn.Conv, use_bias=False) builds modules, it is not an activation
    if callable(v):
        return function_name(v)
    return None


def config_of(items) -> dict[str, Any]:
    """``{name: config_value(value)}`` for ``(name, value)`` pairs, without the Nones."""
    cfg: dict[str, Any] = {}
    for k, v in items:
        c = config_value(v)
        if c is not None:
            cfg[k] = c
    return cfg


_FRAMEWORKS = frozenset({"torch", "flax", "jax", "jaxlib", "keras", "tf_keras", "tensorflow"})


def framework_of(obj: Any) -> str:
    """The framework package that defines ``obj``'s class or a base of it (``""`` for plain Python objects).

    Reads class names only; imports nothing.
    """
    for c in type(obj).__mro__:
        top = (getattr(c, "__module__", None) or "").split(".")[0]
        if top in _FRAMEWORKS:
            return top
    return ""
