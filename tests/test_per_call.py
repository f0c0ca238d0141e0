"""What keeps the cost of each aligned call low must not change any result.

A small row's detail is computed on first read (:class:`xfdiff.rows.LazyDetail`),
and a tensor that several hooks see is copied once per value. Both are
checked here against the eager computation on a real torch / Flax pair.
"""

from __future__ import annotations

import copy
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toy_models import pair  # noqa: E402

import xfdiff  # noqa: E402
from xfdiff.align import align  # noqa: E402
from xfdiff.capture.from_torch import DEVICE_ENV, TorchSide  # noqa: E402
from xfdiff.capture.registry import PORT, REFERENCE, side_for  # noqa: E402
from xfdiff.rows import LazyDetail, call_pairs, make_row  # noqa: E402
from xfdiff.stats import as_tolerance  # noqa: E402


@pytest.fixture(autouse=True)
def _host_path(monkeypatch):
    """Lazy detail and the copy memo are the host path's (the device path measures where values live)."""
    monkeypatch.setenv(DEVICE_ENV, "0")


def _same_detail(a: dict, b: dict, flat: bool = False) -> bool:
    """Same keys and arrays (``flat``: a saved 0-d array comes back with one element)."""
    if set(a) != set(b):
        return False
    shaped = np.ravel if flat else np.asarray
    return all(np.array_equal(shaped(a[k]), shaped(b[k]), equal_nan=True) for k in a)


def _rows(lazy: bool):
    pt, port, x = pair(d=16, n=3, tanh_gelu_in=1)
    ref = side_for(pt, x, REFERENCE).capture()
    prt = side_for(port, x, PORT).capture()
    al = align(ref, prt)
    pairs = call_pairs(al, ref, prt, "torch")
    tol = as_tolerance(None)
    rows = [make_row(pairs[rec.key], rec, tol, "torch", lazy=lazy) for rec in prt.records if rec.key in pairs]
    return [r for r in rows if r is not None]


def test_lazy_detail_equals_eager_detail_on_a_real_pair():
    lazy, eager = _rows(lazy=True), _rows(lazy=False)
    assert len(lazy) == len(eager) > 5
    assert any(r.layer.status != "ok" for r in lazy)  # the tanh GELU shows: detail of diverged rows too
    waiting = [r for r in lazy if isinstance(r.layer.detail, LazyDetail) and not r.layer.detail.computed]
    assert len(waiting) == len(lazy)  # small host rows: nothing computed yet
    assert not any(isinstance(r.layer.detail, LazyDetail) for r in eager)
    for lr, er in zip(lazy, eager, strict=True):
        assert lr.layer.max_abs == er.layer.max_abs and lr.layer.status == er.layer.status
        assert "worst_index" in er.layer.detail
        assert _same_detail(lr.layer.detail, er.layer.detail), lr.layer.label
        assert lr.layer.detail.computed


def test_lazy_detail_reads_like_a_dict():
    row = _rows(lazy=True)[3]
    det = row.layer.detail
    plain = dict(det)  # before anything else is read: dict() must fill it first
    assert plain and set(plain) == set(det.keys()) and len(det) == len(plain)
    assert _same_detail({**det}, plain) and _same_detail(det.copy(), plain)
    assert det == plain and not (det != plain)
    assert det.get("nope", 7) == 7 and "hist_counts" in det
    for kind in (copy.deepcopy(row.layer).detail, pickle.loads(pickle.dumps(row.layer)).detail):
        assert type(kind) is dict and _same_detail(kind, plain)


def test_save_and_load_round_trip_a_lazy_detail(tmp_path):
    pt, port, x = pair(d=16, n=3, tanh_gelu_in=1)
    report = xfdiff.compare(pt, port, x, local=False, diagnose=False, progress=False)
    lazy = [lyr for lyr in report.layers if isinstance(lyr.detail, LazyDetail)]
    assert lazy and not any(lyr.detail.computed for lyr in lazy)
    loaded = xfdiff.load(report.save(tmp_path / "r.xfd"))
    assert len(loaded.layers) == len(report.layers)
    for a, b in zip(report.layers, loaded.layers, strict=True):
        assert a.detail and _same_detail(a.detail, b.detail, flat=True), a.label
    assert _same_detail(report.final.detail, loaded.final.detail, flat=True)
    assert "<html" in Path(report.to_html(tmp_path / "r.html")).read_text()[:2000].lower()


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


class _Outer(torch.nn.Module):
    """Returns its child's output as is (one tensor, two hooks), then the same child's output changed in place."""

    def __init__(self):
        super().__init__()
        self.inner = _Inner()
        self.again = _Inner()

    def forward(self, x):
        y = self.inner(x)  # Outer returns this very tensor: Outer, inner and inner.lin all output it
        z = self.again(y)
        z.mul_(2.0)  # written in place after again and again.lin returned it
        return y, z


def test_a_tensor_output_by_nested_modules_is_copied_once():
    torch.manual_seed(0)
    model = _Outer().eval()
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    trace = TorchSide(model, x).capture()
    rec = trace.by_key()
    root, inner, lin = rec[""], rec["inner"], rec["inner.lin"]
    assert inner.outputs["out"] is lin.outputs["out"]  # one copy for one value
    assert root.outputs["out.0"] is inner.outputs["out"]
    assert rec["inner.lin"].outputs["out"] is rec["again"].inputs["args.0"]
    # Written in place in between: a new copy, and the earlier record keeps the value it saw.
    again, final = rec["again"].outputs["out"], root.outputs["out.1"]
    assert again is rec["again.lin"].outputs["out"]
    assert final is not again
    np.testing.assert_allclose(final, 2.0 * again, rtol=1e-6)
    with torch.no_grad():
        want = model.again(model.inner(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(again, want, rtol=1e-6)
