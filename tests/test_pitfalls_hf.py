"""Pitfalls injected into real Hugging Face Flax models (transformers 4.x, tiny random BERT).

The Flax model is built from a changed config (``hidden_act``, ``layer_norm_eps``)
or run in training mode, and gets the PyTorch model's weights; xfdiff must
name the pitfall at the layer where it first shows.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
jax = pytest.importorskip("jax")

import xfdiff  # noqa: E402

BASE = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
IDS = np.random.default_rng(0).integers(3, 100, (2, 8))
INPUTS = {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}


def bert_pair(pt_kw=None, fx_kw=None, initializer_range=0.02):
    """A PyTorch BertModel and a FlaxBertModel with the same weights and (possibly) different configs."""
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    base = {**BASE, "initializer_range": initializer_range}
    torch.manual_seed(0)
    pt = transformers.BertModel(transformers.BertConfig(**base, **(pt_kw or {}))).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = transformers.FlaxBertModel(transformers.BertConfig(**base, **(fx_kw or {})), seed=0)
        fx.params = convert_pytorch_state_dict_to_flax(pt.state_dict(), fx)
    return pt, fx


def _layer_findings(report):
    return [f for f in report.findings if f.confidence != "setting"]


def test_flax_bert_with_gelu_new_is_diagnosed_at_the_first_intermediate():
    # initializer_range 0.2 spreads pre-activations to where tanh and erf GELU differ (|x| ~ 2.7)
    pt, fx = bert_pair({"hidden_act": "gelu"}, {"hidden_act": "gelu_new"}, initializer_range=0.2)
    report = xfdiff.compare(pt, fx, INPUTS, progress=False)
    assert report.first_divergence.torch_path == "encoder.layer.0.intermediate"
    found = _layer_findings(report)
    assert {f.pitfall for f in found} == {"gelu_approximate"}
    assert found[0].torch_path == "encoder.layer.0.intermediate"
    assert (found[0].evidence["reference_variant"], found[0].evidence["port_variant"]) == ("erf", "tanh")
    assert found[0].evidence["explained"] > 0.99
    assert [f.torch_path for f in found] == ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]


def test_reference_flax_bert_tanh_gelu_names_the_torch_fix():
    pt, fx = bert_pair({"hidden_act": "gelu"}, {"hidden_act": "gelu_new"}, initializer_range=0.2)
    report = xfdiff.compare(pt, fx, INPUTS, progress=False, reference="flax")
    f = _layer_findings(report)[0]
    assert (f.pitfall, f.torch_path) == ("gelu_approximate", "encoder.layer.0.intermediate")
    assert f.fix == "nn.GELU(approximate='tanh')"


def test_flax_bert_layer_norm_eps_is_recovered_at_the_embedding_layernorm():
    pt, fx = bert_pair({}, {"layer_norm_eps": 1e-5})
    report = xfdiff.compare(pt, fx, INPUTS, progress=False)
    assert report.first_divergence.torch_path == "embeddings.LayerNorm"
    f = _layer_findings(report)[0]
    assert (f.pitfall, f.torch_path) == ("norm_epsilon", "embeddings.LayerNorm")
    assert f.evidence["reference_eps"] == pytest.approx(1e-12)
    assert f.evidence["recovered_eps"] == pytest.approx(1e-5, rel=0.1)


def test_flax_bert_run_with_train_true_has_dropout_active():
    pt, fx = bert_pair()
    flax_inputs = {**INPUTS, "train": True, "dropout_rng": jax.random.PRNGKey(0)}
    report = xfdiff.compare(pt, fx, INPUTS, flax_inputs=flax_inputs, progress=False)
    found = _layer_findings(report)
    assert [(f.pitfall, f.torch_path) for f in found] == [("dropout_active", "embeddings.dropout")]
    assert found[0].evidence["kept_scale"] == pytest.approx(1 / 0.9, rel=1e-5)
    assert len(found[0].evidence["also_at"]) >= 2


def test_clean_flax_bert_has_no_findings():
    pt, fx = bert_pair(initializer_range=0.2)
    report = xfdiff.compare(pt, fx, INPUTS, progress=False)
    assert report.first_divergence is None and report.findings == []
