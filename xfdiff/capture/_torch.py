"""Tensor <-> numpy conversions shared by every adapter that meets a PyTorch tensor.

Imported only where a torch tensor is already at hand (the user imported torch).
"""

from __future__ import annotations

import numpy as np
import torch

# dtypes whose CPU tensors numpy reads as they are (complex ones may carry a conjugate bit)
_PLAIN = frozenset(
    {
        torch.float32,
        torch.float64,
        torch.float16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Copy a tensor to numpy (bfloat16 becomes ml_dtypes.bfloat16)."""
    if type(t) is torch.Tensor and t.is_cpu and t.dtype in _PLAIN and not t.requires_grad:
        return t.numpy().copy()  # the common case: a plain CPU activation
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.to(torch.float32).cpu().numpy().astype(ml_dtypes.bfloat16)
    if t.device.type == "cpu":
        return t.numpy().copy()
    return t.cpu().numpy()  # the transfer is the copy


def from_numpy(a: np.ndarray, like: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor holding a copy of ``a`` (bfloat16 kept), with ``like``'s dtype and device when given."""
    if not isinstance(a, np.ndarray) and hasattr(a, "__dlpack__"):  # a device value: no trip through the host
        from ..stats.meet import to_torch

        t = to_torch(a).clone()
        return t if like is None else t.to(dtype=like.dtype, device=like.device)
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(a).copy())
    if like is not None:
        t = t.to(dtype=like.dtype, device=like.device)
    return t
