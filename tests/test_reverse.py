"""``reference="flax"``: a JAX model is the reference and the PyTorch model is the port."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from reach_models import NnxLM, cnn_variables, token_ids, torch_from_nnx
from reach_models import TorchCNN as _TorchCNN

import xfdiff


@pytest.fixture(scope="module")
def nnx_reference():
    return NnxLM(nnx.Rngs(3)), token_ids(1)


def test_clean_torch_port_of_an_nnx_model_has_no_divergence(nnx_reference):
    ref, ids = nnx_reference
    r = xfdiff.compare(torch_from_nnx(ref), ref, ids, reference="flax")
    assert r.reference == "flax" and r.first_divergence is None and not r.diverged
    assert r.meta["n_param_modules_aligned"] == r.meta["n_param_modules_torch"]
    assert r.layer("layers.0.attention.query").layout == "merge_heads"  # flax (B,T,H,D) -> torch (B,T,H*D)
    # Freshly initialised norms (scale 1, bias 0) identify nothing: paired by order, and said so.
    assert r.layer("layers.0.norm1").match == "order+shape" and r.layer("layers.0.norm1").confidence == 0.5
    assert all(lyr.local_max_abs is not None for lyr in r.layers)


@pytest.mark.parametrize(
    "bugs, culprit",
    [
        ({1: {"eps": 1e-2}}, ("blocks.1.ln1", "layers.1.norm1")),
        ({0: {"approximate": "tanh"}}, ("blocks.0.mlp.act", "layers.0.ffn.activation")),
    ],
)
def test_bug_in_the_torch_port_is_named_by_its_flax_path(nnx_reference, bugs, culprit):
    ref, ids = nnx_reference
    port = torch_from_nnx(ref, bugs)
    r = xfdiff.compare(port, ref, ids, reference="flax", diagnose=False)
    fd = r.first_divergence
    assert (fd.flax_path, fd.torch_path) == (culprit[1], culprit[0])
    assert fd.local_max_abs > 10 * fd.atol
    # The port was forced through pre-hooks: nothing of them is left on the model.
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in port.modules())


def test_rows_follow_the_reference_execution_order(nnx_reference):
    ref, ids = nnx_reference
    r = xfdiff.compare(torch_from_nnx(ref), ref, ids, reference="flax", local=False, diagnose=False)
    flax_order = [lyr.flax_path for lyr in r.layers]
    assert flax_order.index("layers.0.ffn.up") < flax_order.index("layers.0.ffn") < flax_order.index("layers.1.norm1")


def test_torch_cnn_port_of_an_nhwc_linen_reference():
    from reach_models import LinenCNN

    torch.manual_seed(1)
    base = _TorchCNN().eval()
    variables = cnn_variables(base)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    clean = xfdiff.compare(base, (LinenCNN(), variables), x, flax_inputs=x_nhwc, reference="flax")
    assert clean.first_divergence is None
    assert clean.layer("Conv_0").layout == "NHWC->NCHW"

    with torch.no_grad():
        base.conv2.weight.copy_(base.conv2.weight.flip(-1))  # the port mirrors the kernel
    r = xfdiff.compare(base, (LinenCNN(), variables), x, flax_inputs=x_nhwc, reference="flax", diagnose=False)
    assert (r.first_divergence.flax_path, r.first_divergence.torch_path) == ("Conv_1", "conv2")
