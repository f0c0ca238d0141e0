"""The torch backend (torch ops on the tensor's device) gives the numpy reference's statistics and detail.

Run here on CPU tensors; on a CUDA machine the same tests take ``cuda`` tensors too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xfdiff import stats  # noqa: E402
from xfdiff.stats import _torch, common, compare_arrays, error_detail  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STAT_FIELDS = tuple(f.name for f in dataclasses.fields(common.Stats))  # every scalar statistic


def _pair(shape, seed=3, lo=-8, hi=-2):
    rng = np.random.default_rng(seed)
    r = np.asarray(rng.standard_normal(shape), dtype=np.float32)
    scale = 10.0 ** rng.integers(lo, hi, shape)
    p = np.asarray(r + rng.standard_normal(shape) * scale, dtype=np.float32)
    return r, p


def _assert_same(ours, det, r, p, atol=1e-5, rtol=1e-5, ties=False):
    """``ties``: many equal errors (half precision), so the worst elements may be other ones of equal error."""
    ref, ref_det = compare_arrays(r, p, atol, rtol), error_detail(r, p)
    for k in STAT_FIELDS:
        assert getattr(ours, k) == pytest.approx(getattr(ref, k), rel=1e-5, abs=1e-12), k
    assert set(det) == set(ref_det)
    if ties:
        err = [np.sort(np.abs(d["worst_port"] - d["worst_ref"])) for d in (det, ref_det)]
        np.testing.assert_allclose(*err, rtol=1e-5)
        pairs = [set(zip(d["scatter_ref"].tolist(), d["scatter_port"].tolist(), strict=True)) for d in (det, ref_det)]
        assert len(pairs[1] - pairs[0]) <= 5  # the sample is the same; the worst five joined to it may differ
    for k, want in ref_det.items():
        if ties and k.startswith(("worst", "scatter")):
            continue
        got = det[k]
        if k.startswith("worst"):  # equal errors may come in another order
            got, want = np.sort(got), np.sort(want)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 70, 50), (4000,), (40, 33), (2, 1, 9000), (1, 128, 768), (7,), (5, 3), ()])
def test_torch_backend_equals_the_numpy_reference(shape, device):
    r, p = _pair(shape)
    if r.size > 1:
        p.flat[0] = r.flat[0]  # an exact match: counted in n_exact, left out of the histogram
    got = stats.stats_and_detail(
        torch.from_numpy(r).to(device), torch.from_numpy(p).to(device), 1e-5, 1e-5, detail=True
    )
    assert stats.backend_for(torch.from_numpy(r), torch.from_numpy(p)) == "torch"
    _assert_same(*got, r, p)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_backend_handles_non_finite_values_blocks_and_errors_over_forty_decades(device, monkeypatch):
    r, p = _pair((64, 64), seed=5, lo=-35, hi=4)
    p.flat[7], r.flat[9], p.flat[9], r.flat[20] = np.nan, np.inf, np.inf, -np.inf
    monkeypatch.setattr(common, "BLOCK", 500)  # several blocks of rows, combined
    got = _torch.compare(torch.from_numpy(r).to(device), torch.from_numpy(p).to(device), 1e-5, 1e-5, True, 0)
    assert got[0].n_nonfinite == 2 and got[0].nonfinite_mismatch == 2
    _assert_same(*got, r, p)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_backend_takes_half_precision_float64_and_a_numpy_side(device):
    r, p = _pair((96, 200), seed=9)
    rt, pt = torch.from_numpy(r).to(device), torch.from_numpy(p).to(device)
    # a numpy reference and a tensor port meet on the tensor's device
    _assert_same(*_torch.compare(r, pt, 1e-4, 1e-3, True, 0), r, p, atol=1e-4, rtol=1e-3)
    r64, p64 = r.astype(np.float64), p.astype(np.float64)
    _assert_same(*stats.stats_and_detail(rt.double(), pt.double(), 1e-5, 1e-5, detail=True), r64, p64)
    rb, pb = rt.to(torch.bfloat16), pt.to(torch.bfloat16)
    s, det = stats.stats_and_detail(rb, pb, 1e-2, 1e-2, detail=True)
    _assert_same(s, det, rb.float().cpu().numpy(), pb.float().cpu().numpy(), atol=1e-2, rtol=1e-2, ties=True)


def test_pairs_the_torch_backend_declines_are_read_on_the_host():
    r, p = _pair((10, 12))
    c = torch.from_numpy(r).to(torch.complex64)
    assert _torch.compare(c, c, 1e-5, 1e-5, False, 0) is None
    s, _ = stats.stats_and_detail(c, c, 1e-5, 1e-5)  # complex: numpy, on the host
    assert s.max_abs == 0 and s.size == r.size
    w = torch.from_numpy(r).requires_grad_()
    s, det = stats.stats_and_detail(w, torch.from_numpy(p), 1e-5, 1e-5, detail=True)
    _assert_same(s, det, r, p)
    assert stats.pair_kind(w, np.zeros(1)) == "torch"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("poison", [False, True])
def test_torch_fingerprints_and_max_abs_diff_equal_the_numpy_backend(device, poison):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((300, 200)) * 3 + 1).astype(np.float32)
    if poison:
        a[1, 1], a[2, 2], a[3, 3] = np.nan, np.inf, -np.inf
    t = torch.from_numpy(a).to(device)
    n, s1, s2, lo, hi = stats.fingerprint_sums(t)
    b = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    assert n == a.size and (lo, hi) == (b.min(), b.max())
    assert s1 == pytest.approx(b.sum(), rel=1e-9) and s2 == pytest.approx((b * b).sum(), rel=1e-9)
    p = a + np.float32(1e-3)
    got = stats.max_abs_diff(t, torch.from_numpy(p).to(device))
    if poison:
        assert np.isnan(got)  # NaN anywhere gives NaN, as the other backends do
    else:
        assert got == pytest.approx(float(np.max(np.abs(a - p))), rel=1e-6)
