"""The compiled host pass (numba) gives the numpy reference's statistics and detail."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("jax")

from xfdiff import fastmetrics, hostmetrics  # noqa: E402
from xfdiff.metrics import compare_arrays, error_detail  # noqa: E402

STAT_FIELDS = (
    "max_abs",
    "mean_abs",
    "rel_l2",
    "cosine",
    "frac_outside",
    "tol_needed",
    "n_nonfinite",
    "nonfinite_mismatch",
    "size",
)


def _pair(shape, seed=3, lo=-8, hi=-2):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(shape).astype(np.float32)
    scale = 10.0 ** rng.integers(lo, hi, shape)
    p = (r + rng.standard_normal(shape) * scale).astype(np.float32)
    return r, p


def _assert_same(ours, det, r, p):
    ref, ref_det = compare_arrays(r, p, 1e-5, 1e-5), error_detail(r, p)
    for k in STAT_FIELDS:
        assert getattr(ours, k) == pytest.approx(getattr(ref, k), rel=1e-5, abs=1e-12), k
    assert set(det) == set(ref_det)
    for k, want in ref_det.items():
        got = det[k]
        if k.startswith("worst"):  # equal errors may come in another order
            got, want = np.sort(got), np.sort(want)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("shape", [(3, 70, 50), (4000,), (40, 33), (2, 1, 9000), (1, 128, 768), (7,), (5, 3)])
def test_host_pass_equals_the_numpy_reference(shape):
    r, p = _pair(shape)
    p.flat[0] = r.flat[0]  # an exact match: counted in n_exact, left out of the histogram
    rows, cols = fastmetrics._shape2d(shape)
    got = fastmetrics._compare_host(r.reshape(rows, cols), p.reshape(rows, cols), 1e-5, 1e-5, True, shape, 0)
    assert got is not None
    _assert_same(*got, r, p)


def test_errors_spanning_forty_decades_land_in_the_reference_histogram_bins():
    r, p = _pair((64, 64), seed=5, lo=-35, hi=4)
    got = fastmetrics.compare_fast(r, p, 1e-5, 1e-5)
    _assert_same(*got, r, p)


def test_identical_arrays_have_no_histogram_and_all_exact():
    r, _ = _pair((16, 32))
    stats, det = fastmetrics.compare_fast(r, r.copy(), 1e-5, 1e-5)
    assert stats.max_abs == 0 and stats.cosine == 1.0 and stats.tol_needed == 0
    assert int(det["n_exact"]) == r.size and "hist_counts" not in det


def test_bucket_tables_bin_every_float32_like_float64_log10():
    """Each positive normal float32 gets floor((log10(x) - LOG_LO) * FINE) from two table lookups."""
    grid = (fastmetrics.LOG_LO, fastmetrics.FINE, fastmetrics._N_FINE)
    base, edge = hostmetrics.bucket_tables(*grid)
    rng = np.random.default_rng(0)
    bits = rng.integers(0x00800000, 0x7F7FFFFF, 400_000, dtype=np.int64).astype(np.uint32)
    x = bits.view(np.float32)
    # and the values right at every fine-bin edge, where a rounding slip would show
    with np.errstate(over="ignore"):
        edges = (10.0 ** (fastmetrics.LOG_LO + np.arange(1, grid[2]) / grid[1])).astype(np.float32)
    edges = edges[np.isfinite(edges) & (edges >= np.finfo(np.float32).tiny)]
    x = np.concatenate([x, edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(np.inf))])
    b = x.view(np.int32) >> 16
    ours = base[b] + (x >= edge[b])
    want = np.floor((np.log10(x.astype(np.float64)) - grid[0]) * grid[1]).astype(np.int64)
    assert np.array_equal(ours, want)


def test_non_finite_values_leave_the_host_pass_to_the_kernel():
    r, p = _pair((20, 30))
    p.flat[7], r.flat[9], p.flat[9] = np.nan, np.inf, np.inf
    assert (
        hostmetrics.measure(
            r.reshape(20, 30),
            p.reshape(20, 30),
            1e-5,
            1e-5,
            True,
            (fastmetrics.LOG_LO, fastmetrics.FINE, fastmetrics._N_FINE),
        )
        is None
    )
    stats, det = fastmetrics.compare_fast(r, p, 1e-5, 1e-5)
    assert stats.n_nonfinite == 2 and stats.nonfinite_mismatch == 1
    _assert_same(stats, det, r, p)


def test_host_pass_and_fused_kernel_agree(monkeypatch):
    r, p = _pair((96, 200), seed=9)
    host = fastmetrics.compare_fast(r, p, 1e-4, 1e-3)
    monkeypatch.setattr(fastmetrics, "_host_ok", lambda *a: False)
    fused = fastmetrics.compare_fast(r, p, 1e-4, 1e-3)
    for k in STAT_FIELDS:
        assert getattr(host[0], k) == pytest.approx(getattr(fused[0], k), rel=1e-5), k
    for k in ("hist_counts", "hist_edges", "heatmap", "profile", "scatter_ref", "worst_index"):
        np.testing.assert_allclose(
            np.sort(host[1][k], axis=None), np.sort(fused[1][k], axis=None), rtol=1e-6, err_msg=k
        )


def test_parallel_map_keeps_order_and_raises_what_fn_raises():
    out = fastmetrics.parallel_map(lambda i: i * i, range(50))
    assert out == [i * i for i in range(50)]

    def boom(i):
        if i == 31:
            raise ValueError("row 31")
        return i

    with pytest.raises(ValueError, match="row 31"):
        fastmetrics.parallel_map(boom, range(50))


@pytest.mark.parametrize("poison", [False, True])
def test_fingerprint_sums_count_non_finite_values_as_zero(poison):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((300, 200)) * 3 + 1).astype(np.float32)
    if poison:
        a[1, 1], a[2, 2], a[3, 3] = np.nan, np.inf, -np.inf
    n, s1, s2, lo, hi = hostmetrics.fingerprint_sums(a)
    b = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    assert n == a.size and (lo, hi) == (b.min(), b.max())
    assert s1 == pytest.approx(b.sum(), rel=1e-9) and s2 == pytest.approx((b * b).sum(), rel=1e-9)
