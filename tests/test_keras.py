"""Hand-written Keras 3 ports of small PyTorch models, on the JAX and TensorFlow backends.

The scenarios live in tests/keras_ports.py and run in one subprocess per
backend (Keras 3 reads ``KERAS_BACKEND`` at its first import); this module
imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from tf_subprocess import ROOT, run_script

BACKENDS = ("jax", "tensorflow")


@pytest.fixture(scope="module", params=BACKENDS)
def results(request):
    return run_script("keras_ports.py", env={"KERAS_BACKEND": request.param})


def test_backend_and_traced_capture(results):
    assert results["backend"] in BACKENDS
    # the forward ran traced (tf.function / jax.jit), not op by op
    assert results["block_clean"]["mode"] == {"jax": "jax.jit", "tensorflow": "tf.function"}[results["backend"]]
    assert results["block_keras_ln_eps_eager"]["mode"] == "eager"


@pytest.mark.parametrize("case", ["block_clean", "conv_clean"])
def test_clean_ports_match(results, case):
    r = results[case]
    assert r["first_divergence"] is None and r["findings"] == [] and r["final_status"] == "ok"
    assert r["aligned"][0] == r["aligned"][1] == 3
    assert r["left_unchanged"]


def test_subclassed_paths_are_attribute_names(results):
    assert results["block_clean"]["pairs"] == {"": "", "fc1": "fc1", "ln": "ln", "fc2": "fc2"}
    # functional layers are named by the names the port gave them
    assert {results["conv_clean"]["pairs"][k] for k in ("conv", "bn", "head")} == {"conv", "bn", "head"}


@pytest.mark.parametrize("case", ["block_keras_ln_eps", "block_keras_ln_eps_eager"])
def test_keras_layernorm_epsilon_named(results, case):
    r = results[case]
    assert r["first_divergence"] == "ln"
    pitfall, path, eps = r["findings"][0]
    assert (pitfall, path) == ("norm_epsilon", "ln") and eps == pytest.approx(1e-3, rel=0.05)


def test_keras_batchnorm_default_epsilon_named(results):
    r = results["conv_keras_bn_defaults"]
    assert r["first_divergence"] == "bn"
    pitfall, path, eps = r["findings"][0]
    assert (pitfall, path) == ("norm_epsilon", "bn") and eps == pytest.approx(1e-3, rel=0.05)


def test_keras_gelu_tanh_default_found(results):
    r = results["block_tanh_gelu"]
    assert r["first_divergence"] == ""  # the activation is the root's own code (keras.ops.gelu)
    assert r["findings"][0][:2] == ["gelu_approximate", ""]


def test_same_padding_stride2_found(results):
    r = results["conv_same_padding"]
    assert r["first_divergence"] == "conv"
    assert r["findings"][0][:2] == ["same_padding", "conv"]


def test_keras_reference_pytorch_port(results):
    r = results["reverse_ln_eps"]
    assert r["first_divergence"] == "ln"
    assert r["findings"][0][:2] == ["norm_epsilon", "ln"]


def test_bad_input_errors(results):
    e = results["errors"]
    assert e["never_built"][:2] == ["ModelTypeError", True] and "never built or called" in e["never_built"][2]
    assert "set_weights" in e["never_built"][2]
    assert e["wrong_rank"][:2] == ["InputError", True] and "rank 4" in e["wrong_rank"][2]
    assert "channels_last" in e["wrong_rank"][2]
    assert e["keras_first"][:2] == ["ModelTypeError", True] and "reference='keras'" in e["keras_first"][2]
    assert e["forward_raises"][:2] == ["CaptureError", True] and "unchanged" in e["forward_raises"][2]
    assert e["bad_reference"][:2] == ["ConfigError", True] and "'keras'" in e["bad_reference"][2]
    assert e["left_unchanged"]


def test_layer_call_that_is_a_tf_function(results):
    if results["backend"] != "tensorflow":
        pytest.skip("tf.function is TensorFlow's")
    r = results["tf_function_call"]
    assert r["mode"] == "tf.function" and r["first_divergence"] == "ln"
    assert r["findings"][0][:2] == ["norm_epsilon", "ln"]
    assert set(r["pairs"]) == {"", "fc1", "ln", "fc2"}  # the layers inside the cached graph are recorded
    assert r["left_unchanged"]


def test_keras_settings_reported(results):
    assert results["jit_compile_findings"] == ["xla_jit_compile"]
    assert "mixed_precision" in results["mixed_precision_findings"]


def test_test_modules_import_no_tensorflow():
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_keras, test_tf_hf; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
