"""JAX helpers shared by the JAX adapters (linen, NNX, tapped functions) and the JAX recorder.

Nothing here knows about a particular model library: pytree leaves keyed by
their path, input conversion, parameter storage with identity tokens, shape
placeholders, and the errors that mean "run this eagerly".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..trace import ParamToken
from ._common import keep_on_device, leaf_key

# Errors raised while tracing a model that needs concrete values: run it eagerly instead of under jax.jit.
CONCRETE_ERRORS: tuple[type[BaseException], ...] = (
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


def is_array(x: Any) -> bool:
    """A JAX or numpy array that numpy can hold (PRNG key arrays have an extended dtype and are not)."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        return False
    return not jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended)


def flatten_leaves(obj: Any, prefix: tuple, skip: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Array leaves of a pytree keyed like ``args.0`` / ``kwargs.x`` / ``out.0``.

    Anything else in the tree (None, bools, strings, objects JAX does not
    know) is passed over. ``skip(node)`` drops whole subtrees (NNX modules
    passed as arguments, parameter leaves of a tapped step).
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(obj, is_leaf=skip)
    out = {}
    for path, leaf in leaves:
        if skip is not None and skip(leaf):
            continue
        if is_array(leaf):
            out[leaf_key(prefix + tuple(key_str(p) for p in path))] = leaf
    return out


def replace_leaves(obj: Any, prefix: tuple, subst: Mapping[str, Any], skip: Callable[[Any], bool] | None = None) -> Any:
    """A copy of pytree ``obj`` whose array leaves at keys in ``subst`` are replaced (same dtype and shape)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(obj, is_leaf=skip)
    new = []
    for path, leaf in leaves:
        key = leaf_key(prefix + tuple(key_str(p) for p in path))
        if key in subst and is_array(leaf) and not (skip is not None and skip(leaf)):
            new.append(jnp.asarray(as_jax(subst[key]), dtype=leaf.dtype).reshape(leaf.shape))
        else:
            new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


def as_jax(v: Any) -> Any:
    """A value given to a JAX run (teacher forcing, splicing) as a JAX array: a torch tensor through
    DLPack on its device (:func:`xfdiff.stats.meet.to_jax`), anything else through ``jnp.asarray``."""
    if type(v).__module__.startswith("torch"):
        from ..stats.meet import to_jax

        return to_jax(v)
    return jnp.asarray(v)


def add_param(out: dict, tokens: dict | None, owner: str, name: str, value: Any) -> None:
    """Store ``value`` as parameter ``name`` of module ``owner``, and in ``tokens`` its
    :class:`~xfdiff.trace.ParamToken` when it is a JAX array (immutable: the object is the
    identity of its values).

    A JAX array stays where it is when captures keep values on the device (an accelerator, or
    :data:`~xfdiff.capture._common.DEVICE_ENV`): its fingerprint is computed there and only the
    parameters a check reads are copied to the host. Otherwise it is held as host numpy (a CPU
    array's buffer, no copy).
    """
    keep = isinstance(value, jax.Array) and keep_on_device(_on_accelerator(value))
    out.setdefault(owner, {})[name] = value if keep else np.asarray(value)
    if tokens is not None and isinstance(value, jax.Array):
        tokens.setdefault(owner, {})[name] = ParamToken(("jax", id(value)), value)


def _on_accelerator(value: jax.Array) -> bool:
    try:
        return any(d.platform != "cpu" for d in value.devices())
    except Exception:  # a tracer or a deleted buffer: no device to name
        return False


def to_jax_inputs(inputs: Any, name: str = "inputs") -> tuple[tuple, dict]:
    """Turn a dict / tuple / single array of numpy, torch or JAX arrays into (args, kwargs) of JAX arrays.

    Values that are not arrays (flags, strings, None) are passed through.
    """

    def conv(v: Any) -> Any:
        if type(v).__module__.startswith("torch"):
            from ._torch import to_numpy

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


def _numpy_dtype(dtype: Any) -> Any:
    """A numpy dtype for a numpy, JAX or torch dtype (``torch.bfloat16`` -> ``ml_dtypes.bfloat16``)."""
    if type(dtype).__module__.startswith("torch"):
        name = str(dtype).removeprefix("torch.")
        if name == "bfloat16":
            import ml_dtypes

            return ml_dtypes.bfloat16
        return np.dtype(name)
    return dtype


def shape_placeholder(shape: tuple, dtype: Any) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that takes no memory.

    Floats are NaN, so a placeholder never passes for real values.
    """
    dtype = np.dtype(_numpy_dtype(dtype))
    fill = np.nan if dtype.kind in "fc" or dtype.name == "bfloat16" else 0
    return np.broadcast_to(np.array(fill, dtype=dtype), tuple(shape))


def to_host(v: Any) -> np.ndarray:
    """A value returned from a run as numpy (a placeholder for a ``jax.ShapeDtypeStruct``)."""
    if isinstance(v, jax.ShapeDtypeStruct):
        return shape_placeholder(v.shape, v.dtype)
    return np.asarray(v)


def device_mode() -> bool:
    """Whether a JAX capture keeps its activations as ``jax.Array`` where they were computed.

    On by default when JAX's default backend is an accelerator; ``XFDIFF_DEVICE_STATS``
    forces it either way (see :func:`~xfdiff.capture._common.keep_on_device`).
    """
    return keep_on_device(jax.default_backend() != "cpu")


def keep(v: Any, on_device: bool) -> Any:
    """A recorded value: the ``jax.Array`` itself on the device path, else its host copy (:func:`to_host`)."""
    if on_device and isinstance(v, jax.Array):
        return v
    return to_host(v)
