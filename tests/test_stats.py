"""The statistics backends (numba, JAX) give the numpy reference's statistics and detail; the dispatcher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("jax")

from xfdiff import stats  # noqa: E402
from xfdiff.stats import _jax, _numba, common, compare_arrays, error_detail  # noqa: E402  # noqa: E402

STAT_FIELDS = tuple(f.name for f in dataclasses.fields(common.Stats))  # every scalar statistic


def _pair(shape, seed=3, lo=-8, hi=-2):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(shape).astype(np.float32)
    scale = 10.0 ** rng.integers(lo, hi, shape)
    p = (r + rng.standard_normal(shape) * scale).astype(np.float32)
    return r, p


def _host(r, p, atol, rtol):
    """The numba backend's statistics and detail of any finite float32 pair (no size threshold)."""
    got = _numba.compare_2d(
        r.reshape(common.shape2d(r.shape)), p.reshape(common.shape2d(p.shape)), atol, rtol, True, r.shape, 0
    )
    assert got is not None
    return got


def _assert_same(ours, det, r, p, skip=()):
    ref, ref_det = compare_arrays(r, p, 1e-5, 1e-5), error_detail(r, p)
    for k in STAT_FIELDS:
        assert getattr(ours, k) == pytest.approx(getattr(ref, k), rel=1e-5, abs=1e-12), k
    assert set(det) | set(skip) == set(ref_det)
    for k, want in ref_det.items():
        if k in skip:
            continue
        got = det[k]
        if k.startswith("worst"):  # equal errors may come in another order
            got, want = np.sort(got), np.sort(want)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("shape", [(3, 70, 50), (4000,), (40, 33), (2, 1, 9000), (1, 128, 768), (7,), (5, 3)])
def test_host_pass_equals_the_numpy_reference(shape):
    r, p = _pair(shape)
    p.flat[0] = r.flat[0]  # an exact match: counted in n_exact, left out of the histogram
    rows, cols = common.shape2d(shape)
    got = _numba.compare_2d(r.reshape(rows, cols), p.reshape(rows, cols), 1e-5, 1e-5, True, shape, 0)
    assert got is not None
    _assert_same(*got, r, p)


def test_errors_spanning_forty_decades_land_in_the_reference_histogram_bins():
    r, p = _pair((64, 64), seed=5, lo=-35, hi=4)
    _assert_same(*_host(r, p, 1e-5, 1e-5), r, p)


def test_identical_arrays_have_no_histogram_and_all_exact():
    r, _ = _pair((16, 32))
    stats, det = _host(r, r.copy(), 1e-5, 1e-5)
    assert stats.max_abs == 0 and stats.cosine == 1.0 and stats.tol_needed == 0
    assert int(det["n_exact"]) == r.size and "hist_counts" not in det


def test_bucket_tables_bin_every_float32_like_float64_log10():
    """Each positive normal float32 gets floor((log10(x) - LOG_LO) * FINE) from two table lookups."""
    grid = (common.LOG_LO, common.FINE, common.N_FINE)
    base, edge = _numba.bucket_tables(*grid)
    rng = np.random.default_rng(0)
    bits = rng.integers(0x00800000, 0x7F7FFFFF, 400_000, dtype=np.int64).astype(np.uint32)
    x = bits.view(np.float32)
    # and the values right at every fine-bin edge, where a rounding slip would show
    with np.errstate(over="ignore"):
        edges = (10.0 ** (common.LOG_LO + np.arange(1, grid[2]) / grid[1])).astype(np.float32)
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
        _numba.measure(
            r.reshape(20, 30),
            p.reshape(20, 30),
            1e-5,
            1e-5,
            True,
            (common.LOG_LO, common.FINE, common.N_FINE),
        )
        is None
    )
    stats, det = _jax.compare_fused(r, p, 1e-5, 1e-5)
    assert stats.n_nonfinite == 2 and stats.nonfinite_mismatch == 1
    _assert_same(stats, det, r, p)


def test_host_pass_and_fused_kernel_agree():
    r, p = _pair((96, 200), seed=9)
    host = _host(r, p, 1e-4, 1e-3)
    fused = _jax.compare_fused(r, p, 1e-4, 1e-3)
    for k in STAT_FIELDS:
        assert getattr(host[0], k) == pytest.approx(getattr(fused[0], k), rel=1e-5), k
    for k in ("hist_counts", "hist_edges", "heatmap", "profile", "scatter_ref", "worst_index"):
        np.testing.assert_allclose(
            np.sort(host[1][k], axis=None), np.sort(fused[1][k], axis=None), rtol=1e-6, err_msg=k
        )


def test_parallel_map_keeps_order_and_raises_what_fn_raises():
    out = stats.parallel_map(lambda i: i * i, range(50))
    assert out == [i * i for i in range(50)]

    def boom(i):
        if i == 31:
            raise ValueError("row 31")
        return i

    with pytest.raises(ValueError, match="row 31"):
        stats.parallel_map(boom, range(50))


@pytest.mark.parametrize("poison", [False, True])
def test_fingerprint_sums_count_non_finite_values_as_zero(poison):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((300, 200)) * 3 + 1).astype(np.float32)
    if poison:
        a[1, 1], a[2, 2], a[3, 3] = np.nan, np.inf, -np.inf
    n, s1, s2, lo, hi = _numba.fingerprint_sums(a)
    b = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    assert n == a.size and (lo, hi) == (b.min(), b.max())
    assert s1 == pytest.approx(b.sum(), rel=1e-9) and s2 == pytest.approx((b * b).sum(), rel=1e-9)


# --- the dispatcher ---------------------------------------------------------------------


def test_each_pair_goes_to_the_backend_its_arrays_and_values_call_for():
    import jax.numpy as jnp
    import ml_dtypes

    r, p = _pair((64, 1024))
    assert stats.backend_for(r, p) == "numba"  # finite float32 numpy, one block
    small, _ = _pair((8, 16))
    assert stats.backend_for(small, small) == "numba"  # one small compiled call, detail included
    assert stats.backend_for(small.astype(np.float64), small.astype(np.float64)) == "numpy"
    assert stats.backend_for(r.astype(np.float64), p.astype(np.float64)) == "numpy"  # float64 stays exact
    bad = p.copy()
    bad[3, 3] = np.nan
    assert stats.backend_for(r, bad) == "jax"  # numba declines non-finite values; XLA handles them
    half = r.astype(ml_dtypes.bfloat16)
    assert stats.backend_for(half, half) == "jax"
    assert stats.backend_for(small, jnp.asarray(small)) == "jax"  # a device array is reduced where it lives
    assert stats.pair_kind(small, jnp.asarray(small)) == "jax" and stats.kind_of(small) == "numpy"


@pytest.mark.parametrize("shape", [(1, 16, 64), (7,), (5, 3), (40, 33), (2, 4, 16, 16), (1, 1)])
def test_small_pass_equals_the_numpy_reference_exactly(shape):
    """Small arrays: one compiled float64 pass, the reference's statistics and the very same detail."""
    r, p = _pair(shape, seed=11)
    p.flat[0] = r.flat[0]
    s, det = _numba.compare_small(r, p, 1e-5, 1e-4, True, 0)
    ref, ref_det = compare_arrays(r, p, 1e-5, 1e-4), error_detail(r, p)
    for k in STAT_FIELDS:
        assert getattr(s, k) == pytest.approx(getattr(ref, k), rel=1e-9, abs=1e-15), k
    assert set(det) == set(ref_det)
    for k, want in ref_det.items():
        assert det[k].dtype == want.dtype and det[k].shape == want.shape, k
        got = det[k]
        if k.startswith("worst"):  # equal errors (the exact zeros) may come in another order
            got, want = np.sort(got), np.sort(want)
        np.testing.assert_array_equal(got, want, err_msg=k)
    same = _numba.compare_small(r, r.copy(), 1e-5, 1e-5, True, 0)[1]
    assert "hist_counts" not in same and int(same["n_exact"]) == r.size
    bad = p.copy()
    bad.flat[-1] = np.inf
    assert _numba.compare_small(r, bad, 1e-5, 1e-5, True, 0) is None  # declined: the next backend measures it


@pytest.mark.parametrize("case", ["numba", "jax", "numpy", "nonfinite"])
def test_dispatched_statistics_equal_the_numpy_reference_on_every_route(case):
    import jax.numpy as jnp

    r, p = _pair((8, 16) if case == "numpy" else (64, 1024), seed=4)
    if case == "numpy":
        r, p = r.astype(np.float64), p.astype(np.float64)
    if case == "nonfinite":
        p[1, 2], r[5, 5], p[5, 5] = np.nan, np.inf, np.inf
    port = jnp.asarray(p) if case == "jax" else p
    s, det = stats.stats_and_detail(r, port, 1e-5, 1e-5, detail=True)
    if case in ("numba", "numpy"):
        _assert_same(s, det, r, p)
    else:  # XLA takes log10 in float32: an error right at a bin edge may land one bin over
        _assert_same(s, {k: v for k, v in det.items() if k != "hist_counts"}, r, p, skip=("hist_counts",))
        with np.errstate(invalid="ignore"):  # inf - inf
            d = np.abs(p.astype(np.float64) - r)
        want = np.histogram(np.log10(d[np.isfinite(d) & (d > 0)]), bins=det["hist_edges"])[0]
        assert np.abs(det["hist_counts"] - want).sum() <= 1e-3 * want.sum()
    s2, none = stats.stats_and_detail(r, port, 1e-5, 1e-5)
    assert none is None and s2.frac_outside == s.frac_outside


def test_fingerprints_agree_across_backends_with_non_finite_values_as_zero():
    import ml_dtypes

    rng = np.random.default_rng(2)
    a = rng.standard_normal((256, 200)).astype(np.float32)
    a[0, 0], a[1, 1], a[2, 2] = np.nan, np.inf, -np.inf
    b = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    want = (a.size, b.sum(), (b * b).sum(), b.min(), b.max())
    small = a[:4, :50]  # numpy backend
    bs = b[:4, :50]
    for got, ref in [
        (stats.fingerprint_sums(a), want),  # numba
        (_jax.fingerprint_sums(a), want),
        (stats.fingerprint_sums(a.astype(np.float64)), want),  # numpy
        (stats.fingerprint_sums(small), (small.size, bs.sum(), (bs * bs).sum(), bs.min(), bs.max())),
    ]:
        assert got[0] == ref[0]
        np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-5, atol=1e-3)
    half = stats.fingerprint_sums(a.astype(ml_dtypes.bfloat16))  # JAX, upcast
    assert half[0] == a.size and np.isfinite(half[1:]).all()


def test_max_abs_diff_and_rel_l2_agree_across_backends():
    r, p = _pair((64, 1024), seed=6)
    for a, b in [(r, p), (r[:4, :8], p[:4, :8])]:
        want = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert stats.max_abs_diff(a, b) == pytest.approx(want, rel=1e-6)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        assert stats.rel_l2(a, b) == pytest.approx(np.linalg.norm(a64 - b64) / np.linalg.norm(a64), rel=1e-5)
    w = r[:128, :512].copy()
    assert stats.max_abs_diff(w.T.copy().T, w) == 0.0  # a transposed view, passed as its contiguous base
    assert stats.rel_l2(np.zeros(4), np.ones(4)) == 2.0  # a zero reference norm counts as 1


@pytest.mark.parametrize("n,out", [(1, 32), (32, 32), (33, 32), (100, 32), (257, 256), (1000, 7)])
def test_pool_max_and_pool_bins_give_the_same_bins(n, out):
    a = np.random.default_rng(n).standard_normal((3, n))
    bins = stats.pool_bins(n, out)
    want = np.stack([np.full(3, -np.inf)] * int(bins.max() + 1), axis=1)
    for j, b in enumerate(bins):
        want[:, b] = np.maximum(want[:, b], a[:, j])
    np.testing.assert_array_equal(stats.pool_max(a, 1, out), want)


def test_one_float_predicate_for_numpy_jax_torch_and_ml_dtypes():
    import jax.numpy as jnp
    import ml_dtypes
    import torch

    yes = [
        np.zeros(2, np.float16),
        np.zeros(2, ml_dtypes.bfloat16),
        np.zeros(2, ml_dtypes.float8_e4m3fn),
        np.float32(1.0),
        jnp.zeros(2),
        jnp.zeros(2, jnp.bfloat16),
        torch.zeros(2),
        torch.zeros(2, dtype=torch.bfloat16),
    ]
    complex_ = [np.zeros(2, np.complex64), jnp.zeros(2, jnp.complex64), torch.zeros(2, dtype=torch.complex64)]
    no = [
        np.zeros(2, np.int32),
        np.zeros(2, bool),
        jnp.zeros(2, jnp.int32),
        torch.zeros(2, dtype=torch.long),
        1.0,
        [1.0],
    ]
    assert all(stats.is_float(x) and stats.is_float(x, real=True) for x in yes)
    assert all(stats.is_float(x) and not stats.is_float(x, real=True) for x in complex_)
    assert not any(stats.is_float(x) or stats.is_float(x, real=True) for x in no)


def test_backends_import_only_the_shared_module_and_the_package_loads_no_framework():
    import ast
    import subprocess
    import sys
    from pathlib import Path

    pkg = Path(stats.__file__).parent
    for name in ("_numpy", "_numba", "_jax", "_torch"):
        tree = ast.parse((pkg / f"{name}.py").read_text())
        local = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                local |= {node.module} if node.module else {a.name for a in node.names}
        assert local == {"common"}, (name, local)
    code = "import sys, xfdiff.stats; print(sorted(m for m in ('jax', 'numba', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
