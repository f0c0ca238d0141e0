"""Where a torch tensor and a JAX array meet: one device, without the host when it can be helped.

A comparison whose two sides were captured on devices (a torch model on
``cuda:0``, a Flax port on JAX's GPU) is measured where the values are:

- same device: the JAX side is handed to torch through DLPack (no copy),
  and the torch backend reduces the pair;
- two devices: the side on the CPU moves once to the accelerator of the
  other (DLPack to the CPU framework, then one device copy);
- DLPack refuses (an exotic dtype, a layout the other framework cannot
  take): that one value goes through the host.

:func:`to_host` is the one door to host memory for device values; it counts
what passes (:func:`moves`), so a test can check that a clean comparison
moves nothing and a buggy one only the rows it reads.

Frameworks are imported inside the functions, only when a value of theirs
is at hand.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

from .common import kind_of

_LOCK = threading.Lock()
_MOVES = {"host_values": 0, "host_bytes": 0, "device_values": 0, "host_fallbacks": 0}


def moves() -> dict[str, int]:
    """Counters since the last :func:`reset_moves`: values copied to the host (and their bytes), values
    copied between devices, and DLPack refusals that went through the host."""
    with _LOCK:
        return dict(_MOVES)


def reset_moves() -> None:
    with _LOCK:
        for k in _MOVES:
            _MOVES[k] = 0


def _count(what: str, nbytes: int = 0) -> None:
    with _LOCK:
        _MOVES[what] += 1
        if what == "host_values":
            _MOVES["host_bytes"] += int(nbytes)


def _nbytes(a: Any) -> int:
    n = getattr(a, "nbytes", None)
    if n is None and hasattr(a, "element_size"):
        n = a.element_size() * a.numel()
    return int(n or 0)


def device_of(a: Any) -> tuple[str, int] | None:
    """``(platform, index)`` of the device holding ``a``: ``("cpu", 0)`` for numpy, ``("cuda", 0)`` ...

    ``None`` for a JAX array spread over several devices (it is not handed over whole).
    """
    kind = kind_of(a)
    if kind == "torch":
        d = a.device
        return (d.type, d.index or 0)
    if kind == "jax":
        devs = a.devices()
        if len(devs) != 1:
            return None
        d = next(iter(devs))
        platform = "cuda" if d.platform == "gpu" else d.platform
        return (platform, 0 if platform == "cpu" else int(getattr(d, "local_hardware_id", None) or d.id or 0))
    return ("cpu", 0)


# --- host ---------------------------------------------------------------------------------


def to_host(a: Any) -> Any:
    """``a`` as a host numpy array (counted when it was a device value); non-arrays as they are.

    bfloat16 tensors keep their dtype (numpy's ``ml_dtypes.bfloat16``).
    """
    kind = kind_of(a)
    if kind == "numpy":
        return a
    _count("host_values", _nbytes(a))
    if kind == "torch":
        return _torch_numpy(a)
    return np.asarray(a)


def host_dict(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with each value on the host (:func:`to_host`): a module's parameters for a check that reads them."""
    return {k: to_host(v) for k, v in d.items()}


def concat_last(arrays: list[Any]) -> Any:
    """``arrays`` joined along their last axis where they live (torch or JAX), else on the host."""
    kinds = {kind_of(a) for a in arrays}
    if kinds == {"torch"}:
        return sys.modules["torch"].cat(arrays, dim=-1)
    if kinds == {"jax"}:
        import jax.numpy as jnp

        return jnp.concatenate(arrays, axis=-1)
    return np.concatenate([to_host(a) for a in arrays], axis=-1)


def numel(a: Any) -> int:
    """Element count of a numpy array, torch tensor or JAX array, wherever it lives (no copy)."""
    return math.prod(np.shape(a))


def _torch_numpy(t: Any) -> np.ndarray:
    torch = sys.modules["torch"]
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    t = t.cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# --- torch <-> JAX ------------------------------------------------------------------------


def to_torch(a: Any, device: Any = None) -> Any:
    """``a`` as a torch tensor (on ``device`` when given): a JAX array through DLPack without a copy
    where the two frameworks share its device, else through the host."""
    import torch

    kind = kind_of(a)
    if kind == "torch":
        t = a
    elif kind == "jax":
        try:
            t = torch.from_dlpack(a)
        except Exception:  # a dtype or device DLPack does not carry: one copy through the host
            _count("host_fallbacks")
            t = _numpy_torch(to_host(a))
    else:
        t = _numpy_torch(np.asarray(a))
    if device is not None and t.device != torch.device(device):
        _count("device_values")
        t = t.to(device)
    return t


def _numpy_torch(x: np.ndarray) -> Any:
    import torch

    x = np.ascontiguousarray(x)
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy() if not x.flags.writeable else x)


def to_jax(a: Any, device: Any = None) -> Any:
    """``a`` as a ``jax.Array`` (on the JAX ``device`` when given): a torch tensor through DLPack
    without a copy where JAX can take its device (made contiguous first), else through the host."""
    import jax
    import jax.numpy as jnp

    kind = kind_of(a)
    if kind == "jax":
        x = a
    elif kind == "torch":
        t = a.detach()
        if t.is_conj():
            t = t.resolve_conj()
        if not t.is_contiguous():
            t = t.contiguous()
        try:
            x = jax.dlpack.from_dlpack(t)
        except Exception:  # a device JAX does not run on, or a dtype DLPack does not carry
            _count("host_fallbacks")
            x = jnp.asarray(to_host(t))
    else:
        x = jnp.asarray(a)
    if device is not None and device not in x.devices():
        _count("device_values")
        x = jax.device_put(x, device)
    return x


def _jax_device_for(place: tuple[str, int]) -> Any:
    """The JAX device at ``(platform, index)``, or None when JAX has none there."""
    import jax

    platform, index = place
    try:
        devs = jax.devices("gpu" if platform == "cuda" else platform)
    except RuntimeError:
        return None
    for d in devs:
        if int(getattr(d, "local_hardware_id", None) or d.id or 0) == index:
            return d
    return devs[0] if devs else None


def meet(ref: Any, port: Any) -> tuple[Any, Any]:
    """The pair as two values of one framework on one device, ready for that framework's backend.

    A torch tensor and a JAX array on one device become two tensors (the JAX
    side through DLPack). On two devices the CPU side moves to the other's
    accelerator once. Pairs of one framework, or with a numpy side, are
    returned as they are (the backends take those).
    """
    kr, kp = kind_of(ref), kind_of(port)
    if kr == kp or "numpy" in (kr, kp):
        return ref, port
    t, j = (ref, port) if kr == "torch" else (port, ref)
    dt, dj = device_of(t), device_of(j)
    if dj is None:  # a sharded JAX array: bring the tensor to JAX
        t2, j2 = to_jax(t), j
    elif dt == dj:
        t2, j2 = t, to_torch(j)
    elif dj[0] == "cpu":  # the JAX side is on the CPU: it moves to the tensor's accelerator
        t2, j2 = t, to_torch(j, device=t.device)
    else:  # the tensor is on the CPU (or another accelerator): it moves to JAX's device
        t2, j2 = to_jax(t, device=_jax_device_for(dj)), j
    return (t2, j2) if kr == "torch" else (j2, t2)
