"""compare() on a small twin pair: localisation, teacher forcing, bad input."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("flax")

from toy_models import pair  # noqa: E402

import xfdiff  # noqa: E402


def test_clean_port_has_no_divergence():
    pt, port, x = pair()
    report = xfdiff.compare(pt, port, x)
    assert report.first_divergence is None
    assert report.final.status == "ok" and report.final.max_abs < 1e-5
    paths = [lyr.torch_path for lyr in report.layers]
    assert paths.index("blocks.0.fc1") < paths.index("blocks.0") < paths.index("head")


def test_bug_in_a_parents_own_code_between_children_blames_the_parent():
    pt, port, x = pair(tanh_gelu_in=1)
    report = xfdiff.compare(pt, port, x, diagnose=False)
    fd = report.first_divergence
    assert fd.torch_path == "blocks.1"
    assert "blocks.1.fc2" in fd.note
    fc2 = report.layer("blocks.1.fc2")
    assert fc2.status == "diverged" and fc2.local_status == "ok"
    assert fc2.input_max_abs > 1e-4


def test_without_local_attribution_first_divergence_uses_propagated_error():
    pt, port, x = pair(tanh_gelu_in=1)
    report = xfdiff.compare(pt, port, x, local=False, diagnose=False)
    assert all(lyr.local_max_abs is None for lyr in report.layers)
    assert report.first_divergence.torch_path == "blocks.1.fc2"


def test_wrong_weight_is_found_at_its_layer():
    pt, (mod, variables), x = pair()
    variables["params"]["blocks_2"]["fc1"]["bias"] = variables["params"]["blocks_2"]["fc1"]["bias"] + 0.1
    report = xfdiff.compare(pt, (mod, variables), x, diagnose=False)
    assert report.first_divergence.torch_path == "blocks.2.fc1"
    assert report.layer("blocks.2.fc2").local_status == "ok"


def test_tolerance_can_be_loosened():
    pt, port, x = pair(tanh_gelu_in=1)
    report = xfdiff.compare(pt, port, x, tolerance=1e-2, diagnose=False)
    assert report.first_divergence is None


def test_flax_model_as_first_argument_is_refused_with_the_fix():
    pt, port, x = pair()
    with pytest.raises(xfdiff.XfdiffError, match="PyTorch model first"):
        xfdiff.compare(pt, pt, x)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        xfdiff.compare(port, port, x)


def test_inputs_that_fit_neither_model_raise_a_capture_error_naming_the_model():
    pt, port, _ = pair()
    with pytest.raises(xfdiff.XfdiffError, match="Net raised"):
        xfdiff.compare(pt, port, np.zeros((2, 5, 7), np.float32))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pt.modules())


def test_unsupported_inputs_type_is_named():
    pt, port, _ = pair()
    with pytest.raises(ValueError, match="dict"):
        xfdiff.compare(pt, port, [1, 2, 3])


def test_bad_reference_option():
    pt, port, x = pair()
    with pytest.raises(xfdiff.XfdiffError, match="reference"):
        xfdiff.compare(pt, port, x, reference="numpy")


class _Sparse(torch.nn.Module):
    def forward(self, x):
        return x.to_sparse()


class _WithSparse(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.sparse = _Sparse()

    def forward(self, x):
        return self.lin(self.sparse(x).to_dense())


def test_capture_failure_inside_a_module_is_recorded_not_raised():
    from xfdiff.capture.from_torch import TorchSide

    m = _WithSparse().eval()
    x = torch.randn(2, 4)
    expected = m(x)
    trace = TorchSide(m, x).capture()
    rec = [r for r in trace.records if r.path == "sparse"][0]
    assert rec.error and "output capture failed" in rec.error
    root = trace.root()
    np.testing.assert_allclose(root.outputs["out"], expected.detach().numpy())


def test_inplace_change_after_a_hook_does_not_change_the_record():
    from xfdiff.capture.from_torch import TorchSide

    class InPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            y = self.lin(x)
            y.mul_(0)
            return y

    m = InPlace().eval()
    trace = TorchSide(m, torch.ones(1, 3)).capture()
    lin = [r for r in trace.records if r.path == "lin"][0]
    assert np.abs(lin.outputs["out"]).sum() > 0
