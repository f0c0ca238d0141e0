"""Error statistics between a reference array and a port array: one package, several backends.

- :mod:`~xfdiff.stats.tolerance`: :class:`Tolerance` and a row's status.
- :mod:`~xfdiff.stats.common`: the :class:`Stats` record, the one float-dtype
  test (:func:`is_float`), the bin constants, pooling, and the combining of
  a backend's partial results.
- :mod:`~xfdiff.stats.dispatch`: picks the backend for a pair by where its
  arrays live (numpy, JAX, torch) and what they hold; :data:`ROUTES` is the
  registry device backends join.
- Backends, one file each, importing only ``common``: ``_numpy`` (the float64
  reference: :func:`compare_arrays`, :func:`error_detail`), ``_numba`` (one
  compiled host pass), ``_jax`` (fused XLA kernels, sharded arrays in place),
  ``_torch`` (torch ops on the tensor's own device).

Importing this package imports no numba, JAX or torch; a backend loads its
library on first use.
"""

from __future__ import annotations

from ._numpy import compare_arrays, error_detail
from .common import (
    HEATMAP_MAX,
    HIST_BINS,
    PROFILE_MAX,
    SCATTER_MAX,
    WORST_K,
    Stats,
    is_float,
    pool_bins,
    pool_max,
    to_float64,
)
from .dispatch import (
    ROUTES,
    backend_for,
    fingerprint_sums,
    kind_of,
    max_abs_diff,
    pair_kind,
    parallel_map,
    rel_l2,
    stats_and_detail,
)
from .tolerance import Tolerance, as_tolerance, lower_precision, status_of

__all__ = [
    "HEATMAP_MAX",
    "HIST_BINS",
    "PROFILE_MAX",
    "ROUTES",
    "SCATTER_MAX",
    "WORST_K",
    "Stats",
    "Tolerance",
    "as_tolerance",
    "backend_for",
    "compare_arrays",
    "error_detail",
    "fingerprint_sums",
    "is_float",
    "kind_of",
    "lower_precision",
    "max_abs_diff",
    "pair_kind",
    "parallel_map",
    "pool_bins",
    "pool_max",
    "rel_l2",
    "stats_and_detail",
    "status_of",
    "to_float64",
]
