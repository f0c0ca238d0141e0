"""The torch backend: the statistics as torch ops on the tensors' own device (CPU or CUDA).

Only per-block scalars and the small summaries (histogram counts on the fine
grid, per-channel maxima, the pooled heatmap rows, the worst elements, the
scatter sample) are copied to the host; the tensors stay where they are.
The arithmetic mirrors the compiled host pass (:mod:`~xfdiff.stats._numba`):

- float32 element work (half precisions upcast; float64 kept as float64),
  the four sums over float64 values and differences, the cosine from the
  cancellation-free formula of :func:`~xfdiff.stats.common.stats_from`;
- ``log10 |error|`` taken in float64, so the histogram lands in the numpy
  reference's bins;
- tensors cut into blocks of rows of at most :data:`~xfdiff.stats.common.BLOCK`
  elements, so a call's temporaries stay small.

A pair of a tensor and a numpy array is measured on the tensor's device;
tensors on two devices meet on the reference's. Complex and integer tensors,
numpy bfloat16, and empty tensors are declined (the numpy backend reads them
on the host).
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

import numpy as np

from . import common
from .common import FINE, HEATMAP_MAX, LOG_LO, N_FINE, WORST_K, pool_bins

NAME = "torch"


def _torch():
    return sys.modules.get("torch")


def _as_tensors(ref: Any, port: Any):
    """Both sides as tensors on one device (the first tensor's), or ``None`` when this backend declines."""
    torch = _torch()
    if torch is None:
        return None
    dev = next((x.device for x in (ref, port) if isinstance(x, torch.Tensor)), None)
    if dev is None:
        return None
    out = []
    for x in (ref, port):
        if not isinstance(x, torch.Tensor):
            if not (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
                return None
            x = np.ascontiguousarray(x)
            if x.flags.writeable:
                x = torch.from_numpy(x)
            else:  # only read here: torch's warning about read-only arrays does not apply
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    x = torch.from_numpy(x)
        if not x.dtype.is_floating_point:
            return None
        out.append(x.detach().to(dev))
    r, p = out
    if tuple(r.shape) != tuple(p.shape) or r.numel() == 0:
        return None
    return r, p


def _work_dtype(r, p):
    torch = _torch()
    return torch.float64 if torch.float64 in (r.dtype, p.dtype) else torch.float32


@functools.lru_cache(maxsize=64)
def _device_bins(rows: int, device: str):
    torch = _torch()
    return torch.tensor(pool_bins(rows, HEATMAP_MAX), device=device)


def _stats_part(x, y, atol: float, rtol: float):
    """One block's statistics as one float64 vector (one transfer)."""
    torch = _torch()
    fin_r, fin_p = torch.isfinite(x), torch.isfinite(y)
    both = fin_r & fin_p
    same_nf = ~fin_r & ~fin_p & ((torch.isnan(x) & torch.isnan(y)) | (x == y))
    rr, pp = torch.where(both, x, 0.0), torch.where(both, y, 0.0)
    ad, ar = (pp - rr).abs(), rr.abs() * rtol
    f64 = torch.float64
    r64, p64 = rr.to(f64), pp.to(f64)
    d64 = p64 - r64  # exact, where the float32 difference of far-apart values rounds
    vec = torch.stack(
        [
            d64.abs().sum(),
            (r64 * r64).sum(),
            (d64 * d64).sum(),
            (p64 * p64).sum(),
            ad.max().to(f64),
            torch.where(both, ad - ar, -torch.inf).max().to(f64),
            (both & (ad > atol + ar)).sum().to(f64),
            both.sum().to(f64),
            (~fin_p).sum().to(f64),
            (~both & ~same_nf).sum().to(f64),
        ]
    )
    v = vec.cpu().numpy()
    return {
        "sums": v[0:4],
        "max_abs": v[4],
        "need": v[5],
        "outside": int(v[6]),
        "n_both": int(v[7]),
        "n_nonfinite": int(v[8]),
        "nf_mismatch": int(v[9]),
    }


def _detail_part(x, y, row_ids, n_row_bins: int) -> dict:
    """One block's detail parts (see :func:`xfdiff.stats.common.detail_from`)."""
    torch = _torch()
    d = (y - x).abs()
    fin = torch.isfinite(d)
    rank = torch.where(fin, d, torch.inf)
    rows, cols = rank.shape
    k = min(WORST_K, rows * cols)
    # The k largest errors lie in the k rows with the largest maxima.
    _, top_rows = torch.topk(rank.amax(1), min(k, rows))
    vals, flat = torch.topk(rank[top_rows].reshape(-1), k)
    ri, ci = top_rows[flat // cols], flat % cols
    pos = fin & (d > 0)
    logd = torch.log10(d[pos].to(torch.float64))
    fine = torch.clamp(torch.floor((logd - LOG_LO) * FINE), 0, N_FINE - 1).to(torch.int64)
    row_pool = torch.full((n_row_bins, cols), -torch.inf, dtype=rank.dtype, device=rank.device)
    row_pool.scatter_reduce_(0, row_ids[:, None].expand(-1, cols), rank, "amax")
    has_pos = logd.numel() > 0
    return {
        "worst_val": vals.cpu().numpy(),
        "worst_row": ri.cpu().numpy(),
        "worst_col": ci.cpu().numpy(),
        "worst_ref": x[ri, ci].cpu().numpy(),
        "worst_port": y[ri, ci].cpu().numpy(),
        "log_min": float(logd.min()) if has_pos else np.inf,
        "log_max": float(logd.max()) if has_pos else -np.inf,
        "fine_counts": torch.bincount(fine, minlength=N_FINE).cpu().numpy(),
        "n_exact": int((fin & (d == 0)).sum()),
        "col_max": rank.amax(0).cpu().numpy(),
        "row_pool": row_pool.cpu().numpy(),
    }


# --- the backend interface (see xfdiff.stats.dispatch) ------------------------------------


def compare(ref: Any, port: Any, atol: float, rtol: float, detail: bool, seed: int):
    """``(Stats, detail or None)`` computed on the tensors' device, or ``None`` to decline."""
    pair = _as_tensors(ref, port)
    if pair is None:
        return None
    torch = _torch()
    r, p = pair
    shape = tuple(r.shape)
    rows, cols = common.shape2d(shape)
    wd = _work_dtype(r, p)
    r2, p2 = r.reshape(rows, cols), p.reshape(rows, cols)
    row_ids = _device_bins(rows, str(r.device)) if detail else None
    stat_parts, det_parts = [], []
    with torch.no_grad():
        for a, b in common.blocks(rows, cols, False, common.BLOCK):
            x, y = r2[a:b].to(wd), p2[a:b].to(wd)
            stat_parts.append(_stats_part(x, y, atol, rtol))
            if detail:
                det_parts.append((a, _detail_part(x, y, row_ids[a:b], min(rows, HEATMAP_MAX))))
    stats = common.stats_from(stat_parts, rows * cols)
    if not detail:
        return stats, None
    flat_r, flat_p = r.reshape(-1), p.reshape(-1)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = torch.as_tensor(idx, device=r.device)
        return (
            flat_r[i].to(torch.float32).cpu().numpy(),
            flat_p[i].to(torch.float32).cpu().numpy(),
        )

    return stats, common.detail_from(det_parts, shape, seed, gather)


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float] | None:
    """``(numel, sum, sum of squares, min, max)`` on the tensor's device, non-finite values as 0."""
    torch = _torch()
    if torch is None or not isinstance(a, torch.Tensor) or not a.dtype.is_floating_point or a.numel() == 0:
        return None
    with torch.no_grad():
        x = a.detach().reshape(-1)
        x = torch.where(torch.isfinite(x), x, 0).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        v = torch.stack(
            [x.sum(dtype=torch.float64), (x * x).sum(dtype=torch.float64), x.min().double(), x.max().double()]
        )
        s1, s2, lo, hi = v.cpu().tolist()
    return int(a.numel()), s1, s2, lo, hi


def max_abs_diff(a: Any, b: Any) -> float | None:
    """``max |a - b|`` in float32 (NaN when either holds NaN), on the tensors' device."""
    pair = _as_tensors(a, b)
    if pair is None:
        return None
    torch = _torch()
    x, y = pair
    with torch.no_grad():
        return float((x.to(torch.float32) - y.to(torch.float32)).abs().max())
