"""The built-in demo: a real PyTorch model, a real Flax port, one planted bug that xfdiff must find."""

from __future__ import annotations

import numpy as np
import pytest

import xfdiff
from xfdiff import demo


def test_build_demo_returns_torch_model_flax_pair_and_ids():
    import torch
    from flax import linen as nn

    pt_model, (module, variables), ids = demo.build_demo()
    assert isinstance(pt_model, torch.nn.Module) and not pt_model.training
    assert isinstance(module, nn.Module) and "params" in variables
    assert ids.shape == (demo.BATCH, demo.SEQ) and ids.dtype == np.int64


def test_demo_port_without_bug_matches_reference_everywhere():
    pt_model, port, ids = demo.build_demo(bug=False)
    report = xfdiff.compare(pt_model, port, ids, progress=False)
    assert report.first_divergence is None
    assert not report.diverged


def test_demo_first_divergence_is_the_planted_bug(demo_report):
    fd = demo_report.first_divergence
    assert fd is not None
    assert fd.torch_path == demo.BUG_PATH
    assert fd.flax_path == demo.BUG_PATH
    assert fd.local_status == "diverged"
    # The tanh approximation of GELU differs from erf GELU by at most ~4.7e-4.
    assert 1e-5 < fd.local_max_abs < 1e-3


def test_demo_layers_before_the_bug_match(demo_report):
    before = [lyr for lyr in demo_report.layers if lyr.order < demo_report.first_divergence.order]
    assert before and all(lyr.status == "ok" for lyr in before)


def test_demo_lists_the_dropouts_the_port_leaves_out(demo_report):
    torch_only = sorted(u.path for u in demo_report.unmatched if u.side == "torch")
    assert torch_only == [f"blocks.{i}.drop" for i in range(demo.BLOCKS)]


def test_demo_findings_name_gelu_approximate_when_detectors_exist(demo_report):
    pitfalls = pytest.importorskip("xfdiff.pitfalls")
    if not hasattr(pitfalls, "diagnose"):
        pytest.skip("no pitfall detectors installed")
    hits = [f for f in demo_report.findings if f.pitfall == demo.BUG_PITFALL]
    assert hits, [f.pitfall for f in demo_report.findings]
    assert demo.BUG_PATH in (hits[0].torch_path, hits[0].flax_path)


def test_large_report_has_requested_size_and_one_planted_culprit():
    report = demo.large_report(n_calls=60, positions=8, channels=16)
    assert len(report.layers) == 60
    culprits = [lyr for lyr in report.layers if lyr.local_status == "diverged"]
    assert [lyr.label for lyr in culprits] == [report.first_divergence.label]
    assert report.first_divergence.label.endswith("mlp.act")
    assert report.layers[0].detail["heatmap"].shape == (8, 16)
