"""A finding must beat its control (issue 11, item 5).

A hypothesis is reported only when the correct formula, on the same data, leaves clearly more of the
accused side's value unexplained than the hypothesis does, and that departure is clearly above the
site's rounding floor. Precision hypotheses are matched on both sides (the reference may be the one that
rounds), and the norm family also runs on norms written inline in a composite module's code.

Pairs: Hugging Face's ``LlamaForCausalLM`` (tiny, random init) against the function-style JAX port in
``jax_llama.py``. TF32 and bf16 matmuls are emulated on CPU by rounding the operands.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from jax_llama import llama_forward, tiny_hf_pair  # noqa: E402

import xfdiff  # noqa: E402
from xfdiff.pitfalls.sites import Site  # noqa: E402

ATTENTION_IDS = {"inverted_mask", "mask_fill", "rope_layout", "gqa_mapping", "attention_scale"}


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """Round to TF32's 10-bit mantissa (nearest even), in the tensor's own dtype."""
    m, e = torch.frexp(t)
    return torch.ldexp(torch.round(m * 2048) / 2048, e)


class TF32Linear(torch.nn.Linear):
    """A Linear whose matmul operands are rounded to TF32 in its own code (any dtype)."""

    def forward(self, x):
        return torch.nn.functional.linear(tf32_round(x), tf32_round(self.weight), self.bias)


class CudaTF32Linear(torch.nn.Linear):
    """Like an Ampere+ GPU with ``allow_tf32``: float32 matmuls round their operands, float64 ones do not."""

    def forward(self, x):
        if x.dtype != torch.float32:
            return super().forward(x)
        return torch.nn.functional.linear(tf32_round(x), tf32_round(self.weight), self.bias)


@pytest.fixture(scope="module")
def llama():
    """(config, port config, params, inputs with a padded row): HF's own random init, seed 0."""
    pt, port_cfg, params, ids = tiny_hf_pair(hidden=64, seq=12)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # a padded row: the attention sites have a boolean/additive mask to get wrong
    return pt.config, port_cfg, params, {"input_ids": ids, "attention_mask": mask}


def _torch_llama(cfg, tf32=None):
    torch.manual_seed(0)
    pt = transformers.LlamaForCausalLM(cfg).eval()
    if tf32 is not None:
        for m in pt.modules():
            if type(m) is torch.nn.Linear:
                m.__class__ = tf32
    return pt


def _compare(llama, tf32=None, **port_kw):
    cfg, port_cfg, params, inputs = llama
    port = functools.partial(llama_forward, cfg=port_cfg, **port_kw)
    return xfdiff.compare(_torch_llama(cfg, tf32), (port, params), inputs, progress=False)


def test_tf32_reference_against_an_exact_port_names_the_reference_side(llama):
    r = _compare(llama, tf32=TF32Linear)
    assert r.first_divergence is not None  # the reference's own code rounds: its rows differ from the port
    assert [f.pitfall for f in r.findings] == ["tf32_matmul"], [(f.pitfall, f.torch_path) for f in r.findings]
    (f,) = r.findings
    assert f.evidence["rounded_side"] == "reference"
    assert (f.evidence["reference_precision"], f.evidence["port_precision"]) == ("tf32", "fp32")
    assert f.message.startswith("The reference's matmuls are rounded to TF32; the port is exact")
    assert f.evidence["eh"] <= 3e-7 < 10 * f.evidence["eh"] < f.evidence["correct_residual"]
    assert f.evidence["also_at"]  # one setting behind every projection: reported once
    assert "allow_tf32 = False" in f.fix
    # the attention sites differ only by what the projections passed on: no mask/attention finding
    assert not ATTENTION_IDS & {g.pitfall for g in r.findings}


def test_gpu_style_tf32_reference_is_within_its_rounding_floor_and_gets_no_finding(llama):
    # The float64 recomputation of the floor is exact, as on a GPU: the reference's TF32 rounding is its
    # floor, the exact port is within it, and the attention sites get no finding either.
    r = _compare(llama, tf32=CudaTF32Linear)
    assert r.verdict == "match" and r.first_divergence is None, r.summary()
    assert r.findings == []
    judged = [lyr for lyr in r.layers if lyr.floor is not None and lyr.floor_error is not None]
    assert any(lyr.torch_path.endswith("q_proj") and lyr.floor_error < lyr.floor / 10 for lyr in judged)


def test_bf16_port_gets_bf16_matmul_and_nothing_else(llama):
    r = _compare(llama, matmul="bf16")
    assert r.first_divergence.torch_path == "model.layers.0.self_attn.q_proj"
    assert [(f.pitfall, f.torch_path) for f in r.findings] == [("bf16_matmul", "model.layers.0.self_attn.q_proj")]
    f = r.findings[0]
    assert (f.evidence["rounded_side"], f.evidence["precision"]) == ("port", "bf16")
    assert f.message.startswith("The port's matmul uses bfloat16 operands")
    # the attention segments were blamed for what their projections passed on, and stay silent
    assert any(lyr.torch_path.endswith("self_attn") and lyr.blame_order is not None for lyr in r.layers)


@pytest.mark.parametrize(
    "variant,eps,pid,key,value",
    [
        ("ddof1", None, "std_ddof", "port_ddof", 1),
        ("rsqrt_fp16", None, "rsqrt", "rsqrt_precision", "fp16"),
        ("exact", 1e-5, "norm_epsilon", "port_eps", 1e-5),
    ],
)
def test_inline_rms_norm_bug_is_named_at_the_enclosing_layer(llama, variant, eps, pid, key, value):
    bugs = {"eps_overrides": {"layers.0.attn_norm": eps, "layers.1.attn_norm": eps}} if eps else {}
    r = _compare(llama, inline_norm=variant, **bugs)
    assert r.first_divergence.torch_path == "model.layers.0"
    got = [(f.pitfall, f.torch_path) for f in r.findings]
    assert got[0] == (pid, "model.layers.0") and {p for p, _ in got} == {pid}, got
    f = r.findings[0]
    assert f.evidence["site"] == "segment" and f.evidence["inline"] is True
    assert f.evidence["where"] == "model.layers.0.self_attn"  # the child whose input the inline norm made
    assert f.evidence[key] == value and f.evidence["kind"] == "rms"
    assert f.evidence["explained"] >= 0.99


def test_correct_inline_norm_matches(llama):
    r = _compare(llama, inline_norm="exact")
    assert r.verdict == "match" and r.first_divergence is None and r.findings == []


# --- the rule itself --------------------------------------------------------------------------


def _site(y_ref, y_port, floor=None):
    row = SimpleNamespace(layer=SimpleNamespace(floor=floor))
    return Site(row=row, kind="segment", reference="torch", y_ref=y_ref, y_port=y_port)


def test_rule_hypothesis_must_beat_the_correct_formula_on_the_same_data():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((4, 16))
    site = _site(y, y * 1.01)  # e0 = 1e-2: the two sides differ a lot
    # the correct formula explains the port as well as the hypothesis (both at noise): not reported
    assert not site.confirmed(eh=1.3e-7, control=2.4e-7, correct=2.4e-7)
    # the correct formula leaves 1e-2 unexplained, the hypothesis 1e-8: reported
    assert site.confirmed(eh=1e-8, control=2.4e-7, correct=1e-2)
    # the hypothesis is better, but not clearly: not reported
    assert not site.confirmed(eh=4e-3, control=2.4e-7, correct=1e-2)
    # the control does not reproduce the reference: nothing can be said
    assert not site.confirmed(eh=1e-8, control=1e-3, correct=1e-2)


def test_rule_departure_must_be_clearly_above_the_measured_rounding_floor():
    y = np.ones((4, 16))
    assert _site(y, y).floor == pytest.approx(5e-7)  # float32 default
    noisy = _site(y, y, floor=1e-4)  # the verdict measured this computation's rounding at 1e-4 (RMSE; rms(y) = 1)
    assert noisy.floor == pytest.approx(1e-4)
    assert not noisy.confirmed(eh=1e-8, control=1e-7, correct=5e-4)  # 5x the floor: not clearly above
    assert noisy.confirmed(eh=1e-8, control=1e-7, correct=5e-3)
