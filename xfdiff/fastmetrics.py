"""Error statistics as one fused JAX computation, run where the data lives.

:mod:`xfdiff.metrics` is the reference implementation (pure numpy, float64).
On large activations it makes a dozen passes over float64 copies of both
arrays; this module computes the same :class:`~xfdiff.metrics.Stats` and
:func:`~xfdiff.metrics.error_detail` summary in one jitted XLA computation
over float32 (half precisions are upcast), which reads each array a few times
from cache instead of a dozen times from memory.

Design notes:

- The arrays are viewed as ``(rows, channels)`` (channels = last axis, as in
  ``error_detail``). Sums are taken per row in float32 and the row partials
  are added in float64 on the host, so relative error stays near 1e-6 and the
  cosine is computed from norms with a cancellation-free formula.
- A JAX array sharded over several devices is reduced in place: XLA
  partitions the reductions and only per-row partials and the small summary
  arrays come back to the host. The full array is never gathered.
- Only float32/bfloat16/float16 arrays of at least :data:`MIN_FAST` elements
  take this path, and only when JAX is already imported (``compare`` always
  has a Flax side). Everything else stays on the numpy reference path.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from .metrics import HEATMAP_MAX, HIST_BINS, PROFILE_MAX, SCATTER_MAX, WORST_K, Stats

#: Arrays smaller than this go through the numpy path (jit dispatch costs more).
MIN_FAST = 1 << 15
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


def _pool_ids(n: int, out: int):
    """Static segment ids that max-pool ``n`` positions into ``out`` bins like ``metrics._pool_max``."""
    if n <= out:
        return None
    edges = np.linspace(0, n, out + 1).astype(int)
    return np.searchsorted(edges, np.arange(n), side="right") - 1


def _as2d(x):
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        return x.reshape(1, -1)
    return x.reshape(-1, x.shape[-1])


@functools.lru_cache(maxsize=1)
def _kernels():
    """Build the jitted kernels on first use (keeps ``import xfdiff`` free of jax)."""
    import jax
    import jax.numpy as jnp

    f32 = jnp.float32

    def pool(a, axis: int, out: int):
        ids = _pool_ids(a.shape[axis], out)
        if ids is None:
            return a
        moved = jnp.moveaxis(a, axis, 0)
        pooled = jax.ops.segment_max(moved, jnp.asarray(ids), num_segments=out, indices_are_sorted=True)
        return jnp.moveaxis(pooled, 0, axis)

    def stats_part(r, p, atol, rtol):
        fin_r, fin_p = jnp.isfinite(r), jnp.isfinite(p)
        both = fin_r & fin_p
        same_nf = ~fin_r & ~fin_p & ((jnp.isnan(r) & jnp.isnan(p)) | (r == p))
        rr, pp = jnp.where(both, r, 0.0), jnp.where(both, p, 0.0)
        ad, ar = jnp.abs(pp - rr), jnp.abs(rr)
        count = functools.partial(jnp.sum, dtype=jnp.int32)
        return {
            "sums": jnp.stack([ad.sum(1), (rr * rr).sum(1), ((pp - rr) ** 2).sum(1), (pp * pp).sum(1)]),
            "max_abs": ad.max(),
            "need": jnp.max(jnp.where(both, ad - rtol * ar, -jnp.inf)),
            "outside": count(both & (ad > atol + rtol * ar)),
            "n_both": count(both),
            "n_nonfinite": count(~fin_p),
            "nf_mismatch": count(~both & ~same_nf),
        }

    def detail_part(r, p):
        d = jnp.abs(p - r)
        fin = jnp.isfinite(d)
        rank = jnp.where(fin, d, jnp.inf)
        rows, cols = rank.shape
        k = min(WORST_K, rows * cols)
        kc = min(k, cols)
        v1, c1 = jax.lax.top_k(rank, kc)  # per row first: stays local to a row-sharded array
        _, flat = jax.lax.top_k(v1.reshape(-1), k)
        ri, ci = flat // kc, c1.reshape(-1)[flat]
        pos = fin & (d > 0)
        logd = jnp.log10(jnp.where(pos, d, 1.0))
        lo = jnp.floor(jnp.min(jnp.where(pos, logd, jnp.inf)))
        hi = jnp.ceil(jnp.max(jnp.where(pos, logd, -jnp.inf)))
        hi = jnp.maximum(hi, lo + 1)
        b = jnp.clip(jnp.floor((logd - lo) / (hi - lo) * HIST_BINS), 0, HIST_BINS - 1).astype(jnp.int32)
        b = jnp.where(pos, b, HIST_BINS)
        counts = jnp.zeros(HIST_BINS + 1, jnp.int32).at[b.reshape(-1)].add(1)[:HIST_BINS]
        return {
            "worst_index": ri * cols + ci, "worst_ref": r[ri, ci], "worst_port": p[ri, ci],
            "lo": lo, "hi": hi, "has_pos": jnp.any(pos), "hist_counts": counts,
            "n_exact": jnp.sum(fin & (d == 0), dtype=jnp.int32),
            "profile": pool(rank.max(0), 0, PROFILE_MAX),
            "heatmap": pool(pool(rank, 0, HEATMAP_MAX), 1, HEATMAP_MAX),
        }

    @functools.partial(jax.jit, static_argnames=("detail",))
    def compare_kernel(r, p, atol, rtol, detail):
        r2, p2 = _as2d(r).astype(f32), _as2d(p).astype(f32)
        out = stats_part(r2, p2, atol, rtol)
        if detail:
            out["detail"] = detail_part(r2, p2)
        return out

    @jax.jit
    def fingerprint_kernel(x):
        x2 = _as2d(x).astype(f32)
        x2 = jnp.where(jnp.isfinite(x2), x2, 0.0)
        return jnp.stack([x2.sum(1), (x2 * x2).sum(1)]), x2.min(), x2.max()

    @jax.jit
    def gather_kernel(r, p, flat_idx):
        r1, p1 = r.reshape(-1), p.reshape(-1)
        return r1[flat_idx].astype(f32), p1[flat_idx].astype(f32)

    return compare_kernel, fingerprint_kernel, gather_kernel


def compare_fast(ref: Any, port: Any, atol: float, rtol: float, detail: bool = True, seed: int = 0):
    """:func:`metrics.compare_arrays` (and :func:`metrics.error_detail`) in one fused computation.

    Args:
        ref, port: arrays of equal shape (numpy or JAX, possibly sharded),
            float32 or a half precision.
        atol, rtol: the tolerance of the comparison.
        detail: also compute the small per-layer summary arrays.
        seed: seed of the scatter sample (as in ``error_detail``).

    Returns:
        ``(Stats, detail_dict_or_None)``.
    """
    kernel, _, _ = _kernels()
    out = kernel(ref, port, np.float32(atol), np.float32(rtol), detail=detail)
    got = {k: v for k, v in out.items() if k != "detail"}
    got = {k: np.asarray(v) for k, v in got.items()}
    stats = _stats_from(got, int(np.prod(np.shape(ref))))
    if not detail:
        return stats, None
    det = {k: np.asarray(v) for k, v in out["detail"].items()}
    return stats, _detail_from(det, ref, port, seed)


def _stats_from(g: dict, n: int) -> Stats:
    s_abs, s_rr, s_dd, s_pp = (float(np.sum(row, dtype=np.float64)) for row in g["sums"])
    n_both, nf_mismatch = int(g["n_both"]), int(g["nf_mismatch"])
    nr, nd, npn = np.sqrt(s_rr), np.sqrt(s_dd), np.sqrt(s_pp)
    rel_l2 = nd / nr if nr > 0 else (0.0 if nd == 0 else float("inf"))
    if nr > 0 and npn > 0:
        # 1 - cos = (|d|^2 - (|r| - |p|)^2) / (2 |r| |p|): no cancellation near cos = 1.
        cosine = 1.0 - (s_dd - (nr - npn) ** 2) / (2.0 * nr * npn)
    else:
        cosine = 1.0 if nd == 0 else 0.0
    need = float(g["need"]) if n_both else 0.0
    return Stats(
        max_abs=float(g["max_abs"]) if n_both else 0.0,
        mean_abs=s_abs / n_both if n_both else 0.0,
        rel_l2=float(rel_l2),
        cosine=float(np.clip(cosine, -1.0, 1.0)),
        n_nonfinite=int(g["n_nonfinite"]),
        nonfinite_mismatch=nf_mismatch,
        frac_outside=(int(g["outside"]) + nf_mismatch) / n,
        tol_needed=max(need, 0.0) if nf_mismatch == 0 else float("inf"),
        size=n,
    )


def _detail_from(det: dict, ref: Any, port: Any, seed: int) -> dict[str, np.ndarray]:
    shape = tuple(np.shape(ref))
    n = int(np.prod(shape)) if shape else 1
    worst = det["worst_index"].astype(np.int64)
    out: dict[str, np.ndarray] = {"shape": np.asarray(shape, dtype=np.int64), "worst_index": worst}
    out["worst_ref"] = det["worst_ref"].astype(np.float64)
    out["worst_port"] = det["worst_port"].astype(np.float64)
    if bool(det["has_pos"]):
        lo, hi = float(det["lo"]), float(det["hi"])
        out["hist_edges"] = np.linspace(lo, hi, HIST_BINS + 1)
        out["hist_counts"] = det["hist_counts"].astype(np.int64)
    out["n_exact"] = np.asarray(int(det["n_exact"]))
    out["profile"] = det["profile"].astype(np.float32)
    out["heatmap"] = det["heatmap"].astype(np.float32)
    rng = np.random.default_rng(seed)
    m = min(SCATTER_MAX, n)
    idx = np.sort(rng.choice(n, size=m, replace=False)) if n > m else np.arange(m)
    idx = np.unique(np.concatenate([idx, worst[: min(5, worst.size)]]))
    out["scatter_ref"], out["scatter_port"] = _gather(ref, port, idx)
    return out


def _gather(ref: Any, port: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ref, np.ndarray) and isinstance(port, np.ndarray):
        return ref.reshape(-1)[idx].astype(np.float32), port.reshape(-1)[idx].astype(np.float32)
    _, _, gather = _kernels()
    r, p = gather(ref, port, idx.astype(np.int32))
    return np.asarray(r), np.asarray(p)


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float]:
    """``(numel, sum, sum of squares, min, max)`` of a float array, non-finite values as 0."""
    _, kernel, _ = _kernels()
    sums, lo, hi = kernel(a)
    sums = np.asarray(sums, dtype=np.float64)
    return int(np.prod(np.shape(a))), float(sums[0].sum()), float(sums[1].sum()), float(lo), float(hi)
