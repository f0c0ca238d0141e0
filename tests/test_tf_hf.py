"""Hugging Face PyTorch models vs their TensorFlow ``TF*`` classes (tf-keras), weights shared.

The scenarios live in tests/tf_hf_pairs.py and run in one subprocess; this
module imports no TensorFlow.
"""

from __future__ import annotations

import pytest
from tf_subprocess import run_script

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def results():
    return run_script("tf_hf_pairs.py")


@pytest.mark.parametrize("name", ["bert", "gpt2", "bart", "vit", "convnext"])
def test_clean_pairs_match(results, name):
    r = results[name]
    assert r["verdict"] == "match"
    assert r["first_divergence"] is None and r["findings"] == []
    assert r["final_status"] == "ok"
    done, total = r["aligned"]
    assert total >= 10 and done / total >= 0.95
    assert r["left_unchanged"]


def test_tf_function_capture(results):
    assert results["bert"]["mode"] == "tf.function"
    assert results["gpt2"]["mode"] == "eager"


def test_tanh_gelu_found_at_intermediate(results):
    r = results["bert_tanh_gelu"]
    assert r["first_divergence"] == "encoder.layer.0.intermediate"
    assert r["findings"][0] == ["gelu_approximate", "encoder.layer.0.intermediate"]


def test_layernorm_epsilon_found(results):
    r = results["vit_ln_eps"]
    assert r["first_divergence"] == "encoder.layer.0.layernorm_before"
    assert r["findings"][0] == ["norm_epsilon", "encoder.layer.0.layernorm_before"]


def test_transposed_kernel_found(results):
    r = results["bert_transposed_query"]
    assert r["first_divergence"] == "encoder.layer.0.attention.self.query"
    assert r["findings"][0] == ["transposed_weight", "encoder.layer.0.attention.self.query"]


def test_tf_reference_pytorch_port_bug_named_by_torch_path(results):
    r = results["gpt2_reverse_ln_eps"]
    assert r["first_divergence"] == "h.1.ln.2"
    assert r["findings"][0] == ["norm_epsilon", "h.1.ln.2"]
