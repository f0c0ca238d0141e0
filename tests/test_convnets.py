"""Convnets: grouped/depthwise kernels, BatchNorm statistics and shortcuts pair by their values."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convnet_models import resnet_pair  # noqa: E402

import xfdiff  # noqa: E402


def _coverage(report) -> float:
    return report.meta["n_param_modules_aligned"] / report.meta["n_param_modules_torch"]


def test_torchvision_style_resnet_aligns_with_an_auto_named_linen_port():
    pt, port, x, xh = resnet_pair()
    r = xfdiff.compare(pt, port, x, flax_inputs=xh)
    assert _coverage(r) >= 0.95, [u.path for u in r.unmatched if u.has_params]
    assert r.first_divergence is None and not r.findings, r.summary()
    assert r.layer("layer1.1.conv2").flax_path == "LinenBlock_1.Conv_1"  # grouped
    assert r.layer("layer2.0.conv2").flax_path == "LinenBlock_2.Conv_1"  # depthwise
    assert r.layer("layer2.1.downsample.1").flax_path == "LinenBlock_3.BatchNorm_2"  # shortcut norm
    assert r.layer("layer1.0.conv1").match == "fingerprint (OIHW->HWIO)"  # a 1x1 kernel is named as a kernel
    assert r.layer("layer1.0").flax_path == "LinenBlock_0" and r.layer("layer1.0").layout == "NCHW->NHWC"


def test_flipped_depthwise_kernel_is_found_at_its_convolution():
    pt, port, x, xh = resnet_pair(flip_block=2)
    r = xfdiff.compare(pt, port, x, flax_inputs=xh)
    assert _coverage(r) >= 0.95
    assert r.first_divergence.torch_path == "layer2.0.conv2"
    assert r.layer("layer1.1.conv2").local_status == "ok"


pytest.importorskip("transformers")
from hf_pairs import CONVNETS, make_pair  # noqa: E402


@pytest.mark.hf
@pytest.mark.parametrize("name", CONVNETS)
def test_hf_convnet_aligns_every_convolution_and_batchnorm(name):
    pt, fx, inputs = make_pair(name)
    r = xfdiff.compare(pt, fx, inputs)
    assert _coverage(r) >= 0.95, [u.path for u in r.unmatched if u.has_params]
    assert r.first_divergence is None and not r.findings, r.summary()
    norms = [lyr for lyr in r.layers if lyr.torch_type == "BatchNorm2d"]
    assert norms and all(lyr.match.startswith("fingerprint") for lyr in norms)


@pytest.mark.hf
def test_hf_resnet_bug_in_one_convolution_is_found_there():
    pt, fx, inputs = make_pair("resnet-bottleneck")
    fx = copy.copy(fx)
    params = copy.deepcopy(fx.params)
    conv = params["params"]["resnet"]["encoder"]["stages"]["1"]["layers"]["0"]["layer"]["1"]["convolution"]
    conv["kernel"] = np.asarray(conv["kernel"])[::-1, ::-1].copy()  # a 3x3 kernel flipped spatially
    fx.params = params
    r = xfdiff.compare(pt, fx, inputs)
    assert r.first_divergence.torch_path == "resnet.encoder.stages.1.layers.0.layer.1.convolution"
