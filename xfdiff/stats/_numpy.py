"""The numpy backend: the reference implementation, in float64, for any array read on the host.

Every other backend is tested against :func:`compare_arrays` and
:func:`error_detail`, and the dispatcher falls back to this module whenever
no other backend takes a pair (small arrays, float64, integer or complex
values, or no compiled backend installed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import HEATMAP_MAX, HIST_BINS, PROFILE_MAX, WORST_K, Stats, pool_max, sample, to_float64, to_numpy

NAME = "numpy"


def compare_arrays(ref: np.ndarray, port: np.ndarray, atol: float, rtol: float) -> Stats:
    """Statistics of ``port`` against ``ref`` (same size).

    Non-finite values count as agreement only where both sides hold the same
    non-finite value (NaN at the same place, or the same infinity).

    >>> s = compare_arrays(np.ones(4), np.ones(4), 1e-5, 1e-5)
    >>> (s.max_abs, s.cosine, s.frac_outside)
    (0.0, 1.0, 0.0)
    """
    r = to_float64(to_numpy(ref)).ravel()
    p = to_float64(to_numpy(port)).ravel()
    if r.shape != p.shape:
        raise ValueError(f"compare_arrays needs equal sizes, got {np.shape(ref)} and {np.shape(port)}")
    n = r.size
    if n == 0:
        return Stats(0.0, 0.0, 0.0, 1.0, 0, 0, 0.0, 0.0, 0)
    fin_r, fin_p = np.isfinite(r), np.isfinite(p)
    both = fin_r & fin_p
    same_nonfinite = (~fin_r & ~fin_p) & ((np.isnan(r) & np.isnan(p)) | (r == p))
    nonfinite_mismatch = int(np.count_nonzero(~both & ~same_nonfinite))
    n_nonfinite = int(np.count_nonzero(~fin_p))
    d = np.abs(p[both] - r[both])
    ar = np.abs(r[both])
    max_abs = float(d.max()) if d.size else 0.0
    mean_abs = float(d.mean()) if d.size else 0.0
    nr = float(np.linalg.norm(r[both]))
    nd = float(np.linalg.norm(p[both] - r[both]))
    rel_l2 = nd / nr if nr > 0 else (0.0 if nd == 0 else float("inf"))
    npn = float(np.linalg.norm(p[both]))
    if nr > 0 and npn > 0:
        cosine = float(np.real(np.vdot(r[both], p[both])) / (nr * npn))
    else:
        cosine = 1.0 if nd == 0 else 0.0
    outside = int(np.count_nonzero(d > atol + rtol * ar)) + nonfinite_mismatch
    need = float(np.max(d - rtol * ar)) if d.size else 0.0
    return Stats(
        max_abs=max_abs,
        mean_abs=mean_abs,
        rel_l2=rel_l2,
        cosine=float(np.clip(cosine, -1.0, 1.0)),
        n_nonfinite=n_nonfinite,
        nonfinite_mismatch=nonfinite_mismatch,
        frac_outside=outside / n,
        tol_needed=max(need, 0.0) if nonfinite_mismatch == 0 else float("inf"),
        size=n,
    )


def error_detail(ref: np.ndarray, port: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Small arrays that let a viewer draw a layer's error without the tensors.

    Returns ``hist_edges``/``hist_counts`` (log10 |error|), ``heatmap``
    (positions x channels, max-pooled to at most 32x32), ``profile`` (max error
    per channel, at most 256), ``scatter_ref``/``scatter_port`` (a sample),
    ``worst_index`` (flat indices), ``worst_ref``/``worst_port``, ``n_exact``
    and ``shape``.
    """
    r = to_float64(to_numpy(ref))
    p = to_float64(to_numpy(port))
    if r.dtype.kind == "c":
        r, p = np.abs(r), np.abs(p)
    with np.errstate(invalid="ignore"):  # inf - inf where both sides overflowed: handled just below
        d = np.abs(p - r)
    d = np.where(np.isfinite(d), d, np.nan)
    out: dict[str, np.ndarray] = {"shape": np.asarray(r.shape, dtype=np.int64)}
    flat_d = np.nan_to_num(d.ravel(), nan=np.inf)
    if flat_d.size == 0:
        return out
    k = min(WORST_K, flat_d.size)
    worst = np.argpartition(-flat_d, k - 1)[:k]
    worst = worst[np.argsort(-flat_d[worst], kind="stable")]
    out["worst_index"] = worst.astype(np.int64)
    out["worst_ref"] = r.ravel()[worst].astype(np.float64)
    out["worst_port"] = p.ravel()[worst].astype(np.float64)
    fd = d.ravel()[np.isfinite(d.ravel())]
    logd = np.log10(np.maximum(fd, 1e-30))
    logd = logd[fd > 0]
    if logd.size:
        lo, hi = np.floor(logd.min()), np.ceil(logd.max())
        hi = max(hi, lo + 1)
        counts, edges = np.histogram(logd, bins=HIST_BINS, range=(lo, hi))
        out["hist_edges"], out["hist_counts"] = edges, counts.astype(np.int64)
    out["n_exact"] = np.asarray(int(np.count_nonzero(fd == 0)))
    # positions x channels: channels = last axis, positions = everything before.
    d2 = np.nan_to_num(d, nan=np.inf)
    if d2.ndim == 0:
        d2 = d2.reshape(1, 1)
    elif d2.ndim == 1:
        d2 = d2.reshape(1, -1)
    else:
        d2 = d2.reshape(-1, d2.shape[-1])
    out["profile"] = pool_max(d2.max(axis=0), 0, PROFILE_MAX).astype(np.float32)
    out["heatmap"] = pool_max(pool_max(d2, 0, HEATMAP_MAX), 1, HEATMAP_MAX).astype(np.float32)
    flat_r, flat_p = r.ravel(), p.ravel()
    idx = np.unique(np.concatenate([sample(flat_r.size, seed), worst[: min(5, k)]]))
    out["scatter_ref"] = flat_r[idx].astype(np.float32)
    out["scatter_port"] = flat_p[idx].astype(np.float32)
    return out


# --- the backend interface (see xfdiff.stats.dispatch) ------------------------------------


def compare(ref: Any, port: Any, atol: float, rtol: float, detail: bool, seed: int):
    """``(Stats, detail or None)``; never declines."""
    return compare_arrays(ref, port, atol, rtol), (error_detail(ref, port, seed) if detail else None)


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float]:
    """``(numel, sum, sum of squares, min, max)`` in float64, non-finite values as 0."""
    x = np.asarray(to_numpy(a), dtype=np.float64).ravel()
    if x.size == 0:
        return 0, 0.0, 0.0, 0.0, 0.0
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x.size, float(x.sum()), float(np.dot(x, x)), float(x.min()), float(x.max())


def max_abs_diff(a: Any, b: Any) -> float:
    """``max |a - b|`` in float32 (NaN when either holds NaN; 0 for empty arrays)."""
    a, b = to_numpy(a), to_numpy(b)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float32, copy=False) - b.astype(np.float32, copy=False))))


def rel_l2(ref: Any, port: Any) -> float:
    """``|port - ref| / |ref|`` over the elements finite on both sides (a zero ``|ref|`` counts as 1)."""
    a, b = to_float64(to_numpy(ref)), to_float64(to_numpy(port))
    fin = np.isfinite(a) & np.isfinite(b)
    den = float(np.linalg.norm(a[fin])) or 1.0
    return float(np.linalg.norm(a[fin] - b[fin])) / den
