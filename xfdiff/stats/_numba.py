"""The numba backend: finite float32 host arrays measured in one compiled pass (when numba is installed).

Almost every activation a comparison sees is a float32 numpy array of some
ten thousand to a few million elements. For those, a jit dispatch and a
dozen numpy passes cost more than the arithmetic; this backend computes the
same results in one pass over the ``(rows, channels)`` view, compiled by
numba and run without the GIL (so two threads measure two rows at once).

- Statistics: the four sums (in float64, so the cosine stays exact even when
  the two sides' norms differ by orders of magnitude), the tolerance count,
  and the maximum and ``tol_needed`` taken on the float bits (non-negative
  float32 values order like their bits, and integer maxima vectorise).
- Detail: per-row maxima, the max-pooled heatmap and per-channel profile,
  and the fine histogram of ``log10 |error|``
  (:data:`~xfdiff.stats.common.FINE` bins per decade) without a logarithm per
  element: the top 16 bits of a positive float32 name one of 32,768 buckets,
  each narrower than a fine bin, so a bucket holds at most one fine-bin edge.
  Two tables (the fine bin at the bucket's start, the float32 value where
  the next bin starts) give each element's bin with one comparison; the
  tables are built from float64 ``log10``, as the numpy reference bins.
- Pairs holding NaN or infinity are declined (``None``): the next backend
  measures them.
- :func:`fingerprint_sums`: a parameter's sums for :mod:`xfdiff.align`.

Nothing here runs when numba is missing: :func:`available` says so and
every function declines. Compiled code is cached on disk by numba, so only
the first comparison on a machine pays for compiling.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import common
from .common import FINE, HEATMAP_MAX, LOG_LO, MIN_FAST, N_FINE, PROFILE_MAX, SMALL_MAX, WORST_K, pool_bins

NAME = "numba"
_BUCKETS = 1 << 15  # positive float32 values: sign bit 0, then 8 exponent bits and 7 mantissa bits


@functools.lru_cache(maxsize=1)
def _numba():
    try:
        import numba
    except ImportError:
        return None
    return numba


def available() -> bool:
    """True when numba can be imported (the kernels compile on first use)."""
    return _numba() is not None


@functools.lru_cache(maxsize=1)
def _kernel():
    numba = _numba()

    # reassoc lets the sums vectorise; NaN and infinity keep their meaning (they are detected).
    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def measure_rows(
        r, p, atol, rtol, detail, base, edge, n_fine, row_bin, n_rb, col_bin, n_cb, prof_bin, n_pb
    ):  # pragma: no cover - compiled
        rows, cols = r.shape
        s_abs = 0.0
        s_rr = 0.0
        s_dd = 0.0
        s_pp = 0.0
        bad = np.float32(0.0)
        outside = 0
        mx = np.int32(0)
        need = np.int32(0)
        buf = np.empty(cols, np.float32)  # |error| of the current row
        slack = np.empty(cols, np.float32)  # max(|error| - rtol |ref|, 0) of the current row
        ibuf = buf.view(np.int32)
        islack = slack.view(np.int32)
        fine = np.zeros(n_fine + 1 if detail else 1, np.int64)
        row_max = np.zeros(rows if detail else 1, np.int32)
        pooled = np.zeros((n_rb, cols) if detail else (1, 1), np.float32)
        for i in range(rows):
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            a4 = 0.0
            o = np.int32(0)
            for j in range(cols):
                x = r[i, j]
                y = p[i, j]
                d = y - x
                ad = abs(d)
                ar = rtol * abs(x)
                x64 = np.float64(x)
                y64 = np.float64(y)
                d64 = y64 - x64  # exact, where the float32 difference of far-apart values rounds
                a1 += abs(d64)
                a2 += x64 * x64
                a3 += d64 * d64
                a4 += y64 * y64
                bad += (x - x) + (y - y)  # NaN once any value is NaN or infinite
                o += np.int32(ad > atol + ar)
                buf[j] = ad
                t = ad - ar
                slack[j] = t if t > 0 else np.float32(0.0)
            # Non-negative float32 values order like their bits: integer maxima vectorise.
            m = np.int32(0)
            nd = np.int32(0)
            for j in range(cols):
                v = ibuf[j]
                m = v if v > m else m
                w = islack[j]
                nd = w if w > nd else nd
            mx = m if m > mx else mx
            need = nd if nd > need else need
            s_abs += a1
            s_rr += a2
            s_dd += a3
            s_pp += a4
            outside += o
            if detail:
                row_max[i] = m
                acc = pooled[row_bin[i]]
                for j in range(cols):
                    acc[j] = buf[j] if buf[j] > acc[j] else acc[j]
                for j in range(cols):
                    v = ibuf[j]
                    if v > 0:  # a positive error (zero is all bits clear)
                        b = v >> 16
                        fine[base[b] + (1 if buf[j] >= edge[b] else 0)] += 1
        if not detail:
            return (s_abs, s_rr, s_dd, s_pp, mx, need, outside, bad == 0, fine, row_max, pooled, buf, -1)
        # Pool the channels: the heatmap's column bins, and the per-channel profile's bins.
        heat = np.zeros((n_rb, n_cb), np.float32)
        profile = np.zeros(n_pb, np.float32)
        for rb in range(n_rb):
            for j in range(cols):
                v = pooled[rb, j]
                cb = col_bin[j]
                heat[rb, cb] = v if v > heat[rb, cb] else heat[rb, cb]
                pb = prof_bin[j]
                profile[pb] = v if v > profile[pb] else profile[pb]
        first = 0  # the first non-empty fine bin
        while first < n_fine and fine[first] == 0:
            first += 1
        return (s_abs, s_rr, s_dd, s_pp, mx, need, outside, bad == 0, fine[:n_fine], row_max, heat, profile, first)

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def sums_of(x):  # pragma: no cover - compiled
        s1 = 0.0
        s2 = 0.0
        bad = 0.0
        for i in range(x.size):
            v = np.float64(x[i])
            s1 += v
            s2 += v * v
            bad += v - v  # NaN once any value is NaN or infinite
        return s1, s2, bad == 0

    @numba.njit(cache=True, nogil=True)
    def sums_of_finite(x):  # pragma: no cover - compiled
        s1 = 0.0
        s2 = 0.0
        lo = np.inf
        hi = -np.inf
        for i in range(x.size):
            v = np.float64(x[i])
            if not v - v == 0:  # NaN and infinities count as 0 (as the fused kernel does)
                v = 0.0
            s1 += v
            s2 += v * v
            lo = min(lo, v)
            hi = max(hi, v)
        return s1, s2, lo, hi

    return measure_rows, sums_of, sums_of_finite


@functools.lru_cache(maxsize=1)
def _small_kernel():
    numba = _numba()

    @numba.njit(cache=True, nogil=True)
    def measure_small(
        r, p, atol, rtol, detail, k, samp, row_bin, n_rb, col_bin, n_cb, prof_bin, n_pb, n_hist
    ):  # pragma: no cover - compiled
        rows, cols = r.shape
        n = rows * cols
        d = np.empty(n, np.float64)
        s_abs = 0.0
        s_rr = 0.0
        s_dd = 0.0
        s_pp = 0.0
        mx = 0.0
        need = 0.0
        outside = 0
        for i in range(rows):
            for j in range(cols):
                x = np.float64(r[i, j])
                y = np.float64(p[i, j])
                if not (np.isfinite(x) and np.isfinite(y)):
                    return (
                        False,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0,
                        0,
                        np.zeros(0, np.int64),
                        np.zeros((0, 0), np.float32),
                        np.zeros(0, np.float32),
                        np.zeros(0),
                        np.zeros(0, np.int64),
                        np.zeros(0, np.int64),
                    )
                ad = abs(y - x)
                ar = rtol * abs(x)
                d[i * cols + j] = ad
                s_abs += ad
                s_rr += x * x
                s_dd += ad * ad
                s_pp += y * y
                mx = ad if ad > mx else mx
                t = ad - ar
                need = t if t > need else need
                if ad > atol + ar:
                    outside += 1
        if not detail:
            return (
                True,
                s_abs,
                s_rr,
                s_dd,
                s_pp,
                mx,
                need,
                outside,
                0,
                np.zeros(0, np.int64),
                np.zeros((0, 0), np.float32),
                np.zeros(0, np.float32),
                np.zeros(0),
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
            )
        # the k largest errors, largest first (the earlier index first among equal ones)
        topv = np.full(k, -1.0)
        topi = np.zeros(k, np.int64)
        n_exact = 0
        lo_pos = np.inf
        heat = np.zeros((n_rb, n_cb), np.float32)
        profile = np.zeros(n_pb, np.float32)
        for i in range(rows):
            rb = row_bin[i]
            for j in range(cols):
                f = i * cols + j
                v = d[f]
                if v == 0.0:
                    n_exact += 1
                elif v < lo_pos:
                    lo_pos = v
                v32 = np.float32(v)
                cb = col_bin[j]
                if v32 > heat[rb, cb]:
                    heat[rb, cb] = v32
                pb = prof_bin[j]
                if v32 > profile[pb]:
                    profile[pb] = v32
                if v > topv[k - 1]:
                    m = k - 1
                    while m > 0 and topv[m - 1] < v:
                        topv[m] = topv[m - 1]
                        topi[m] = topi[m - 1]
                        m -= 1
                    topv[m] = v
                    topi[m] = f
        # log10 |error| over whole decades, binned as np.histogram bins it (edges as np.linspace builds them)
        counts = np.zeros(n_hist, np.int64)
        edges = np.empty(n_hist + 1)
        if n_exact < n:
            lo = np.floor(np.log10(max(lo_pos, 1e-30)))
            hi = np.ceil(np.log10(max(mx, 1e-30)))
            hi = max(hi, lo + 1.0)
            step = (hi - lo) / n_hist
            for b in range(n_hist):
                edges[b] = b * step + lo
            edges[n_hist] = hi
            for f in range(n):
                v = d[f]
                if v > 0.0:
                    x = np.log10(max(v, 1e-30))
                    b = int((x - lo) / (hi - lo) * n_hist)
                    if b == n_hist:
                        b -= 1
                    if x < edges[b]:
                        b -= 1
                    if x >= edges[b + 1] and b != n_hist - 1:
                        b += 1
                    counts[b] += 1
        # the scatter sample: the sorted sample merged with the five worst positions
        w = np.sort(topi[: min(5, k)])
        idx = np.empty(samp.size + w.size, np.int64)
        a = 0
        b = 0
        m = 0
        last = -1
        while a < samp.size or b < w.size:
            if b >= w.size or (a < samp.size and samp[a] <= w[b]):
                c = samp[a]
                a += 1
            else:
                c = w[b]
                b += 1
            if c != last:
                idx[m] = c
                m += 1
                last = c
        return (True, s_abs, s_rr, s_dd, s_pp, mx, need, outside, n_exact, topi, heat, profile, edges, counts, idx[:m])

    return measure_small


@functools.lru_cache(maxsize=1)
def _small_stats_kernel():
    """The statistics half of :func:`_small_kernel` alone (same order of operations, same sums)."""
    numba = _numba()

    @numba.njit(cache=True, nogil=True)
    def stats_small(r, p, atol, rtol):  # pragma: no cover - compiled
        s_abs = 0.0
        s_rr = 0.0
        s_dd = 0.0
        s_pp = 0.0
        mx = 0.0
        need = 0.0
        outside = 0
        for f in range(r.size):
            x = np.float64(r[f])
            y = np.float64(p[f])
            if not (np.isfinite(x) and np.isfinite(y)):
                return False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
            ad = abs(y - x)
            ar = rtol * abs(x)
            s_abs += ad
            s_rr += x * x
            s_dd += ad * ad
            s_pp += y * y
            mx = ad if ad > mx else mx
            t = ad - ar
            need = t if t > need else need
            if ad > atol + ar:
                outside += 1
        return True, s_abs, s_rr, s_dd, s_pp, mx, need, outside

    return stats_small


@functools.lru_cache(maxsize=4)
def bucket_tables(log_lo: int, fine_per_decade: int, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """``(base, edge)`` per float32 bucket: its first value's fine bin, and where the next bin starts.

    ``edge`` is the smallest float32 in the bucket whose fine bin is one
    higher (``inf`` when the bucket holds no edge). Subnormal buckets span
    several bins; they keep their first value's bin.
    """
    b = np.arange(_BUCKETS, dtype=np.int64)
    start = (b << 16).astype(np.uint32).view(np.float32)
    stop = (((b + 1) << 16) - 1).astype(np.uint32).view(np.float32)  # last float32 of the bucket

    def fine_bin(v: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.floor((np.log10(v.astype(np.float64)) - log_lo) * fine_per_decade)
        return np.clip(np.nan_to_num(k, nan=0.0, neginf=0.0, posinf=n_fine - 1), 0, n_fine - 1).astype(np.int64)

    base = fine_bin(start)
    nxt = base + 1
    # Candidate edge: the float32 nearest 10**(next bin's start), moved to the first value in that bin.
    with np.errstate(over="ignore"):
        cand = (10.0 ** (log_lo + nxt / fine_per_decade)).astype(np.float32)
    for _ in range(3):
        low = fine_bin(cand) < nxt
        cand = np.where(low, np.nextafter(cand, np.float32(np.inf)), cand)
        prev = np.nextafter(cand, np.float32(0))
        cand = np.where(fine_bin(prev) >= nxt, prev, cand)
    inside = (cand >= start) & (cand <= stop) & (fine_bin(cand) == nxt) & np.isfinite(start)
    edge = np.where(inside, cand, np.float32(np.inf)).astype(np.float32)
    base[~np.isfinite(start)] = n_fine  # infinities and NaNs never reach the tables; keep them out of range
    return base, edge


def measure(r2: np.ndarray, p2: np.ndarray, atol: float, rtol: float, detail: bool, fine_grid: tuple):
    """One compiled pass over ``(rows, channels)`` float32 arrays.

    Returns ``None`` when either array holds NaN or infinity; otherwise
    ``(sums, max_abs, need, outside, det)``: ``need`` is ``max(|error| -
    rtol |ref|)`` clamped at 0 (only its positive part is ever used), and
    ``det`` the detail parts (or ``None``): the fine histogram counts (zero
    errors left out), each row's maximum, the max-pooled heatmap and
    per-channel profile, and the first non-empty fine bin.
    """
    kernel = _kernel()[0]
    r2 = np.ascontiguousarray(r2)
    p2 = np.ascontiguousarray(p2)
    rows, cols = r2.shape
    base, edge = bucket_tables(*fine_grid)
    (s_abs, s_rr, s_dd, s_pp, mx, need, outside, finite, fine, row_max, heat, profile, first) = kernel(
        r2,
        p2,
        np.float32(atol),
        np.float32(rtol),
        bool(detail),
        base,
        edge,
        fine_grid[2],
        pool_bins(rows, HEATMAP_MAX),
        min(rows, HEATMAP_MAX),
        pool_bins(cols, HEATMAP_MAX),
        min(cols, HEATMAP_MAX),
        pool_bins(cols, PROFILE_MAX),
        min(cols, PROFILE_MAX),
    )
    if not finite:
        return None
    as_float = np.array([mx, need], dtype=np.int32).view(np.float32)
    det = (fine, row_max.view(np.float32), heat, profile, first) if detail else None
    return (s_abs, s_rr, s_dd, s_pp), float(as_float[0]), float(as_float[1]), int(outside), det


# --- the backend interface (see xfdiff.stats.dispatch) ------------------------------------


def takes(ref: Any, port: Any) -> bool:
    """Whether the row pass measures the pair: float32 numpy arrays of one shape, past SMALL_MAX, one block at most."""
    return (
        isinstance(ref, np.ndarray)
        and isinstance(port, np.ndarray)
        and ref.dtype == np.float32
        and port.dtype == np.float32
        and ref.shape == port.shape
        and SMALL_MAX < ref.size <= common.BLOCK
        and available()
    )


def compare(ref: Any, port: Any, atol: float, rtol: float, detail: bool, seed: int):
    """``(Stats, detail or None)``, or ``None`` to decline (see :func:`takes`; any non-finite value).

    Arrays up to :data:`~xfdiff.stats.common.SMALL_MAX` elements take :func:`compare_small`.
    """
    if (
        type(ref) is np.ndarray
        and type(port) is np.ndarray
        and 0 < ref.size <= SMALL_MAX
        and ref.dtype == np.float32
        and port.dtype == np.float32
        and ref.shape == port.shape
        and available()
    ):
        return compare_small(ref, port, atol, rtol, detail, seed)
    if not takes(ref, port):
        return None
    return compare_2d(
        ref.reshape(common.shape2d(ref.shape)),
        port.reshape(common.shape2d(port.shape)),
        atol,
        rtol,
        detail,
        ref.shape,
        seed,
    )


def compare_2d(r2: np.ndarray, p2: np.ndarray, atol: float, rtol: float, detail: bool, shape: tuple, seed: int):
    """:func:`compare` of the ``(rows, channels)`` views of arrays of ``shape``; ``None`` when non-finite."""
    got = measure(r2, p2, atol, rtol, detail, (LOG_LO, FINE, N_FINE))
    if got is None:
        return None
    sums, max_abs, need, outside, det = got
    rows, cols = r2.shape
    n = rows * cols
    g = {
        "sums": sums,
        "max_abs": max_abs,
        "need": need,
        "outside": outside,
        "n_both": n,
        "n_nonfinite": 0,
        "nf_mismatch": 0,
    }
    stats = common.stats_from([g], n)
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
    part = {
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

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return r2.reshape(-1)[idx].astype(np.float32), p2.reshape(-1)[idx].astype(np.float32)

    return stats, common.detail_from([(0, part)], shape, seed, gather)


@functools.lru_cache(maxsize=512)
def _small_layout(shape: tuple, seed: int) -> tuple:
    """The small pass's shape-only arguments (worst count, scatter sample, pooling bins), once per shape."""
    rows, cols = common.shape2d(shape)
    n = rows * cols
    return (
        rows,
        cols,
        n,
        (
            min(WORST_K, n),
            common.sample(n, seed),
            pool_bins(rows, HEATMAP_MAX),
            min(rows, HEATMAP_MAX),
            pool_bins(cols, HEATMAP_MAX),
            min(cols, HEATMAP_MAX),
            pool_bins(cols, PROFILE_MAX),
            min(cols, PROFILE_MAX),
            common.HIST_BINS,
        ),
    )


def compare_small(ref: np.ndarray, port: np.ndarray, atol: float, rtol: float, detail: bool, seed: int):
    """:func:`compare` of a small finite float32 pair in one compiled float64 pass; ``None`` when non-finite.

    The per-row cost of a deep narrow model (thousands of elements per
    activation) is call overhead, not arithmetic: here the statistics and
    the whole detail (worst elements, histogram, heatmap, profile, scatter
    sample) come from one kernel call, with the numpy reference's binning.
    """
    shape = ref.shape
    if not detail:  # the statistics alone: a lighter call
        finite, s_abs, s_rr, s_dd, s_pp, mx, need, outside = _small_stats_kernel()(
            np.ascontiguousarray(ref).reshape(-1), np.ascontiguousarray(port).reshape(-1), float(atol), float(rtol)
        )
        if not finite:
            return None
        return _small_stats(s_abs, s_rr, s_dd, s_pp, mx, need, outside, ref.size), None
    rows, cols, n, layout = _small_layout(shape, seed)
    got = _small_kernel()(
        np.ascontiguousarray(ref).reshape(rows, cols),
        np.ascontiguousarray(port).reshape(rows, cols),
        float(atol),
        float(rtol),
        bool(detail),
        *layout,
    )
    finite, s_abs, s_rr, s_dd, s_pp, mx, need, outside, n_exact, worst, heat, profile, edges, counts, idx = got
    if not finite:
        return None
    stats = _small_stats(s_abs, s_rr, s_dd, s_pp, mx, need, outside, n)
    fr, fp = ref.reshape(-1), port.reshape(-1)
    det = {
        "shape": np.asarray(shape, dtype=np.int64),
        "worst_index": worst,
        "worst_ref": fr[worst].astype(np.float64),
        "worst_port": fp[worst].astype(np.float64),
    }
    if n_exact < n:
        det["hist_edges"] = edges  # as np.linspace(lo, hi, HIST_BINS + 1) builds them
        det["hist_counts"] = counts
    det["n_exact"] = np.asarray(n_exact)
    det["profile"] = profile
    det["heatmap"] = heat
    det["scatter_ref"] = fr[idx]
    det["scatter_port"] = fp[idx]
    return stats, det


def _small_stats(s_abs, s_rr, s_dd, s_pp, mx, need, outside, n) -> common.Stats:
    """:class:`~xfdiff.stats.common.Stats` from the small pass's float64 sums over ``n`` finite pairs."""
    nr, nd, npn = np.sqrt(s_rr), np.sqrt(s_dd), np.sqrt(s_pp)
    if nr > 0 and npn > 0:
        cosine = 1.0 - (s_dd - (nr - npn) ** 2) / (2.0 * nr * npn)  # no cancellation near cos = 1
    else:
        cosine = 1.0 if nd == 0 else 0.0
    return common.Stats(
        max_abs=float(mx),
        mean_abs=float(s_abs / n),
        rel_l2=float(nd / nr if nr > 0 else (0.0 if nd == 0 else np.inf)),
        cosine=float(min(max(cosine, -1.0), 1.0)),
        n_nonfinite=0,
        nonfinite_mismatch=0,
        frac_outside=outside / n,
        tol_needed=float(need),
        size=n,
    )


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float] | None:
    """``(numel, sum, sum of squares, min, max)`` of a float32 numpy array in float64, non-finite values as 0.

    Any shape and size from :data:`~xfdiff.stats.common.MIN_FAST` on; ``None`` for anything else.
    """
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.size >= MIN_FAST and available()):
        return None
    flat = np.ascontiguousarray(a).reshape(-1)
    s1, s2, finite = _kernel()[1](flat)
    if finite:  # the common case: vectorised sums, numpy's SIMD min and max
        return int(a.size), float(s1), float(s2), float(flat.min()), float(flat.max())
    s1, s2, lo, hi = _kernel()[2](flat)
    return int(a.size), float(s1), float(s2), float(lo), float(hi)
