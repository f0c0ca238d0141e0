"""How close is close enough: :class:`Tolerance` (per-dtype profiles) and a row's status.

An element fails when ``|port - ref| > atol + rtol * |ref|`` (allclose-style).
Per layer xfdiff also reports the smallest ``atol`` that would pass at the
chosen ``rtol`` (``tol_needed``), so a user sees how far off a layer is, not
just that it is off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .common import Stats

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


def status_of(stats: Stats) -> str:
    """``"nonfinite"``, ``"diverged"`` or ``"ok"`` for one comparison.

    NaN/Inf on the port is flagged even where the reference has it too: the
    values cannot be compared there, and the first such row is where the
    non-finite values start.
    """
    if stats.nonfinite_mismatch or stats.n_nonfinite:
        return "nonfinite"
    return "ok" if stats.frac_outside == 0 else "diverged"
