"""A Hugging Face PyTorch ``LlamaForCausalLM`` against a function-style JAX port (transformers 4.x and 5.x).

transformers 5 has no Flax classes, so the JAX side is the user's own code
(``jax_llama.py``): functions over a converted params pytree, marked with
``xfdiff.tap``. Its names differ from torch's; parameter fingerprints pair them.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from jax_llama import llama_forward, tiny_hf_pair  # noqa: E402

import xfdiff  # noqa: E402

EPS_BUG = "layers.0.mlp_norm"  # the port's name for model.layers.0.post_attention_layernorm
ROPE_BUG_LAYER = 1


@pytest.fixture(scope="module")
def llama():
    """(torch model, port config, params, inputs): HF's own random init, seed 0."""
    pt, port_cfg, params, ids = tiny_hf_pair()
    return pt, port_cfg, params, {"input_ids": ids}


def _port(port_cfg, **bugs):
    return functools.partial(llama_forward, cfg=port_cfg, **bugs)


def test_clean_port_has_no_divergence_and_pairs_renamed_modules_by_fingerprint(llama):
    pt, port_cfg, params, inputs = llama
    with torch.no_grad():
        ref = pt(input_ids=torch.from_numpy(inputs["input_ids"])).logits.numpy()
    logits = jax.jit(_port(port_cfg))(params, inputs["input_ids"])
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5, rtol=1e-5)

    r = xfdiff.compare(pt, (_port(port_cfg), params), inputs)
    assert r.first_divergence is None, r.summary()
    assert r.final is not None and r.final.status == "ok" and r.final.max_abs < 1e-5
    assert r.meta["n_param_modules_aligned"] >= 0.9 * r.meta["n_param_modules_torch"], r.unmatched
    assert not [u for u in r.unmatched if u.has_params]
    pairs = {lyr.torch_path: lyr.flax_path for lyr in r.layers}
    for i in range(2):
        for t, f in (("self_attn.q_proj", "attn.q"), ("self_attn.k_proj", "attn.k"), ("mlp.down_proj", "mlp.down")):
            assert pairs[f"model.layers.{i}.{t}"] == f"layers.{i}.{f}"
            assert r.layer(f"model.layers.{i}.{t}").match.startswith("fingerprint")
    assert pairs["model.layers.1.self_attn"] == "layers.1.attn"
    assert pairs["model.layers.0.post_attention_layernorm"] == EPS_BUG
    assert not r.findings


def test_rms_norm_epsilon_bug_is_first_divergence_and_diagnosed(llama):
    # HF initialises embeddings with std 0.02: mean(x^2) ~ 4e-4, so eps 1e-5 vs 1e-6 moves the output ~1%.
    pt, port_cfg, params, inputs = llama
    r = xfdiff.compare(pt, (_port(port_cfg, eps_overrides={EPS_BUG: 1e-5}), params), inputs)
    fd = r.first_divergence
    assert fd is not None, r.summary()
    assert (fd.torch_path, fd.flax_path) == ("model.layers.0.post_attention_layernorm", EPS_BUG)
    assert r.layer("model.layers.0.input_layernorm").local_status == "ok"
    assert r.layer("model.layers.0.self_attn").local_status == "ok"
    f = r.findings[0]
    assert (f.pitfall, f.torch_path) == ("norm_epsilon", "model.layers.0.post_attention_layernorm")
    assert f.evidence["reference_eps"] == pytest.approx(1e-6)
    assert f.evidence["port_eps"] == pytest.approx(1e-5, rel=1e-3)  # recovered from the data


def test_interleaved_rope_bug_is_blamed_on_the_attention_code_of_its_layer(llama):
    pt, port_cfg, params, inputs = llama
    r = xfdiff.compare(pt, (_port(port_cfg, interleaved_rope_layers=(ROPE_BUG_LAYER,)), params), inputs)
    fd = r.first_divergence
    assert fd is not None, r.summary()
    assert fd.torch_path == f"model.layers.{ROPE_BUG_LAYER}.self_attn"
    assert fd.flax_path == f"layers.{ROPE_BUG_LAYER}.attn"
    assert r.layer("model.layers.0.self_attn").status == "ok"  # layer 0 rotates correctly
    for proj in ("q_proj", "o_proj"):  # the projections around the RoPE code are right when fed the reference
        assert r.layer(f"model.layers.{ROPE_BUG_LAYER}.self_attn.{proj}").local_status == "ok"
    f = r.findings[0]
    assert (f.pitfall, f.torch_path) == ("rope_layout", f"model.layers.{ROPE_BUG_LAYER}.self_attn")
    assert (f.evidence["reference_rope"], f.evidence["port_rope"]) == ("half", "interleaved")
    assert (f.evidence["heads"], f.evidence["kv_heads"]) == (port_cfg.num_heads, port_cfg.num_kv_heads)


def test_with_both_bugs_the_earlier_one_is_the_first_divergence(llama):
    pt, port_cfg, params, inputs = llama
    port = _port(port_cfg, eps_overrides={EPS_BUG: 1e-5}, interleaved_rope_layers=(ROPE_BUG_LAYER,))
    r = xfdiff.compare(pt, (port, params), inputs)
    assert r.first_divergence.torch_path == "model.layers.0.post_attention_layernorm"
    found = {(f.pitfall, f.torch_path) for f in r.findings}
    assert {
        ("norm_epsilon", "model.layers.0.post_attention_layernorm"),
        ("rope_layout", f"model.layers.{ROPE_BUG_LAYER}.self_attn"),
    } <= found
