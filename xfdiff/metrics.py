"""Error statistics between a reference array and a port array (pure numpy).

An element fails when ``|port - ref| > atol + rtol * |ref|`` (allclose-style).
Per layer we also report the smallest ``atol`` that would pass at the chosen
``rtol`` (``tol_needed``), so a user sees how far off a layer is, not just
that it is off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .trace import to_float64

# Per-dtype defaults. fp32 matches the level Hugging Face holds its PT/Flax
# pairs to; half precisions are a few ULP of their mantissa.
_DTYPE_TOL = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-5, 1e-5),
    "float16": (1e-3, 1e-3),
    "bfloat16": (1e-2, 1e-2),
}


@dataclass(frozen=True)
class Tolerance:
    """Comparison tolerance: ``|port - ref| <= atol + rtol * |ref|``.

    Args:
        atol: absolute tolerance; ``None`` picks the dtype profile's value.
        rtol: relative tolerance; ``None`` picks the dtype profile's value.

    >>> Tolerance().resolve("float32")
    (1e-05, 1e-05)
    >>> Tolerance(atol=1e-3).resolve("float32")
    (0.001, 1e-05)
    """

    atol: float | None = None
    rtol: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if v is not None and (not np.isfinite(v) or v < 0):
                raise ConfigError(f"Tolerance.{name} must be a finite number >= 0, got {v!r}.")

    def resolve(self, dtype: str | np.dtype | None) -> tuple[float, float]:
        """(atol, rtol) for comparing arrays of ``dtype`` (the lower precision side)."""
        name = np.dtype(dtype).name if dtype is not None and not isinstance(dtype, str) else dtype
        da, dr = _DTYPE_TOL.get(name or "float32", _DTYPE_TOL["float32"])
        return (da if self.atol is None else self.atol, dr if self.rtol is None else self.rtol)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_tolerance(tol: Tolerance | float | dict | None) -> Tolerance:
    """Accept ``None``, a number (used as atol and rtol), a dict or a Tolerance."""
    if tol is None:
        return Tolerance()
    if isinstance(tol, Tolerance):
        return tol
    if isinstance(tol, (int, float)):
        return Tolerance(atol=float(tol), rtol=float(tol))
    if isinstance(tol, dict):
        unknown = set(tol) - {"atol", "rtol"}
        if unknown:
            raise ConfigError(f"tolerance dict has unknown keys {sorted(unknown)}; use 'atol' and 'rtol'.")
        return Tolerance(**tol)
    raise ConfigError(f"tolerance must be None, a number, a dict or xfdiff.Tolerance, got {type(tol).__name__}.")


def lower_precision(*dtypes: str) -> str:
    """The dtype name with the loosest tolerance profile among ``dtypes``."""
    order = ["bfloat16", "float16", "float32", "float64"]
    known = [d for d in dtypes if d in order]
    return min(known, key=order.index) if known else "float32"


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


def compare_arrays(ref: np.ndarray, port: np.ndarray, atol: float, rtol: float) -> Stats:
    """Statistics of ``port`` against ``ref`` (same shape).

    Non-finite values count as agreement only where both sides hold the same
    non-finite value (NaN at the same place, or the same infinity).

    >>> s = compare_arrays(np.ones(4), np.ones(4), 1e-5, 1e-5)
    >>> (s.max_abs, s.cosine, s.frac_outside)
    (0.0, 1.0, 0.0)
    """
    r = to_float64(ref).ravel()
    p = to_float64(port).ravel()
    if r.shape != p.shape:
        raise ValueError(f"compare_arrays needs equal sizes, got {ref.shape} and {port.shape}")
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


def status_of(stats: Stats) -> str:
    """``"nonfinite"``, ``"diverged"`` or ``"ok"`` for one comparison.

    NaN/Inf on the port is flagged even where the reference has it too: the
    values cannot be compared there, and the first such row is where the
    non-finite values start.
    """
    if stats.nonfinite_mismatch or stats.n_nonfinite:
        return "nonfinite"
    return "ok" if stats.frac_outside == 0 else "diverged"


# --- small summaries kept in a report for the views --------------------------------

HEATMAP_MAX = 32
PROFILE_MAX = 256
SCATTER_MAX = 200
HIST_BINS = 40
WORST_K = 10


def _pool_max(a: np.ndarray, axis: int, out: int) -> np.ndarray:
    n = a.shape[axis]
    if n <= out:
        return a
    edges = np.linspace(0, n, out + 1).astype(int)
    return np.stack(
        [np.take(a, np.arange(edges[i], edges[i + 1]), axis=axis).max(axis=axis) for i in range(out)],
        axis=axis,
    )


def error_detail(ref: np.ndarray, port: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Small arrays that let a viewer draw a layer's error without the tensors.

    Returns ``hist_edges``/``hist_counts`` (log10 |error|), ``heatmap``
    (positions x channels, max-pooled to at most 32x32), ``profile`` (max error
    per channel, at most 256), ``scatter_ref``/``scatter_port`` (a sample),
    ``worst_index`` (flat indices), ``worst_ref``/``worst_port`` and ``shape``.
    """
    r = to_float64(ref)
    p = to_float64(port)
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
    out["profile"] = _pool_max(d2.max(axis=0), 0, PROFILE_MAX).astype(np.float32)
    out["heatmap"] = _pool_max(_pool_max(d2, 0, HEATMAP_MAX), 1, HEATMAP_MAX).astype(np.float32)
    rng = np.random.default_rng(seed)
    flat_r, flat_p = r.ravel(), p.ravel()
    m = min(SCATTER_MAX, flat_r.size)
    idx = np.sort(rng.choice(flat_r.size, size=m, replace=False)) if flat_r.size > m else np.arange(m)
    idx = np.unique(np.concatenate([idx, worst[: min(5, k)]]))
    out["scatter_ref"] = flat_r[idx].astype(np.float32)
    out["scatter_port"] = flat_p[idx].astype(np.float32)
    return out
