"""Pitfall detectors on twin models: each fires on its broken port at the injected
layer, with its id, and stays silent on the correct port."""

from __future__ import annotations

import math
import warnings

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from pitfall_twins import (
    D,
    FHandNorm,
    T,
    TRMSNorm,
    attn_twin,
    boundary_twin,
    conv_twin,
    emb_twin,
    mlp_twin,
    norm_twin,
    rand,
)

from xfdiff.pitfalls import REGISTRY, TF_ENV_IDS, Detector, pitfall_ids


def _x(scale=1.0, shift=0.0):
    return rand((2, T, D), scale, shift)


def x64_twin(broken):
    """Float64 torch reference; the port runs with jax_enable_x64 off (broken) or on (correct)."""
    tw = mlp_twin("x64_disabled", "mlp.fc1", False, dtype=torch.float64, kwargs={"tolerance": 1e-9})
    tw.flax_inputs = (tw.inputs[0].numpy(),)
    tw.clean_key = "x64"
    if not broken:
        tw.context = jax.enable_x64(True)
    return tw


def _ln():
    return torch.nn.LayerNorm(D)


# pitfall id -> builder(broken) of its twin; the port is broken at Twin.torch_path.
TWINS = {
    "gelu_approximate": lambda b: mlp_twin("gelu_approximate", "mlp", b, port_kw={"act": "tanh"}),
    "activation_constant": lambda b: mlp_twin(
        "activation_constant", "mlp", b, leaky=True, port_kw={"act": "leaky0.2"}, clean_kw={"act": "leaky0.01"}
    ),
    "bf16_matmul": lambda b: mlp_twin("bf16_matmul", "mlp.fc1", b, port_kw={"fc1_fmt": "bf16"}),
    "tf32_matmul": lambda b: mlp_twin("tf32_matmul", "mlp.fc1", b, port_kw={"fc1_fmt": "tf32"}),
    "transposed_weight": lambda b: mlp_twin("transposed_weight", "mlp.fc2", b, hidden=32, transposed_fc2=True),
    "missing_bias": lambda b: mlp_twin("missing_bias", "mlp.fc1", b, port_kw={"fc1_bias": False}),
    "dropout_active": lambda b: mlp_twin(
        "dropout_active", "mlp.drop", b, dropout=True, port_kw={"dropout_active": True}
    ),
    "x64_disabled": x64_twin,
    "norm_epsilon": lambda b: norm_twin(
        "norm_epsilon", b, ref=_ln(), port=nn.LayerNorm(), clean=nn.LayerNorm(epsilon=1e-5), x=_x(0.05, 0.02)
    ),
    "std_ddof": lambda b: norm_twin("std_ddof", b, ref=_ln(), port=FHandNorm(ddof=1), clean=FHandNorm(), x=_x()),
    "fast_variance": lambda b: norm_twin(
        "fast_variance",
        b,
        ref=_ln(),
        port=nn.LayerNorm(epsilon=1e-5),
        clean=nn.LayerNorm(epsilon=1e-5, use_fast_variance=False),
        x=_x(1.0, 30.0),
    ),
    "rsqrt": lambda b: norm_twin(
        "rsqrt",
        b,
        ref=TRMSNorm(1e-6),
        port=FHandNorm(kind="rms", eps=1e-6, rsqrt_bf16=True),
        clean=FHandNorm(kind="rms", eps=1e-6),
        x=_x(),
    ),
    "rmsnorm_one_plus": lambda b: norm_twin(
        "rmsnorm_one_plus",
        b,
        ref=TRMSNorm(1e-6, plus_one=True),
        port=nn.RMSNorm(epsilon=1e-6),
        clean=FHandNorm(kind="rms", eps=1e-6, plus_one=True),
        x=_x(),
    ),
    "batchnorm_stats": lambda b: conv_twin("batchnorm_stats", "bn", b, port_kw={"bn_running": False}),
    "same_padding": lambda b: conv_twin("same_padding", "conv", b, stride=2, port_kw={"padding": "SAME"}),
    "conv_kernel_layout": lambda b: conv_twin("conv_kernel_layout", "conv", b, kernel="swap", port_kw={}),
    "channel_layout": lambda b: conv_twin("channel_layout", "head.fc", b, port_kw={"flatten": "HWC"}),
    "rope_layout": lambda b: attn_twin("rope_layout", b, port_kw={"rope": "interleaved"}),
    "gqa_mapping": lambda b: attn_twin("gqa_mapping", b, kv_heads=2, port_kw={"kv_map": "tile"}),
    "mask_fill": lambda b: attn_twin("mask_fill", b, pad=slice(0, 3), port_kw={"zero_empty_rows": False}),
    "inverted_mask": lambda b: attn_twin(
        "inverted_mask", b, causal=False, pad=slice(5, None), port_kw={"invert_mask": True}
    ),
    "attention_scale": lambda b: attn_twin("attention_scale", b, port_kw={"scale": 1.0}),
    "position_offset": lambda b: emb_twin("position_offset", "emb.pos", b, ref_kw={"offset": 2}, port_kw={"offset": 0}),
    "embedding_scale": lambda b: emb_twin(
        "embedding_scale", "emb", b, ref_kw={"offset": 0, "scale": math.sqrt(D)}, port_kw={"scale": 1.0}
    ),
    "boundary_shift": boundary_twin,
}
REQUIRED = (
    "rsqrt",
    "std_ddof",
    "bf16_matmul",
    "gelu_approximate",
    "norm_epsilon",
    "tf32_matmul",
    "transposed_weight",
    "missing_bias",
    "rope_layout",
    "mask_fill",
    "dropout_active",
    "same_padding",
    "channel_layout",
    "rmsnorm_one_plus",
    "position_offset",
    "embedding_scale",
    "gqa_mapping",
    "x64_disabled",
    "batchnorm_stats",
)

_BROKEN: dict[str, object] = {}
_CLEAN: dict[str, object] = {}


def broken_report(pid):
    if pid not in _BROKEN:
        _BROKEN[pid] = TWINS[pid](True).compare()
    return _BROKEN[pid]


def clean_report(pid):
    tw = TWINS[pid](False)
    if tw.clean_key not in _CLEAN:
        _CLEAN[tw.clean_key] = tw.compare()
    return _CLEAN[tw.clean_key]


def layer_findings(report):
    """Findings tied to a layer by a detector (environment checks carry confidence 'setting')."""
    return [f for f in report.findings if f.confidence != "setting"]


def test_every_id_xfdiff_can_report_has_a_twin():
    # Settings of a TensorFlow/Keras model are checked in tests/test_keras.py (TensorFlow in a subprocess).
    assert set(pitfall_ids()) - set(TF_ENV_IDS) == set(TWINS)
    assert set(REQUIRED) <= set(TWINS)


@pytest.mark.parametrize("pid", sorted(TWINS))
def test_detector_fires_at_the_injected_layer(pid):
    tw = TWINS[pid](True)
    report = broken_report(pid)
    if pid == "boundary_shift":  # a boundary is a note beside a matching verdict, never a divergence
        assert report.verdict == "match" and report.first_divergence is None and report.findings == []
        assert report.boundaries[0]["label"] == tw.torch_path and "scale" in report.boundaries[0]["why"]
        return
    assert report.first_divergence is not None and report.first_divergence.torch_path == tw.torch_path
    found = layer_findings(report)
    assert [f.pitfall for f in found] == [pid]
    f = found[0]
    assert f.torch_path == tw.torch_path and f.message and f.fix
    assert f.evidence["e0"] > 0 if "e0" in f.evidence else f.pitfall == "boundary_shift"


@pytest.mark.parametrize("pid", sorted(TWINS))
def test_detector_is_silent_on_the_correct_port(pid):
    report = clean_report(pid)
    assert report.first_divergence is None
    assert report.findings == []


@pytest.mark.parametrize("pid", [p for p in sorted(TWINS) if p not in ("x64_disabled", "boundary_shift")])
def test_confirmed_hypothesis_explains_the_error(pid):
    f = layer_findings(broken_report(pid))[0]
    assert f.evidence["explained"] >= 0.9
    assert f.evidence["control"] <= f.evidence["e0"] / 10


def _evidence(pid):
    return layer_findings(broken_report(pid))[0].evidence


def test_norm_family_pitfalls_are_told_apart():
    family = ("norm_epsilon", "std_ddof", "rsqrt", "fast_variance", "rmsnorm_one_plus")
    got = {pid: [(f.pitfall, f.torch_path) for f in layer_findings(broken_report(pid))] for pid in family}
    assert got == {pid: [(pid, "norm")] for pid in family}


def test_recovered_constants_match_the_injected_ones():
    assert _evidence("norm_epsilon")["recovered_eps"] == pytest.approx(1e-6, rel=0.05)
    assert _evidence("norm_epsilon")["port_eps"] == pytest.approx(1e-6)
    assert _evidence("std_ddof")["port_ddof"] == 1
    assert _evidence("rsqrt")["rsqrt_precision"] == "bf16"
    drop = _evidence("dropout_active")
    assert drop["kept_scale"] == pytest.approx(1 / 0.9, rel=1e-5)
    assert abs(drop["zero_fraction"] - 0.1) < 0.05
    assert _evidence("position_offset")["offset"] == -2
    assert _evidence("position_offset")["port_ids_minus_reference_ids"] == [-2]
    assert _evidence("embedding_scale")["scale"] == pytest.approx(1 / math.sqrt(D), rel=1e-4)
    assert _evidence("same_padding")["port_padding"] == [[0, 1], [0, 1]]
    assert _evidence("transposed_weight")["port_weight_is_transposed"] is True
    assert _evidence("missing_bias")["port_has_bias"] is False
    assert _evidence("gqa_mapping")["exact_heads"] == [0, 3]
    assert _evidence("bf16_matmul")["precision"] == "bf16"
    assert _evidence("tf32_matmul")["precision"] == "tf32_trunc"
    assert _evidence("batchnorm_stats")["port_statistics"] == "batch"
    assert _evidence("mask_fill")["port_empty_rows"] == "mean"
    assert _evidence("rope_layout")["error_at_position_0"] < 1e-6 < _evidence("rope_layout")["error_after_position_0"]


def test_fix_is_written_for_the_port_framework():
    assert "approximate=False" in layer_findings(broken_report("gelu_approximate"))[0].fix
    assert "epsilon=1e-05" in layer_findings(broken_report("norm_epsilon"))[0].fix
    assert "jnp.repeat" in layer_findings(broken_report("gqa_mapping"))[0].fix


def test_reference_flax_names_the_torch_port():
    tw = mlp_twin("gelu_approximate", "mlp", True, port_kw={"act": "tanh"}, kwargs={"reference": "flax"})
    report = tw.compare()
    (f,) = layer_findings(report)
    assert (f.pitfall, f.torch_path) == ("gelu_approximate", "mlp")
    assert (f.evidence["reference_variant"], f.evidence["port_variant"]) == ("tanh", "erf")
    assert f.fix == "nn.GELU(approximate='tanh')"


def test_flatten_order_without_a_layout_transform_blames_the_flattening_module():
    # H != W: no legal flatten transform fits, so the Dense gets the same features and its parent is blamed
    tw = conv_twin("channel_layout", "head", True, hw=(8, 6), port_kw={"flatten": "HWC"})
    report = tw.compare()
    assert report.first_divergence.torch_path == "head"
    (f,) = layer_findings(report)
    assert (f.pitfall, f.torch_path) == ("channel_layout", "head")
    assert f.evidence["site"] == "segment" and (f.evidence["channels"], f.evidence["height"]) == (8, 8)


def test_a_failing_detector_does_not_stop_the_others(monkeypatch):
    def boom(site):
        raise RuntimeError("detector bug")

    monkeypatch.setattr("xfdiff.pitfalls.REGISTRY", [Detector("boom", ("x",), ("call", "segment"), 0, boom), *REGISTRY])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = TWINS["missing_bias"](True).compare()
    assert [f.pitfall for f in layer_findings(report)] == ["missing_bias"]
    assert any("detector boom failed" in str(w.message) for w in caught)


# --- environment checks -------------------------------------------------------------------------


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def test_environment_flags_torch_training_mode_without_changing_the_model():
    from xfdiff.pitfalls import environment_checks

    tw = TWINS["batchnorm_stats"](False)
    pt = tw.pt.train()
    drop = TWINS["dropout_active"](False).pt.train()
    before = _state(pt)
    found = environment_checks(pt, tw.port) + environment_checks(drop, None)
    after = _state(pt)
    assert [(f.pitfall, f.torch_path) for f in found] == [("batchnorm_stats", "bn"), ("dropout_active", "mlp.drop")]
    assert all(f.confidence == "setting" and f.fix == "pt_model.eval()" for f in found)
    assert before[1] == after[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_environment_is_quiet_for_an_eval_float32_pair_on_cpu():
    from xfdiff.pitfalls import environment_checks

    tw = TWINS["same_padding"](False)
    assert environment_checks(tw.pt, tw.port) == []


def test_environment_flags_float64_reference_with_x64_off():
    report = broken_report("x64_disabled")
    env = [f for f in report.findings if f.confidence == "setting"]
    assert [(f.pitfall, f.torch_path) for f in env] == [("x64_disabled", None)]
    f = layer_findings(report)[0]
    assert 0.2 <= f.evidence["ratio"] <= 5 and f.evidence["also_at"]


def test_numerics_emulate_tf32_and_bf16_rounding():
    from xfdiff.pitfalls.numerics import round_to

    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    trunc = round_to(x, "tf32_trunc").astype(np.float32)
    assert np.all(trunc.view(np.uint32) & 0x1FFF == 0)
    assert np.all(np.abs(round_to(x, "tf32") - x) <= np.abs(x) * 2.0**-11)
    import ml_dtypes

    assert np.array_equal(round_to(x, "bf16"), x.astype(ml_dtypes.bfloat16).astype(np.float64))


def test_rows_within_tolerance_are_not_diagnosed():
    report = clean_report("gelu_approximate")
    assert report.findings == [] and not report.diverged


@pytest.mark.parametrize("backend,pid", [("tpu", "bf16_matmul"), ("gpu", "tf32_matmul")])
def test_environment_flags_default_matmul_precision_on_accelerators(monkeypatch, backend, pid):
    # No TPU/GPU here: the backend query is replaced, the precision flag is the real one.
    from xfdiff.pitfalls import environment_checks

    tw = TWINS["same_padding"](False)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    found = environment_checks(tw.pt, tw.port)
    assert [(f.pitfall, f.evidence["backend"]) for f in found] == [(pid, backend)]
    assert "highest" in found[0].fix
    with jax.default_matmul_precision("highest"):
        assert environment_checks(tw.pt, tw.port) == []
