"""The device path (activations kept as torch tensors, statistics by the torch backend) gives the host path's report.

On a GPU machine a CUDA model takes this path by itself; here ``XFDIFF_DEVICE_STATS=1`` makes CPU
tensors take it, so the same code runs in every session.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("jax")

import xfdiff  # noqa: E402
from xfdiff import demo  # noqa: E402
from xfdiff.capture.from_torch import DEVICE_ENV, TorchSide  # noqa: E402

FIELDS = ("max_abs", "mean_abs", "rel_l2", "tol_needed", "frac_outside")


def _both(monkeypatch, pt, port, inputs, **kw):
    monkeypatch.setenv(DEVICE_ENV, "0")
    host = xfdiff.compare(pt, port, inputs, progress=False, **kw)
    monkeypatch.setenv(DEVICE_ENV, "1")
    dev = xfdiff.compare(pt, port, inputs, progress=False, **kw)
    return host, dev


def _assert_same(host, dev):
    assert [(r.torch_path, r.flax_path, r.call_index, r.status) for r in host.layers] == [
        (r.torch_path, r.flax_path, r.call_index, r.status) for r in dev.layers
    ]
    for a, b in zip(host.layers, dev.layers, strict=True):
        for f in FIELDS:
            assert getattr(b, f) == pytest.approx(getattr(a, f), rel=1e-4, abs=1e-9), (a.torch_path, f)
        assert (a.local_status, a.blame_order, a.torch_dtype, a.torch_shape) == (
            b.local_status,
            b.blame_order,
            b.torch_dtype,
            b.torch_shape,
        )
        assert set(a.detail or {}) == set(b.detail or {}), a.torch_path
    fa, fb = host.first_divergence, dev.first_divergence
    assert (fa and fa.torch_path) == (fb and fb.torch_path)
    assert [f.pitfall for f in host.findings] == [f.pitfall for f in dev.findings]


def test_forced_device_capture_keeps_tensors_on_their_device(monkeypatch):
    pt, _, ids = demo.build_demo()
    monkeypatch.setenv(DEVICE_ENV, "1")
    trace = TorchSide(pt, ids).capture()
    assert trace.meta["on_device"]
    outs = [v for rec in trace.records for v in rec.outputs.values()]
    assert outs and all(isinstance(v, torch.Tensor) and not v.requires_grad for v in outs)
    monkeypatch.setenv(DEVICE_ENV, "0")
    trace = TorchSide(pt, ids).capture()
    assert not trace.meta["on_device"]
    assert all(isinstance(v, np.ndarray) for rec in trace.records for v in rec.outputs.values())


@pytest.mark.parametrize("local", [False, True])
def test_demo_bug_found_alike_on_the_device_path(monkeypatch, local):
    pt, port, ids = demo.build_demo(bug=True)
    host, dev = _both(monkeypatch, pt, port, ids, local=local)
    _assert_same(host, dev)
    assert dev.first_divergence is not None and dev.first_divergence.torch_path == demo.BUG_PATH


def test_clean_port_is_clean_on_the_device_path_and_moves_nothing_to_the_host(monkeypatch):
    pt, port, ids = demo.build_demo(bug=False)
    host, dev = _both(monkeypatch, pt, port, ids, local=False)
    _assert_same(host, dev)
    assert all(r.status == "ok" for r in dev.layers) and not dev.findings


def test_flax_reference_with_a_torch_port_on_the_device_path(monkeypatch):
    pt, port, ids = demo.build_demo(bug=True)
    host, dev = _both(monkeypatch, pt, port, ids, local=True, reference="flax")
    _assert_same(host, dev)
