"""Error statistics as fused JAX computations, run where the data lives.

:mod:`xfdiff.metrics` is the reference implementation (pure numpy, float64).
On large activations it makes a dozen passes over float64 copies of both
arrays; this module computes the same :class:`~xfdiff.metrics.Stats` and
:func:`~xfdiff.metrics.error_detail` summary with jitted XLA computations over
float32 (half precisions are upcast), which read each array a few times.

Design notes:

- Arrays are viewed as ``(rows, channels)`` (channels = last axis, as in
  ``error_detail``) and processed in blocks of rows of at most
  :data:`BLOCK` elements, so the kernel's temporaries stay small however
  large the activation (a 2,048 x 32,000 logits array included). Blocks
  combine exactly: sums add, maxima take the max, the worst elements merge.
- Sums are taken per row in float32 and added in float64 on the host; the
  cosine uses a cancellation-free formula, so it stays exact near 1.
- The error histogram is first binned on a fixed grid of :data:`FINE` bins
  per decade of ``log10 |error|``; since ``error_detail``'s 40 bins span
  whole decades, each of its bins is a run of fine bins, and rebinning gives
  the same counts without a second pass.
- A JAX array sharded over several devices is reduced in place, in one
  block: XLA partitions the reductions and only per-row partials and the
  small summaries come back to the host. The full array is never gathered
  to the host (the detail's pooling may move the error array between devices).
- Only float32/bfloat16/float16 arrays take this path, numpy ones from
  :data:`MIN_FAST` elements on, and only when JAX is already imported
  (``compare`` always has a Flax side). Everything else stays on numpy.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import numpy as np

from .metrics import HEATMAP_MAX, HIST_BINS, PROFILE_MAX, SCATTER_MAX, WORST_K, Stats, compare_arrays, error_detail

#: numpy arrays smaller than this go through the numpy path (jit dispatch costs more).
MIN_FAST = 1 << 15
#: Elements per kernel call; bounds the temporaries of one call (16 MiB of float32).
BLOCK = 1 << 22
#: Histogram bins per decade of |error| on the fixed grid, and the grid's range (float32 spans it).
FINE = 200
LOG_LO, LOG_HI = -46, 39
_N_FINE = (LOG_HI - LOG_LO) * FINE
_FAST_DTYPES = ("float32", "bfloat16", "float16")
_MAX_INT32 = 2**31 - 1


def _dtype_name(a: Any) -> str:
    return np.dtype(a.dtype).name if hasattr(a, "dtype") else ""


def is_jax_array(a: Any) -> bool:
    """True for a ``jax.Array`` (without importing jax when nobody else has)."""
    if "jax" not in sys.modules:
        return False
    import jax

    return isinstance(a, jax.Array)


def usable(ref: Any, port: Any) -> bool:
    """Whether ``ref``/``port`` take the fused path: same shape, float32 or lower, and big enough.

    JAX arrays always qualify, so a sharded activation is reduced where it lives.
    """
    if "jax" not in sys.modules:
        return False
    shape = tuple(getattr(ref, "shape", ()))
    if shape != tuple(getattr(port, "shape", ())):
        return False
    size = int(np.prod(shape)) if shape else 1
    if size == 0 or size > _MAX_INT32 // 2:
        return False
    if _dtype_name(ref) not in _FAST_DTYPES or _dtype_name(port) not in _FAST_DTYPES:
        return False
    return size >= MIN_FAST or is_jax_array(ref) or is_jax_array(port)


def _pool_edges(n: int, out: int) -> np.ndarray | None:
    """Bin edges that max-pool ``n`` positions into ``out`` bins like ``metrics._pool_max``."""
    return None if n <= out else np.linspace(0, n, out + 1).astype(int)


@functools.lru_cache(maxsize=256)
def pool_bins(n: int, out: int) -> np.ndarray:
    """Each of ``n`` positions' bin when max-pooled into ``min(n, out)`` bins (read-only, cached)."""
    edges = _pool_edges(n, out)
    bins = np.arange(n) if edges is None else np.searchsorted(edges, np.arange(n), side="right") - 1
    bins = bins.astype(np.int64)
    bins.flags.writeable = False
    return bins


def _shape2d(shape: tuple) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(np.prod(shape[:-1])), int(shape[-1])


@functools.lru_cache(maxsize=1)
def _kernels():
    """Build the jitted kernels on first use (keeps ``import xfdiff`` free of jax)."""
    import jax
    import jax.numpy as jnp

    f32, i32 = jnp.float32, jnp.int32

    def isfinite(x):
        return jnp.abs(x) < jnp.inf  # false for NaN and +-inf; vectorises better than isfinite on CPU

    def stats_part(r, p, atol, rtol):
        fin_r, fin_p = isfinite(r), isfinite(p)
        both = fin_r & fin_p
        same_nf = ~fin_r & ~fin_p & ((jnp.isnan(r) & jnp.isnan(p)) | (r == p))
        rr, pp = jnp.where(both, r, 0.0), jnp.where(both, p, 0.0)
        ad, ar = jnp.abs(pp - rr), jnp.abs(rr)
        count = functools.partial(jnp.sum, dtype=i32)
        return {
            "sums": jnp.stack([ad.sum(1), (rr * rr).sum(1), ((pp - rr) ** 2).sum(1), (pp * pp).sum(1)]),
            "max_abs": ad.max(),
            "need": jnp.max(jnp.where(both, ad - rtol * ar, -jnp.inf)),
            "outside": count(both & (ad > atol + rtol * ar)),
            "n_both": count(both),
            "n_nonfinite": count(~fin_p),
            "nf_mismatch": count(~both & ~same_nf),
        }

    def detail_part(r, p, row_ids, n_row_bins):
        d = jnp.abs(p - r)
        fin = isfinite(d)
        rank = jnp.where(fin, d, jnp.inf)
        rows, cols = rank.shape
        k = min(WORST_K, rows * cols)
        # The k largest elements lie in the k rows with the largest maxima: rank rows by
        # their max (one reduction), then search only those rows.
        _, top_rows = jax.lax.top_k(rank.max(1), min(k, rows))
        vals, flat = jax.lax.top_k(rank[top_rows].reshape(-1), k)
        ri, ci = top_rows[flat // cols], flat % cols
        pos = fin & (d > 0)
        logd = jnp.log10(jnp.where(pos, d, 1.0))
        fine = jnp.clip(jnp.floor((logd - LOG_LO) * FINE), 0, _N_FINE - 1).astype(i32)
        fine = jnp.where(pos, fine, _N_FINE)
        return {
            "worst_val": vals,
            "worst_row": ri,
            "worst_col": ci,
            "worst_ref": r[ri, ci],
            "worst_port": p[ri, ci],
            "log_min": jnp.min(jnp.where(pos, logd, jnp.inf)),
            "log_max": jnp.max(jnp.where(pos, logd, -jnp.inf)),
            "fine_counts": jnp.zeros(_N_FINE + 1, i32).at[fine.reshape(-1)].add(1)[:_N_FINE],
            "n_exact": jnp.sum(fin & (d == 0), dtype=i32),
            "col_max": rank.max(0),
            "row_pool": jax.ops.segment_max(rank, row_ids, num_segments=n_row_bins, indices_are_sorted=True),
        }

    @functools.partial(jax.jit, static_argnames=("detail", "n_row_bins"))
    def compare_kernel(r, p, atol, rtol, row_ids, detail, n_row_bins):
        r2, p2 = r.astype(f32), p.astype(f32)
        out = stats_part(r2, p2, atol, rtol)
        if detail:
            out["detail"] = detail_part(r2, p2, row_ids, n_row_bins)
        return out

    @jax.jit
    def fingerprint_kernel(x):
        x2 = x.astype(f32)
        x2 = jnp.where(isfinite(x2), x2, 0.0)
        return jnp.stack([x2.sum(1), (x2 * x2).sum(1)]), x2.min(), x2.max()

    @functools.partial(jax.jit, static_argnames=("transposed",))
    def max_diff_kernel(a, b, transposed):
        a = a.T if transposed else a
        return jnp.max(jnp.abs(a.astype(f32) - b.astype(f32)))  # NaN anywhere gives NaN

    @jax.jit
    def gather_kernel(r, p, flat_idx):
        r1, p1 = r.reshape(-1), p.reshape(-1)
        return r1[flat_idx].astype(f32), p1[flat_idx].astype(f32)

    return compare_kernel, fingerprint_kernel, gather_kernel, max_diff_kernel


_POOL: list = []


def parallel_map(fn, items) -> list:
    """``[fn(x) for x in items]`` on a small pool of threads, in order.

    A row's measurement is mostly a compiled pass (numba or XLA) that runs
    without the GIL, so a second thread does one row's pass while the other
    does the next row's Python work (about a fifth less time for the rows of
    a 12-layer Llama on two cores). An exception in ``fn`` is raised here, as
    in the loop.
    """
    items = list(items)
    workers = min(4, os.cpu_count() or 1)
    if workers < 2 or len(items) < 8:
        return [fn(x) for x in items]
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xfdiff-measure"))
    return list(_POOL[0].map(fn, items))


def max_abs_diff(a: Any, b: Any) -> float:
    """``max |a - b|`` in float32 (NaN when either holds NaN).

    A transposed view (a weight compared with its transposed port) is passed
    as its contiguous base and transposed inside the kernel, which is several
    times faster than numpy's strided subtraction.
    """
    kernel = _kernels()[3]
    transposed = isinstance(a, np.ndarray) and a.ndim == 2 and not a.flags.c_contiguous and a.T.flags.c_contiguous
    return float(kernel(a.T if transposed else a, b, transposed=transposed))


def _blocks(rows: int, cols: int, whole: bool):
    """Row ranges of at most :data:`BLOCK` elements (one range when ``whole``)."""
    step = rows if whole else max(1, BLOCK // max(cols, 1))
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def _as2d(a: Any, rows: int, cols: int) -> Any:
    return a.reshape(rows, cols)


def compare_fast(ref: Any, port: Any, atol: float, rtol: float, detail: bool = True, seed: int = 0):
    """:func:`metrics.compare_arrays` (and :func:`metrics.error_detail`) with fused kernels.

    Finite float32 numpy arrays up to :data:`BLOCK` elements (almost every
    activation) are measured on the host by :mod:`xfdiff.hostmetrics` when
    numba is installed: a jit dispatch costs more than the arithmetic there.

    Args:
        ref, port: arrays of equal shape (numpy or JAX, possibly sharded),
            float32 or a half precision.
        atol, rtol: the tolerance of the comparison.
        detail: also compute the small per-layer summary arrays.
        seed: seed of the scatter sample (as in ``error_detail``).

    Returns:
        ``(Stats, detail_dict_or_None)``.
    """
    kernel = _kernels()[0]
    shape = tuple(np.shape(ref))
    rows, cols = _shape2d(shape)
    r2, p2 = _as2d(ref, rows, cols), _as2d(port, rows, cols)
    if _host_ok(r2, p2):
        done = _compare_host(r2, p2, atol, rtol, detail, shape, seed)
        if done is not None:
            return done
    row_bin, n_row_bins = pool_bins(rows, HEATMAP_MAX), min(rows, HEATMAP_MAX)
    parts = []
    for a, b in _blocks(rows, cols, whole=is_jax_array(ref) or is_jax_array(port)):
        out = kernel(
            r2[a:b],
            p2[a:b],
            np.float32(atol),
            np.float32(rtol),
            row_bin[a:b].astype(np.int32),
            detail=detail,
            n_row_bins=n_row_bins,
        )
        parts.append((a, _to_host(out)))
    stats = _stats_from([g for _, g in parts], rows * cols)
    if not detail:
        return stats, None
    return stats, _detail_from(parts, shape, cols, ref, port, seed)


def _host_ok(r2: Any, p2: Any) -> bool:
    if not (
        isinstance(r2, np.ndarray)
        and isinstance(p2, np.ndarray)
        and r2.dtype == np.float32
        and p2.dtype == np.float32
        and r2.size <= BLOCK
    ):
        return False
    from . import hostmetrics

    return hostmetrics.available()


def _compare_host(r2: np.ndarray, p2: np.ndarray, atol: float, rtol: float, detail: bool, shape: tuple, seed: int):
    """The fused kernel's results from :mod:`xfdiff.hostmetrics` (finite float32 numpy arrays).

    Returns ``None`` when either side holds a non-finite value: the kernel handles those.
    """
    from . import hostmetrics

    got = hostmetrics.measure(r2, p2, atol, rtol, detail, (LOG_LO, FINE, _N_FINE))
    if got is None:
        return None
    sums, max_abs, need, outside, det = got
    rows, cols = r2.shape
    n = rows * cols
    g = {
        "sums": np.asarray(sums, dtype=np.float64).reshape(4, 1),
        "max_abs": max_abs,
        "need": need,
        "outside": outside,
        "n_both": n,
        "n_nonfinite": 0,
        "nf_mismatch": 0,
    }
    stats = _stats_from([g], n)
    if det is None:
        return stats, None
    fine, row_max, heat, profile, first = det
    n_pos = int(fine.sum())
    k = min(WORST_K, n)
    # The k largest errors lie in the k rows with the largest maxima.
    top_rows = np.argpartition(row_max, rows - k)[rows - k :] if rows > k else np.arange(rows)
    sub = np.abs(p2[top_rows] - r2[top_rows]).ravel()
    flat = np.argpartition(sub, sub.size - k)[sub.size - k :] if sub.size > k else np.arange(sub.size)
    ri, ci = top_rows[flat // cols], flat % cols
    parts = {
        "worst_val": sub[flat],
        "worst_row": ri,
        "worst_col": ci,
        "worst_ref": r2[ri, ci],
        "worst_port": p2[ri, ci],
        # Only floor(log_min) is used: the first non-empty fine bin's start has the same floor.
        "log_min": LOG_LO + first / FINE if n_pos else np.inf,
        "log_max": np.log10(np.float64(max_abs)) if n_pos else -np.inf,
        "fine_counts": fine,
        "n_exact": n - n_pos,
        "col_max": profile,
        "row_pool": heat,  # already pooled
    }
    return stats, _detail_from([(0, {"detail": parts})], shape, cols, r2, p2, seed)


def _to_host(tree: dict) -> dict:
    return {k: (_to_host(v) if isinstance(v, dict) else np.asarray(v)) for k, v in tree.items()}


def _stats_from(parts: list[dict], n: int) -> Stats:
    sums = np.concatenate([g["sums"] for g in parts], axis=1).astype(np.float64)
    s_abs, s_rr, s_dd, s_pp = (float(row.sum()) for row in sums)
    n_both = sum(int(g["n_both"]) for g in parts)
    nf_mismatch = sum(int(g["nf_mismatch"]) for g in parts)
    nr, nd, npn = np.sqrt(s_rr), np.sqrt(s_dd), np.sqrt(s_pp)
    rel_l2 = nd / nr if nr > 0 else (0.0 if nd == 0 else float("inf"))
    if nr > 0 and npn > 0:
        # 1 - cos = (|d|^2 - (|r| - |p|)^2) / (2 |r| |p|): no cancellation near cos = 1.
        cosine = 1.0 - (s_dd - (nr - npn) ** 2) / (2.0 * nr * npn)
    else:
        cosine = 1.0 if nd == 0 else 0.0
    need = max(float(g["need"]) for g in parts) if n_both else 0.0
    return Stats(
        max_abs=max(float(g["max_abs"]) for g in parts) if n_both else 0.0,
        mean_abs=s_abs / n_both if n_both else 0.0,
        rel_l2=float(rel_l2),
        cosine=float(np.clip(cosine, -1.0, 1.0)),
        n_nonfinite=sum(int(g["n_nonfinite"]) for g in parts),
        nonfinite_mismatch=nf_mismatch,
        frac_outside=(sum(int(g["outside"]) for g in parts) + nf_mismatch) / n,
        tol_needed=max(need, 0.0) if nf_mismatch == 0 else float("inf"),
        size=n,
    )


def _pool_host(a: np.ndarray, axis: int, out: int) -> np.ndarray:
    """Max-pool ``axis`` into ``out`` bins (the bins of ``metrics._pool_max``).

    Bins differ by at most one element; each short bin repeats its last
    element once, so every bin has the same width and one reshaped max does
    it (``reduceat`` loops per segment and is several times slower).
    """
    edges = _pool_edges(a.shape[axis], out)
    if edges is None:
        return a
    width = int(np.max(np.diff(edges)))
    shape = a.shape[:axis] + (out, width) + a.shape[axis + 1 :]
    if a.shape[axis] != out * width:
        idx = np.minimum(edges[:-1, None] + np.arange(width), edges[1:, None] - 1).ravel()
        a = np.take(a, idx, axis=axis)
    return a.reshape(shape).max(axis=axis + 1)


def _histogram(dets: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """error_detail's 40-bin histogram of log10 |error|, rebinned from the fine grid."""
    lo_val = min(float(d["log_min"]) for d in dets)
    if not np.isfinite(lo_val):
        return None  # no finite non-zero error
    hi_val = max(float(d["log_max"]) for d in dets)
    lo, hi = np.floor(lo_val), np.ceil(hi_val)
    hi = max(hi, lo + 1)
    fine = (
        dets[0]["fine_counts"] if len(dets) == 1 else np.sum([d["fine_counts"] for d in dets], axis=0, dtype=np.int64)
    )
    width = int(round((hi - lo) * FINE / HIST_BINS))  # fine bins per histogram bin: whole decades / 40
    start = int(round((lo - LOG_LO) * FINE))
    stop = start + width * HIST_BINS
    counts = fine[start:stop].reshape(HIST_BINS, width).sum(axis=1)
    counts[-1] += fine[stop:].sum()  # the top edge is inclusive, as in np.histogram
    return np.linspace(lo, hi, HIST_BINS + 1), counts


def _detail_from(parts: list[tuple[int, dict]], shape: tuple, cols: int, ref: Any, port: Any, seed: int) -> dict:
    dets = [g["detail"] for _, g in parts]
    n = int(np.prod(shape)) if shape else 1
    cand = [
        (v, (a + r) * cols + c, rv, pv)
        for a, g in parts
        for v, r, c, rv, pv in zip(
            g["detail"]["worst_val"],
            g["detail"]["worst_row"],
            g["detail"]["worst_col"],
            g["detail"]["worst_ref"],
            g["detail"]["worst_port"],
            strict=True,
        )
    ]
    cand.sort(key=lambda t: -t[0])
    cand = cand[: min(WORST_K, n)]
    worst = np.asarray([int(t[1]) for t in cand], dtype=np.int64)
    out: dict[str, np.ndarray] = {
        "shape": np.asarray(shape, dtype=np.int64),
        "worst_index": worst,
        "worst_ref": np.asarray([t[2] for t in cand], dtype=np.float64),
        "worst_port": np.asarray([t[3] for t in cand], dtype=np.float64),
    }
    hist = _histogram(dets)
    if hist is not None:
        out["hist_edges"], out["hist_counts"] = hist
    out["n_exact"] = np.asarray(sum(int(d["n_exact"]) for d in dets))
    col_max = dets[0]["col_max"] if len(dets) == 1 else np.max([d["col_max"] for d in dets], axis=0)
    row_pool = dets[0]["row_pool"] if len(dets) == 1 else np.max([d["row_pool"] for d in dets], axis=0)
    out["profile"] = _pool_host(col_max, 0, PROFILE_MAX).astype(np.float32)
    out["heatmap"] = _pool_host(row_pool, 1, HEATMAP_MAX).astype(np.float32)
    idx = np.unique(np.concatenate([_sample(n, seed), worst[: min(5, worst.size)]]))
    out["scatter_ref"], out["scatter_port"] = _gather(ref, port, idx)
    return out


@functools.lru_cache(maxsize=256)
def _sample(n: int, seed: int) -> np.ndarray:
    """The scatter plot's sorted sample of flat indices (as ``error_detail`` draws it); same for equal sizes."""
    rng = np.random.default_rng(seed)
    m = min(SCATTER_MAX, n)
    idx = np.sort(rng.choice(n, size=m, replace=False)) if n > m else np.arange(m)
    idx.flags.writeable = False
    return idx


def _gather(ref: Any, port: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return ref.reshape(-1)[idx].astype(np.float32), port.reshape(-1)[idx].astype(np.float32)
    gather = _kernels()[2]
    r, p = gather(ref, port, idx.astype(np.int32))
    return np.asarray(r), np.asarray(p)


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float]:
    """``(numel, sum, sum of squares, min, max)`` of a float array, non-finite values as 0."""
    kernel = _kernels()[1]
    rows, cols = _shape2d(tuple(np.shape(a)))
    a2 = a.reshape(rows, cols)
    s1 = s2 = 0.0
    lo, hi = np.inf, -np.inf
    for r0, r1 in _blocks(rows, cols, whole=is_jax_array(a)):
        sums, b_lo, b_hi = kernel(a2[r0:r1])
        sums = np.asarray(sums, dtype=np.float64)
        s1, s2 = s1 + float(sums[0].sum()), s2 + float(sums[1].sum())
        lo, hi = min(lo, float(b_lo)), max(hi, float(b_hi))
    return rows * cols, s1, s2, lo, hi


def stats_and_detail(r, p, atol: float, rtol: float, detail: bool = False):
    """``(Stats, error_detail or None)``: one fused JAX pass for large float arrays, numpy otherwise."""
    if usable(r, p):
        return compare_fast(r, p, atol, rtol, detail=detail)
    return compare_arrays(r, p, atol, rtol), (error_detail(r, p) if detail else None)
