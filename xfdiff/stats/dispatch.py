"""The one place that picks a statistics backend for a pair of arrays.

Each backend is a module of this package offering some of three operations:

- ``compare(ref, port, atol, rtol, detail, seed) -> (Stats, detail or None)``
- ``fingerprint_sums(a) -> (numel, sum, sum of squares, min, max)``
- ``max_abs_diff(a, b) -> float``

and returning ``None`` from any of them to *decline* a pair (wrong dtype or
size, a non-finite value it does not handle, its library not installed).
The dispatcher looks at where the arrays live (:func:`kind_of`: ``"numpy"``,
``"jax"``, ``"torch"``), tries that kind's backends from :data:`ROUTES` in
order, and falls back to ``_numpy`` (the float64 reference, which never
declines). Every backend returns what the numpy reference returns, within
float32 rounding; the tests hold them to it.

Adding a backend is one module and one line: e.g. ``_torch.py`` (torch ops on
the tensor's own device) offers the operations above, imports only
:mod:`xfdiff.stats.common` (its framework inside the functions, never at
import), and is named in :data:`ROUTES` as ``"torch": ("_torch",)``. A pair
of two frameworks (a torch tensor and a JAX array) first meets on one device
(:func:`xfdiff.stats.meet.meet`: DLPack where the device is shared) and is
measured there by that framework's backend.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from . import _numpy
from .common import Stats, kind_of

#: Backends tried, in order, for each kind of array; ``_numpy`` answers whatever they decline.
ROUTES: dict[str, tuple[str, ...]] = {
    "numpy": ("_numba", "_jax"),  # finite float32 up to a block: numba; larger, or half precision: XLA
    "jax": ("_jax",),  # reduced where the array lives, sharded arrays included
    "torch": ("_torch",),  # torch ops on the tensor's own device (CPU or CUDA)
}

_MODULES: dict[str, Any] = {}


def pair_kind(ref: Any, port: Any) -> str:
    """The kind of a pair: the non-numpy side's kind if only one side has one, else ``"numpy"``."""
    kr, kp = kind_of(ref), kind_of(port)
    if kr == kp or kp == "numpy":
        return kr
    return kp if kr == "numpy" else "numpy"  # two different frameworks: both read on the host


def _met(ref: Any, port: Any) -> tuple[Any, Any]:
    """A torch tensor and a JAX array brought to one framework on one device (other pairs as they are)."""
    kr, kp = kind_of(ref), kind_of(port)
    if kr != kp and kr != "numpy" and kp != "numpy":
        from .meet import meet

        return meet(ref, port)
    return ref, port


def _backend(name: str) -> Any:
    mod = _MODULES.get(name)
    if mod is None:
        mod = _MODULES[name] = importlib.import_module(f"{__package__}.{name}")
    return mod


def _first(op: str, kind: str, *args: Any, fallback: bool = True) -> Any:
    """The first answer to ``op(*args)`` among ``kind``'s backends, then numpy's (unless not ``fallback``)."""
    for name in ROUTES.get(kind, ()):
        fn = getattr(_backend(name), op, None)
        if fn is not None:
            got = fn(*args)
            if got is not None:
                return got
    return getattr(_numpy, op)(*args) if fallback else None


def backend_for(ref: Any, port: Any, atol: float = 0.0, rtol: float = 0.0) -> str:
    """Name of the backend that measures this pair (runs the measurement, without detail)."""
    ref, port = _met(ref, port)
    for name in ROUTES.get(pair_kind(ref, port), ()):
        fn = getattr(_backend(name), "compare", None)
        if fn is not None and fn(ref, port, atol, rtol, False, 0) is not None:
            return _backend(name).NAME
    return _numpy.NAME


# --- the operations ---------------------------------------------------------------------


def stats_and_detail(
    ref: Any, port: Any, atol: float, rtol: float, detail: bool = False, seed: int = 0
) -> tuple[Stats, dict[str, np.ndarray] | None]:
    """``(Stats, error_detail or None)`` of ``port`` against ``ref``, from the fastest backend that takes them.

    >>> s, det = stats_and_detail(np.zeros(3), np.full(3, 0.5), 1e-5, 1e-5)
    >>> (s.max_abs, s.frac_outside, det)
    (0.5, 1.0, None)
    """
    ref, port = _met(ref, port)
    return _first("compare", pair_kind(ref, port), ref, port, atol, rtol, detail, seed)


def fingerprint_sums(a: Any) -> tuple[int, float, float, float, float]:
    """``(numel, sum, sum of squares, min, max)`` of a parameter, non-finite values counted as 0.

    >>> fingerprint_sums(np.array([1.0, np.nan, 3.0]))
    (3, 4.0, 10.0, 0.0, 3.0)
    """
    return _first("fingerprint_sums", kind_of(a), a)


def max_abs_diff(a: Any, b: Any) -> float:
    """``max |a - b|`` in float32 (NaN when either holds NaN)."""
    a, b = _met(a, b)
    return _first("max_abs_diff", pair_kind(a, b), a, b)


def rel_l2(ref: Any, port: Any) -> float:
    """``|port - ref| / |ref|`` over the elements finite on both sides (a zero ``|ref|`` counts as 1).

    >>> rel_l2(np.array([3.0, 4.0]), np.array([3.0, 4.5]))
    0.1
    """
    ref, port = _met(ref, port)
    got = _first("compare", pair_kind(ref, port), ref, port, 0.0, 0.0, False, 0, fallback=False)
    if got is not None and np.isfinite(got[0].rel_l2):
        return got[0].rel_l2
    return _numpy.rel_l2(ref, port)


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
