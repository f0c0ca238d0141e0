"""The device path (activations kept as torch tensors and ``jax.Array``, statistics where they live) gives the
host path's report.

On a GPU machine a CUDA model (or JAX on its GPU) takes this path by itself; here ``XFDIFF_DEVICE_STATS=1``
makes CPU tensors and CPU JAX arrays take it, so the same code runs in every session.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("jax")

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from reach_models import NnxLM, lm_pair, lm_params, randomize, tap_forward, token_ids, torch_from_nnx  # noqa: E402
from reach_models import TorchLM as ReachLM  # noqa: E402

import xfdiff  # noqa: E402
from xfdiff import demo  # noqa: E402
from xfdiff.capture._common import keep_on_device  # noqa: E402
from xfdiff.capture.from_torch import DEVICE_ENV, TorchSide  # noqa: E402
from xfdiff.capture.registry import side_for  # noqa: E402
from xfdiff.stats import meet  # noqa: E402
from xfdiff.stats.dispatch import stats_and_detail  # noqa: E402

FIELDS = ("max_abs", "mean_abs", "rel_l2", "tol_needed", "frac_outside")


def _both(monkeypatch, pt, port, inputs, **kw):
    monkeypatch.setenv(DEVICE_ENV, "0")
    host = xfdiff.compare(pt, port, inputs, progress=False, **kw)
    monkeypatch.setenv(DEVICE_ENV, "1")
    meet.reset_moves()
    dev = xfdiff.compare(pt, port, inputs, progress=False, **kw)
    dev.meta["_moves"] = meet.moves()
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
    assert [f.torch_path for f in host.findings] == [f.torch_path for f in dev.findings]
    assert host.meta.get("verdict") == dev.meta.get("verdict")


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


# --- one switch, both sides ---------------------------------------------------------------------


def test_one_switch_decides_for_both_sides(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "1")
    assert keep_on_device(False) and keep_on_device(True)
    monkeypatch.setenv(DEVICE_ENV, "0")
    assert not keep_on_device(True) and not keep_on_device(False)
    monkeypatch.delenv(DEVICE_ENV)
    assert keep_on_device(True) and not keep_on_device(False)


@pytest.mark.parametrize("framework", ["linen", "nnx", "jax"])
def test_forced_jax_captures_keep_jax_arrays(monkeypatch, framework):
    if framework == "linen":
        _, port, ids = demo.build_demo()
    elif framework == "nnx":
        _, port, ids = lm_pair()
    else:
        pt = randomize(ReachLM())
        port, ids = (tap_forward, lm_params(pt)), token_ids()
    monkeypatch.setenv(DEVICE_ENV, "1")
    side = side_for(port, ids)
    trace = side.capture()
    assert trace.meta["on_device"] and trace.framework == framework
    outs = [v for rec in trace.records for v in rec.outputs.values()]
    assert len(trace.records) > 1 and outs and all(isinstance(v, jax.Array) for v in outs)
    monkeypatch.setenv(DEVICE_ENV, "0")
    trace = side_for(port, ids).capture()
    assert not trace.meta["on_device"]
    assert all(isinstance(v, np.ndarray) for rec in trace.records for v in rec.outputs.values())
    monkeypatch.setenv(DEVICE_ENV, "1")
    trace = side_for(port, ids).capture()
    meet.reset_moves()
    xfdiff.trace.trace_to_host(trace)
    assert all(isinstance(v, np.ndarray) for rec in trace.records for v in rec.outputs.values())
    assert meet.moves()["host_values"] >= len(outs) and not trace.meta["on_device"]


# --- the same report on both paths ----------------------------------------------------------------


def _nnx_pair(bug: bool):
    return lm_pair(bugs={1: {"eps": 1e-2}} if bug else None)


def _tap_pair(bug: bool):
    pt = randomize(ReachLM())
    fn = functools.partial(tap_forward, bug_layer=1) if bug else tap_forward
    return pt, (fn, lm_params(pt)), token_ids()


def _reverse_pair(bug: bool):
    ref = NnxLM(nnx_rngs())
    port = torch_from_nnx(ref, {1: {"eps": 1e-2}} if bug else None)
    return port, ref, token_ids(1)


def nnx_rngs():
    from flax import nnx

    return nnx.Rngs(3)


PAIRS = {"linen": lambda bug: demo.build_demo(bug=bug), "nnx": _nnx_pair, "tap": _tap_pair, "reverse": _reverse_pair}


def _device_report(monkeypatch, pair: str, bug: bool, local: bool):
    """The device path's report of ``pair``, checked equal to the host path's."""
    pt, port, ids = PAIRS[pair](bug)
    kw = {"reference": "flax"} if pair == "reverse" else {}
    host, dev = _both(monkeypatch, pt, port, ids, local=local, **kw)
    _assert_same(host, dev)
    return dev


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("pair", ["linen", "nnx", "tap", "reverse"])
def test_buggy_port_gives_the_same_report_on_both_paths(monkeypatch, pair, local):
    dev = _device_report(monkeypatch, pair, True, local)
    assert dev.first_divergence is not None
    assert dev.meta["torch_meta"]["on_device"] and dev.meta["flax_meta"].get("on_device", True)
    moved = dev.meta["_moves"]["host_values"]
    assert moved > 0, "the detectors read the blamed rows on the host"


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("pair", ["linen", "nnx", "tap", "reverse"])
def test_clean_port_moves_nothing_to_the_host(monkeypatch, pair, local):
    dev = _device_report(monkeypatch, pair, False, local)
    assert dev.first_divergence is None and not dev.findings
    moves = dev.meta["_moves"]
    # Statistics, fingerprints, layout checks and the language-model metrics all run where the values are.
    assert moves["host_values"] == 0 and moves["host_fallbacks"] == 0, moves


@pytest.mark.parametrize("local", [True, False])
def test_a_buggy_run_moves_only_the_rows_it_reads(monkeypatch, local):
    pt, port, ids = demo.build_demo(bug=True)
    monkeypatch.setenv(DEVICE_ENV, "1")
    meet.reset_moves()
    r = xfdiff.compare(pt, port, ids, progress=False, local=local)
    moved = meet.moves()["host_values"]
    monkeypatch.setenv(DEVICE_ENV, "0")
    n_ref = len(TorchSide(pt, ids).capture().records)
    # every record holds at least one value on each side: moving everything would be >= 2 * n_ref
    assert 0 < moved < n_ref, (moved, n_ref)
    assert r.first_divergence.torch_path == demo.BUG_PATH


# --- DLPack ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dlpack_hands_values_over_without_a_copy(dtype):
    t = torch.arange(24, dtype=getattr(torch, dtype)).reshape(4, 6) / 7
    meet.reset_moves()
    j = meet.to_jax(t)
    assert isinstance(j, jax.Array) and j.dtype == jnp.dtype(dtype) and j.shape == (4, 6)
    np.testing.assert_array_equal(np.asarray(j, np.float32), t.float().numpy())
    back = meet.to_torch(j)
    assert back.dtype == t.dtype and torch.equal(back, t)
    assert meet.moves()["host_fallbacks"] == 0 and meet.moves()["host_values"] == 0
    if dtype == "float32":  # zero-copy: the tensor and the JAX array share their buffer
        assert back.data_ptr() == t.data_ptr()
    s, det = stats_and_detail(t, j, 1e-6, 1e-6, detail=True)  # a mixed pair meets on one device
    assert s.max_abs == 0.0 and s.frac_outside == 0.0 and det is not None


def test_a_non_contiguous_tensor_is_made_contiguous_first():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert not t.is_contiguous()
    meet.reset_moves()
    j = meet.to_jax(t)
    np.testing.assert_array_equal(np.asarray(j), t.numpy())
    assert meet.moves()["host_fallbacks"] == 0


def test_a_mixed_pair_is_measured_like_the_host_pair():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 48)).astype(np.float32)
    b = a + rng.standard_normal((64, 48)).astype(np.float32) * 1e-3
    host, hdet = stats_and_detail(a, b, 1e-4, 1e-4, detail=True)
    dev, ddet = stats_and_detail(torch.from_numpy(a), jnp.asarray(b), 1e-4, 1e-4, detail=True)
    for f in ("max_abs", "mean_abs", "rel_l2", "tol_needed", "frac_outside"):
        assert getattr(dev, f) == pytest.approx(getattr(host, f), rel=1e-4)
    assert set(ddet) == set(hdet)
    assert meet.device_of(jnp.asarray(b)) == ("cpu", 0) == meet.device_of(torch.from_numpy(a))


# --- parameters on the device ----------------------------------------------------------------


def test_parameters_stay_on_the_device_and_confirm_layouts_there(monkeypatch):
    """On the device path the captured weights are the framework's own arrays (no host copy), and
    confirming a fingerprint match under a layout gives the host's answer without moving them."""
    from xfdiff.capture.from_linen import LinenSide
    from xfdiff.layout import param_transform

    pt, port, ids = demo.build_demo(bug=False)
    monkeypatch.setenv(DEVICE_ENV, "1")
    tt = TorchSide(pt, ids).capture()
    tf = LinenSide(port, ids).capture()
    w_t = tt.params["blocks.0.mlp.fc1"]["weight"]
    w_f = tf.params["blocks.0.mlp.fc1"]["kernel"]
    assert isinstance(w_t, torch.Tensor) and isinstance(w_f, jax.Array)
    rng = np.random.default_rng(0)
    meet.reset_moves()
    for shape in [(6, 4), (64, 300), (8, 4, 3, 3), (16,)]:
        w = rng.standard_normal(shape).astype(np.float32)
        views = [w, w.T, w.T.reshape(-1, w.shape[0])] + ([w.transpose(2, 3, 1, 0)] if w.ndim == 4 else [])
        for v in views:
            v = np.ascontiguousarray(v)
            want = param_transform(w, v, full=False)
            assert want is not None
            assert param_transform(torch.from_numpy(w), jnp.asarray(v), full=False) == want
            assert param_transform(jnp.asarray(w), torch.from_numpy(v), full=False) == want
        other = rng.standard_normal(shape).astype(np.float32)
        assert param_transform(torch.from_numpy(w), jnp.asarray(other), full=False) is None
    assert meet.moves()["host_values"] == 0, meet.moves()
    assert param_transform(w_t, w_f, full=False) == "transpose"


def test_language_model_metrics_on_the_device_equal_the_host_ones():
    from xfdiff.lm_metrics import lm_metrics

    rng = np.random.default_rng(0)
    r = rng.standard_normal((2, 16, 300)).astype(np.float32)
    p = r + rng.standard_normal(r.shape).astype(np.float32) * 0.05
    p[0, 3] = r[0, 3, ::-1]  # a clear top-1 disagreement
    p[1, 5, int(np.argmax(r[1, 5]))] -= 1e-6  # a near tie at most
    r[1, 2, 7] = np.inf  # a non-finite position: KL inf
    host = lm_metrics(r, p, 1e-3, 1e-3)
    meet.reset_moves()
    dev = lm_metrics(torch.from_numpy(r), jnp.asarray(p), 1e-3, 1e-3)
    assert meet.moves()["host_values"] == 0, meet.moves()
    assert host["disagreements"] == dev["disagreements"] and host["disagreements"]
    assert host["near_ties"] == dev["near_ties"]
    for k in ("kl_mean", "kl_max", "top1", "top1_excluding_near_ties", "top5"):
        assert dev[k] == pytest.approx(host[k], rel=1e-9), k
    np.testing.assert_allclose(dev["kl"], host["kl"], rtol=1e-9)


# --- no implicit numpy conversion ---------------------------------------------------------------


def _refuse_numpy(self, *args, **kwargs):
    raise TypeError("can't convert this tensor to numpy implicitly (a CUDA tensor refuses it)")


@pytest.mark.parametrize(
    "pair, bug, where, pitfall",
    [
        ("demo", True, demo.BUG_PATH, "gelu_approximate"),
        ("merged_qkv_pair", True, "layers.1.attn", "attention_scale"),
        ("merged_qkv_pair", False, None, None),
    ],
)
def test_the_device_path_never_asks_a_tensor_for_numpy_implicitly(monkeypatch, pair, bug, where, pitfall):
    """``np.asarray(cuda_tensor)`` raises; on the CPU it would silently work, so the device path is
    run here with that conversion refused: capture, rows, teacher forcing, verdict and diagnosis."""
    import warnings

    import port_styles

    pt, port, x = demo.build_demo(bug=bug) if pair == "demo" else getattr(port_styles, pair)(bug)
    monkeypatch.setenv(DEVICE_ENV, "1")
    monkeypatch.setattr(torch.Tensor, "__array__", _refuse_numpy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = xfdiff.compare(pt, port, x, progress=False, local=True)
    assert not [w for w in caught if "xfdiff" in str(w.message)], [str(w.message) for w in caught]
    fd = r.first_divergence
    assert (fd.torch_path if fd else None) == where, r.summary()
    assert [f.pitfall for f in r.findings][:1] == ([pitfall] if pitfall else []), r.summary()


# --- one side on the device ---------------------------------------------------------------------


@pytest.mark.parametrize("on_device", ["torch", "jax"])
@pytest.mark.parametrize("bug", [False, True])
def test_one_side_on_the_device_gives_the_host_report(monkeypatch, on_device, bug):
    """A torch reference on the CPU against a JAX port on its GPU (or the other way round): host
    numpy meets device arrays in every stage, with the same report as all on the host."""
    import xfdiff.capture.from_torch as from_torch
    from xfdiff.capture import _jax

    pt, port, ids = demo.build_demo(bug=bug)
    monkeypatch.setenv(DEVICE_ENV, "0")
    host = xfdiff.compare(pt, port, ids, progress=False, local=True)
    monkeypatch.setenv(DEVICE_ENV, "1")
    if on_device == "torch":
        monkeypatch.setattr(_jax, "device_mode", lambda: False)
        for mod in ("xfdiff.capture.from_linen", "xfdiff.capture.jax_record"):
            monkeypatch.setattr(f"{mod}.device_mode", lambda: False)
    else:
        monkeypatch.setattr(from_torch, "device_mode", lambda model: False)
    mixed = xfdiff.compare(pt, port, ids, progress=False, local=True)
    assert bool(mixed.meta["torch_meta"]["on_device"]) == (on_device == "torch")
    _assert_same(host, mixed)


@pytest.mark.parametrize(
    "rs, ps",
    [
        ((2, 3, 4, 5), (2, 4, 5, 3)),
        ((2, 4, 5, 3), (2, 3, 4, 5)),
        ((2, 3, 4, 5), (2, 3, 5, 4)),
        ((2, 3, 4, 5), (2, 4, 3, 5)),
        ((2, 3, 4, 5), (2, 4, 15)),
        ((2, 4, 15), (2, 3, 4, 5)),
        ((2, 3, 4, 5, 6), (2, 4, 5, 6, 3)),
        ((1, 8, 6), (2, 8, 6)),
        ((8, 6), (2, 8, 6)),
    ],
)
def test_layout_changes_marked_on_device_keep_torch_and_jax_values_where_they_are(rs, ps):
    from xfdiff.layout import candidates

    a = np.random.default_rng(0).standard_normal(rs).astype(np.float32)
    moves = [t for t in candidates(rs, ps) if t.on_device]
    assert moves
    for t in moves:
        want = t.forward(a)
        assert isinstance(want, np.ndarray) and want.shape == ps
        for dev in (torch.from_numpy(a), jnp.asarray(a)):
            got = t.forward(dev)
            assert type(got) is type(dev) or isinstance(got, jax.Array), (t.name, type(got))
            np.testing.assert_array_equal(meet.to_host(got), want)
            np.testing.assert_array_equal(meet.to_host(t.inverse(got)), a)
