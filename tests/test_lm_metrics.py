"""Language-model metrics at the final logits: KL, top-1 agreement, top-5 overlap, near ties."""

from __future__ import annotations

import functools

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from jax_llama import llama_forward, tiny_hf_pair  # noqa: E402

import xfdiff  # noqa: E402
from xfdiff.lm_metrics import lm_metrics  # noqa: E402

EPS_BUG = "layers.0.mlp_norm"  # the port's name for model.layers.0.post_attention_layernorm


@pytest.fixture(scope="module")
def llama():
    pt, port_cfg, params, ids = tiny_hf_pair(vocab=128, seq=12, lm_head_std=1.0)
    return pt, port_cfg, params, {"input_ids": ids}


def _port(port_cfg, **bugs):
    return functools.partial(llama_forward, cfg=port_cfg, **bugs)


def test_clean_causal_lm_pair_agrees_on_every_top_token(llama):
    pt, port_cfg, params, inputs = llama
    r = xfdiff.compare(pt, (_port(port_cfg), params), inputs)
    lm = r.lm
    assert lm is not None and lm["positions"] == 24 and lm["vocab"] == 128
    assert lm["top1"] + len(lm["near_ties"]) / 24 == pytest.approx(1.0)  # every flip, if any, is a near tie
    assert lm["disagreements"] == [] and lm["top5"] > 0.99
    assert lm["kl_max"] < 1e-9
    assert r.final.lm_top1 == lm["top1"] and r.final.lm_near_ties == len(lm["near_ties"])
    assert "top-1 agreement" in r.summary()
    assert r.splice is None


def test_planted_bug_in_causal_lm_reports_kl_top1_top5_and_splice(llama):
    pt, port_cfg, params, inputs = llama
    r = xfdiff.compare(pt, (_port(port_cfg, eps_overrides={EPS_BUG: 1e-2}), params), inputs)
    lm = r.lm
    assert lm["kl_mean"] > 1e-3, lm["kl_mean"]
    assert lm["top1"] < 1.0 and lm["disagreements"]
    assert 0 < lm["top5"] < 1.0
    assert r.final.lm_kl_mean == lm["kl_mean"] and r.final.lm_top5 == lm["top5"]
    text = r.summary()
    assert "KL(ref||port)" in text and "top-5 overlap" in text
    # the tapped JAX port is spliced through its taps: the epsilon accounts for all of the error
    fd = r.first_divergence
    assert fd.flax_path == EPS_BUG and r.splice["first_suffices"], r.summary()
    assert fd.splice_share > 0.99 and r.findings[0].pitfall == "norm_epsilon" and r.findings[0].fix_share > 0.99


def test_near_tie_flip_is_not_a_disagreement():
    ref = np.zeros((1, 3, 60))
    ref[0, :, 7] = 4.0
    ref[0, 1, 9] = 4.0 - 1e-6  # position 1: tokens 7 and 9 nearly tied
    port = ref.copy()
    port[0, 1, 9] += 3e-6  # a rounding-size change flips it
    port[0, 2, 11] = 9.0  # position 2: a real disagreement
    m = lm_metrics(ref, port, atol=1e-5, rtol=1e-5)
    assert m["near_ties"] == [[0, 1]] and m["disagreements"] == [[0, 2]]
    assert m["top1"] == pytest.approx(1 / 3) and m["top1_excluding_near_ties"] == pytest.approx(2 / 3)
    assert m["kl"][0] == 0.0 and m["kl"][2] > 1.0


def test_non_logit_outputs_get_no_language_model_metrics():
    from splice_models import pair

    pt, fx, x = pair()  # final output (2, 8, 32): not a vocabulary
    assert xfdiff.compare(pt, fx, x).lm is None
