"""What every statistics backend shares: the record, the constants, the bins, the combining.

Backends (``_numpy``, ``_numba``, ``_jax``) import this module and nothing
else from :mod:`xfdiff.stats`, so they never depend on each other or on the
dispatcher. A backend measures a pair in *parts* (blocks of rows, or the
whole array) and hands them to :func:`stats_from` and :func:`detail_from`,
which turn them into the same :class:`Stats` and detail dictionary as the
numpy reference (:func:`xfdiff.stats.compare_arrays`,
:func:`xfdiff.stats.error_detail`).

A part's statistics are a dict with ``sums`` (4 x k: sum |d|, sum r², sum d²,
sum p² over the elements finite on both sides), ``max_abs``, ``need``
(max of ``|d| - rtol |r|``), ``outside``, ``n_both``, ``n_nonfinite`` and
``nf_mismatch``. Its detail parts are described at :func:`detail_from`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# --- the small summaries kept per row for the views -----------------------------------

#: Heatmap side (positions x channels, each max-pooled to at most this many bins).
HEATMAP_MAX = 32
#: Per-channel profile length (max-pooled).
PROFILE_MAX = 256
#: Scatter sample size.
SCATTER_MAX = 200
#: Bins of the log10 |error| histogram (over whole decades).
HIST_BINS = 40
#: Worst elements kept.
WORST_K = 10

# --- the compiled backends' grid and sizes --------------------------------------------

#: numpy arrays smaller than this skip the blocked compiled kernels (a call costs more than the arithmetic).
MIN_FAST = 1 << 15
#: float32 numpy arrays up to this size are measured, detail and all, by one small compiled call (numba);
#: from here up to MIN_FAST by the numba row pass.
SMALL_MAX = 1 << 13
#: Elements per kernel call; bounds a call's temporaries (16 MiB of float32).
BLOCK = 1 << 22
#: Histogram bins per decade of |error| on the fixed fine grid, and the grid's range (float32 spans it).
FINE = 200
LOG_LO, LOG_HI = -46, 39
N_FINE = (LOG_HI - LOG_LO) * FINE
#: Dtypes the compiled backends measure (in float32; half precisions are upcast).
FAST_DTYPES = ("float32", "bfloat16", "float16")
MAX_INT32 = 2**31 - 1


@dataclass
class Stats:
    """Error statistics of one array pair (port measured against ref)."""

    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    n_nonfinite: int
    nonfinite_mismatch: int
    frac_outside: float
    tol_needed: float
    size: int

    def passes(self) -> bool:
        return self.frac_outside == 0.0 and self.nonfinite_mismatch == 0


# --- dtypes ----------------------------------------------------------------------------


def is_float(a: Any, *, real: bool = False) -> bool:
    """True when ``a`` is an array of floating-point values: the one test xfdiff uses.

    Any object with a ``dtype`` counts (numpy and JAX arrays, numpy scalars,
    torch tensors): numpy floats, the ml_dtypes floats (bfloat16, float8, ...)
    and complex numbers; ``real=True`` leaves complex out (for code that does
    real arithmetic, such as the pitfall recomputations).

    >>> is_float(np.zeros(2, np.float16)), is_float(np.zeros(2, np.int32)), is_float([1.0])
    (True, False, False)
    >>> is_float(np.zeros(2, np.complex64)), is_float(np.zeros(2, np.complex64), real=True)
    (True, False)
    """
    dt = getattr(a, "dtype", None)
    if dt is None:
        return False
    if not isinstance(dt, np.dtype):
        if hasattr(dt, "is_floating_point"):  # torch.dtype
            return bool(dt.is_floating_point or (dt.is_complex and not real))
        try:
            dt = np.dtype(dt)
        except TypeError:
            return False
    if dt.kind == "f" or (dt.kind == "c" and not real):
        return True
    return dt.kind == "V" and dt.name.startswith(("bfloat", "float"))  # ml_dtypes


_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(a: Any) -> str:
    """numpy's name of ``a``'s dtype (``""`` without one); remembered per dtype."""
    dt = getattr(a, "dtype", None)
    if dt is None:
        return ""
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        try:
            name = np.dtype(dt).name
        except TypeError:  # a framework dtype numpy does not know (torch.float32)
            name = str(dt).rpartition(".")[2]
        if len(_DTYPE_NAMES) < 256:
            _DTYPE_NAMES[dt] = name
    return name


def to_numpy(a: Any) -> np.ndarray:
    """``a`` as a host numpy array: numpy as is, a torch tensor (any device) copied, else ``np.asarray``."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor: numpy cannot read bfloat16 ones
        a = a.detach().cpu()
        return (a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy()
    return np.asarray(a)


def to_float64(a: np.ndarray) -> np.ndarray:
    """Upcast any float array (bfloat16 included) to float64 (complex to complex128) for statistics."""
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    return np.asarray(a, dtype=np.float64)


# --- shapes, blocks and pooling ----------------------------------------------------------


def shape2d(shape: tuple) -> tuple[int, int]:
    """``(rows, channels)``: channels are the last axis, rows everything before."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(np.prod(shape[:-1])), int(shape[-1])


def blocks(rows: int, cols: int, whole: bool, block: int = BLOCK) -> list[tuple[int, int]]:
    """Row ranges of at most ``block`` elements (one range when ``whole``)."""
    step = rows if whole else max(1, block // max(cols, 1))
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def pool_edges(n: int, out: int) -> np.ndarray | None:
    """Edges of the ``out`` bins that ``n`` positions are max-pooled into (``None``: no pooling)."""
    return None if n <= out else np.linspace(0, n, out + 1).astype(int)


@functools.lru_cache(maxsize=256)
def pool_bins(n: int, out: int) -> np.ndarray:
    """Each of ``n`` positions' bin when max-pooled into ``min(n, out)`` bins (read-only, cached)."""
    edges = pool_edges(n, out)
    bins = np.arange(n) if edges is None else np.searchsorted(edges, np.arange(n), side="right") - 1
    bins = bins.astype(np.int64)
    bins.flags.writeable = False
    return bins


def pool_max(a: np.ndarray, axis: int, out: int) -> np.ndarray:
    """Max-pool ``axis`` of ``a`` into at most ``out`` bins (the bins of :func:`pool_bins`).

    Bins differ by at most one element; each short bin repeats its last
    element once, so every bin has the same width and one reshaped max does
    it (``reduceat`` loops per segment and is several times slower).

    >>> pool_max(np.arange(5.0), 0, 2)  # bins [0, 1] and [2, 3, 4]
    array([1., 4.])
    """
    edges = pool_edges(a.shape[axis], out)
    if edges is None:
        return a
    width = int(np.max(np.diff(edges)))
    shape = a.shape[:axis] + (out, width) + a.shape[axis + 1 :]
    if a.shape[axis] != out * width:
        idx = np.minimum(edges[:-1, None] + np.arange(width), edges[1:, None] - 1).ravel()
        a = np.take(a, idx, axis=axis)
    return a.reshape(shape).max(axis=axis + 1)


@functools.lru_cache(maxsize=256)
def sample(n: int, seed: int) -> np.ndarray:
    """The scatter plot's sorted sample of flat indices; the same for equal sizes (read-only, cached)."""
    rng = np.random.default_rng(seed)
    m = min(SCATTER_MAX, n)
    idx = np.sort(rng.choice(n, size=m, replace=False)) if n > m else np.arange(m)
    idx.flags.writeable = False
    return idx


# --- combining a backend's parts -------------------------------------------------------


def stats_from(parts: list[dict], n: int) -> Stats:
    """One :class:`Stats` from the statistics of a pair's parts (``n`` elements in all)."""
    sums = np.concatenate([np.reshape(g["sums"], (4, -1)) for g in parts], axis=1).astype(np.float64)
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


def histogram(dets: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """The 40-bin histogram of log10 |error| over whole decades, rebinned from the fine grid.

    Each histogram bin spans whole decades / 40, a run of fine bins, so
    rebinning gives the counts a direct histogram would.
    """
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


def detail_from(
    parts: list[tuple[int, dict]],
    shape: tuple,
    seed: int,
    gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The detail dictionary from a pair's detail parts.

    ``parts`` holds ``(first row, part)`` per block of rows; a part has the
    block's ``worst_val``/``worst_row``/``worst_col``/``worst_ref``/``worst_port``
    (its largest errors, rows relative to the block), ``log_min``/``log_max``
    of its positive finite errors, ``fine_counts`` (their histogram on the
    fine grid), ``n_exact``, ``col_max`` (per-channel maxima, already pooled
    or not) and ``row_pool`` (the heatmap's row bins x channels).
    ``gather(flat_indices)`` returns the reference's and port's values there,
    as float32, for the scatter plot.
    """
    dets = [g for _, g in parts]
    n = int(np.prod(shape)) if shape else 1
    cols = shape2d(shape)[1]
    cand = [
        (v, (a + r) * cols + c, rv, pv)
        for a, g in parts
        for v, r, c, rv, pv in zip(
            g["worst_val"], g["worst_row"], g["worst_col"], g["worst_ref"], g["worst_port"], strict=True
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
    hist = histogram(dets)
    if hist is not None:
        out["hist_edges"], out["hist_counts"] = hist
    out["n_exact"] = np.asarray(sum(int(d["n_exact"]) for d in dets))
    col_max = dets[0]["col_max"] if len(dets) == 1 else np.max([d["col_max"] for d in dets], axis=0)
    row_pool = dets[0]["row_pool"] if len(dets) == 1 else np.max([d["row_pool"] for d in dets], axis=0)
    out["profile"] = pool_max(col_max, 0, PROFILE_MAX).astype(np.float32)
    out["heatmap"] = pool_max(row_pool, 1, HEATMAP_MAX).astype(np.float32)
    idx = np.unique(np.concatenate([sample(n, seed), worst[: min(5, worst.size)]]))
    out["scatter_ref"], out["scatter_port"] = gather(idx)
    return out


_KINDS: dict[type, str] = {np.ndarray: "numpy"}


def kind_of(a: Any) -> str:
    """Where ``a``'s values live, as :data:`ROUTES` names it: ``"jax"``, ``"torch"`` or ``"numpy"`` (anything else).

    Decided once per type, without importing a framework nobody has imported.
    """
    t = type(a)
    kind = _KINDS.get(t)
    if kind is None:
        kind = "numpy"
        if "torch" in sys.modules and issubclass(t, sys.modules["torch"].Tensor):
            kind = "torch"
        elif "jax" in sys.modules and issubclass(t, sys.modules["jax"].Array):
            kind = "jax"
        _KINDS[t] = kind
    return kind
