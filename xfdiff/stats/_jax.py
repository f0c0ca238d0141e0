"""The JAX backend: the statistics as fused, jitted XLA computations, run where the data lives.

The numpy reference makes a dozen passes over float64 copies of both arrays;
these kernels compute the same :class:`~xfdiff.stats.common.Stats` and detail
over float32 (half precisions are upcast), reading each array a few times.

- Arrays are viewed as ``(rows, channels)`` (channels = last axis) and
  processed in blocks of rows of at most :data:`~xfdiff.stats.common.BLOCK`
  elements, so the kernel's temporaries stay small however large the
  activation (a 2,048 x 32,000 logits array included). Blocks combine
  exactly: sums add, maxima take the max, the worst elements merge.
- Sums are taken per row in float32 and added in float64 on the host; the
  cosine uses a cancellation-free formula, so it stays exact near 1.
- The error histogram is binned on the fixed fine grid and rebinned to the
  40 whole-decade bins on the host (:func:`~xfdiff.stats.common.histogram`).
- A JAX array sharded over several devices is reduced in place, in one
  block: XLA partitions the reductions and only per-row partials and the
  small summaries come back to the host. The full array is never gathered
  to the host (the detail's pooling may move the error array between devices).
- Only float32/bfloat16/float16 pairs are taken, numpy ones from
  :data:`~xfdiff.stats.common.MIN_FAST` elements on, and only when JAX is
  already imported (``compare`` always has a Flax side); the rest is declined.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from . import common
from .common import FAST_DTYPES, FINE, HEATMAP_MAX, LOG_LO, MAX_INT32, MIN_FAST, N_FINE, WORST_K, dtype_name, pool_bins

NAME = "jax"


def is_jax_array(a: Any) -> bool:
    """True for a ``jax.Array`` (without importing jax when nobody else has)."""
    if "jax" not in sys.modules:
        return False
    import jax

    return isinstance(a, jax.Array)


def takes(ref: Any, port: Any) -> bool:
    """Whether the kernels measure the pair: same shape, float32 or lower, and big enough.

    JAX arrays always qualify, so a sharded activation is reduced where it lives.
    """
    if "jax" not in sys.modules:
        return False
    shape = tuple(getattr(ref, "shape", ()))
    if shape != tuple(getattr(port, "shape", ())):
        return False
    size = int(np.prod(shape)) if shape else 1
    if size == 0 or size > MAX_INT32 // 2:
        return False
    if dtype_name(ref) not in FAST_DTYPES or dtype_name(port) not in FAST_DTYPES:
        return False
    return size >= MIN_FAST or is_jax_array(ref) or is_jax_array(port)


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
        fine = jnp.clip(jnp.floor((logd - LOG_LO) * FINE), 0, N_FINE - 1).astype(i32)
        fine = jnp.where(pos, fine, N_FINE)
        return {
            "worst_val": vals,
            "worst_row": ri,
            "worst_col": ci,
            "worst_ref": r[ri, ci],
            "worst_port": p[ri, ci],
            "log_min": jnp.min(jnp.where(pos, logd, jnp.inf)),
            "log_max": jnp.max(jnp.where(pos, logd, -jnp.inf)),
            "fine_counts": jnp.zeros(N_FINE + 1, i32).at[fine.reshape(-1)].add(1)[:N_FINE],
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


# --- the backend interface (see xfdiff.stats.dispatch) ------------------------------------


def compare(ref: Any, port: Any, atol: float, rtol: float, detail: bool, seed: int):
    """``(Stats, detail or None)`` from the fused kernels, or ``None`` to decline (see :func:`takes`)."""
    if not takes(ref, port):
        return None
    return compare_fused(ref, port, atol, rtol, detail=detail, seed=seed)


def compare_fused(ref: Any, port: Any, atol: float, rtol: float, detail: bool = True, seed: int = 0):
    """The statistics (and detail) of a float32-or-lower pair of one shape, block by block.

    Args:
        ref, port: arrays of equal shape (numpy or JAX, possibly sharded).
        atol, rtol: the tolerance of the comparison.
        detail: also compute the small per-layer summary arrays.
        seed: seed of the scatter sample.

    Returns:
        ``(Stats, detail_dict_or_None)``.
    """
    kernel = _kernels()[0]
    shape = tuple(np.shape(ref))
    rows, cols = common.shape2d(shape)
    r2, p2 = ref.reshape(rows, cols), port.reshape(rows, cols)
    row_bin, n_row_bins = pool_bins(rows, HEATMAP_MAX), min(rows, HEATMAP_MAX)
    parts = []
    for a, b in common.blocks(rows, cols, is_jax_array(ref) or is_jax_array(port), common.BLOCK):
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
    stats = common.stats_from([g for _, g in parts], rows * cols)
    if not detail:
        return stats, None
    return stats, common.detail_from([(a, g["detail"]) for a, g in parts], shape, seed, _gatherer(ref, port))


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float] | None:
    """``(numel, sum, sum of squares, min, max)`` with non-finite values as 0; ``None`` to decline."""
    return fingerprint_fused(a) if takes(a, a) else None


def fingerprint_fused(a: Any) -> tuple[int, float, float, float, float]:
    """:func:`fingerprint_sums` from the fused kernel, block by block, for any float array."""
    kernel = _kernels()[1]
    rows, cols = common.shape2d(tuple(np.shape(a)))
    a2 = a.reshape(rows, cols)
    s1 = s2 = 0.0
    lo, hi = np.inf, -np.inf
    for r0, r1 in common.blocks(rows, cols, is_jax_array(a), common.BLOCK):
        sums, b_lo, b_hi = kernel(a2[r0:r1])
        sums = np.asarray(sums, dtype=np.float64)
        s1, s2 = s1 + float(sums[0].sum()), s2 + float(sums[1].sum())
        lo, hi = min(lo, float(b_lo)), max(hi, float(b_hi))
    return rows * cols, s1, s2, lo, hi


def max_abs_diff(a: Any, b: Any) -> float | None:
    """``max |a - b|`` in float32 (NaN when either holds NaN); ``None`` to decline.

    A transposed view (a weight compared with its transposed port) is passed
    as its contiguous base and transposed inside the kernel, which is several
    times faster than numpy's strided subtraction.
    """
    if not takes(a, b):
        return None
    kernel = _kernels()[3]
    transposed = isinstance(a, np.ndarray) and a.ndim == 2 and not a.flags.c_contiguous and a.T.flags.c_contiguous
    return float(kernel(a.T if transposed else a, b, transposed=transposed))


def _gatherer(ref: Any, port: Any):
    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
            return ref.reshape(-1)[idx].astype(np.float32), port.reshape(-1)[idx].astype(np.float32)
        r, p = _kernels()[2](ref, port, idx.astype(np.int32))
        return np.asarray(r), np.asarray(p)

    return gather


def _to_host(tree: dict) -> dict:
    return {k: (_to_host(v) if isinstance(v, dict) else np.asarray(v)) for k, v in tree.items()}
