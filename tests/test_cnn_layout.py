"""A NCHW PyTorch CNN against its NHWC linen port with automatic names (``Conv_0``, ``Dense_0``)."""

from __future__ import annotations

import pytest
from reach_models import cnn_pair

import xfdiff


@pytest.fixture(scope="module")
def clean():
    pt, port, x, x_nhwc = cnn_pair()
    return xfdiff.compare(pt, port, x, flax_inputs=x_nhwc)


def test_auto_named_nhwc_port_is_aligned_and_clean(clean):
    pairs = {lyr.torch_path: lyr.flax_path for lyr in clean.layers}
    assert pairs == {"conv1": "Conv_0", "conv2": "Conv_1", "fc": "Dense_0", "": ""}
    assert clean.meta["n_param_modules_aligned"] == clean.meta["n_param_modules_torch"] == 3
    assert clean.first_divergence is None and not clean.diverged


def test_layout_and_parameter_transform_are_shown_per_row(clean):
    conv2 = clean.layer("conv2")
    assert conv2.torch_shape == conv2.flax_shape == (2, 4, 4, 4)  # C == H == W: decided by values
    assert conv2.layout == "NCHW->NHWC" and conv2.match == "fingerprint (OIHW->HWIO)"
    assert clean.layer("conv1").layout == "NCHW->NHWC"
    # The dense kernel's rows follow the NHWC flatten: same values, another order.
    assert clean.layer("fc").match == "fingerprint (permuted)"
    assert clean.layer("fc").local_status == "ok"  # its forced input was reordered, not fed as is


def test_parameter_free_torch_modules_without_a_counterpart_are_listed(clean):
    assert {u.path for u in clean.unmatched if u.side == "torch"} == {"act1", "pool", "act2", "flatten"}


def test_mirrored_kernel_is_found_at_its_layer():
    pt, port, x, x_nhwc = cnn_pair(flip_conv=True)
    r = xfdiff.compare(pt, port, x, flax_inputs=x_nhwc, diagnose=False)
    fd = r.first_divergence
    assert (fd.torch_path, fd.flax_path) == ("conv2", "Conv_1")
    assert fd.layout == "NCHW->NHWC"  # a wrong layer still keeps its neighbours' layout
    assert r.layer("conv1").status == "ok"
