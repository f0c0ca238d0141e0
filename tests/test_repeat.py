"""Repeated comparisons: what is reused while the weights are unchanged, and what is not."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from toy_models import pair  # noqa: E402

import xfdiff  # noqa: E402
from xfdiff import align  # noqa: E402


def _jax_pair(**kw):
    pt, (mod, variables), x = pair(**kw)
    return pt, (mod, jax.tree_util.tree_map(jax.numpy.asarray, variables)), x


@pytest.fixture
def pairing_runs(monkeypatch):
    """Counts how often the parameter pairing is computed (not taken from the memo)."""
    calls = []
    real = align._pair_parametrised_now

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(align, "_pair_parametrised_now", counted)
    monkeypatch.setattr(align, "_MEMO", {})
    return calls


def _pairs(report):
    return {lyr.torch_path: (lyr.flax_path, lyr.match) for lyr in report.layers}


def test_unchanged_weights_reuse_the_pairing_and_give_the_same_report(pairing_runs):
    pt, port, x = _jax_pair(tanh_gelu_in=1)
    first = xfdiff.compare(pt, port, x, diagnose=False)
    second = xfdiff.compare(pt, port, x, diagnose=False)
    assert len(pairing_runs) == 1
    assert _pairs(first) == _pairs(second)
    assert second.first_divergence.torch_path == first.first_divergence.torch_path == "blocks.1"
    assert [lyr.max_abs for lyr in first.layers] == [lyr.max_abs for lyr in second.layers]


def test_an_in_place_write_to_a_torch_weight_is_seen(pairing_runs):
    """Swapping two blocks' fc1 weights in place must re-pair them by their values, not reuse the memo."""
    pt, port, x = _jax_pair()
    before = xfdiff.compare(pt, port, x, diagnose=False)
    assert _pairs(before)["blocks.0.fc1"][0] == "blocks.0.fc1"
    with torch.no_grad():
        w0, w1 = pt.blocks[0].fc1.weight.clone(), pt.blocks[1].fc1.weight.clone()
        b0, b1 = pt.blocks[0].fc1.bias.clone(), pt.blocks[1].fc1.bias.clone()
        pt.blocks[0].fc1.weight.copy_(w1)
        pt.blocks[1].fc1.weight.copy_(w0)
        pt.blocks[0].fc1.bias.copy_(b1)
        pt.blocks[1].fc1.bias.copy_(b0)
    after = xfdiff.compare(pt, port, x, diagnose=False)
    assert len(pairing_runs) == 2
    assert _pairs(after)["blocks.0.fc1"][0] == "blocks.1.fc1"  # the values decide
    assert _pairs(after)["blocks.1.fc1"][0] == "blocks.0.fc1"


def test_new_port_arrays_are_paired_afresh(pairing_runs):
    pt, (mod, variables), x = _jax_pair()
    xfdiff.compare(pt, (mod, variables), x, diagnose=False)
    moved = jax.tree_util.tree_map(lambda a: a + 0.0, variables)  # same values, new arrays
    xfdiff.compare(pt, (mod, moved), x, diagnose=False)
    assert len(pairing_runs) == 2


def test_numpy_parameters_are_never_taken_from_the_memo(pairing_runs):
    """A numpy array can change in place without a trace: no token, no reuse."""
    pt, (mod, variables), x = pair()
    xfdiff.compare(pt, (mod, variables), x, diagnose=False)
    variables["params"]["blocks_0"]["fc1"]["kernel"][:] = variables["params"]["blocks_1"]["fc1"]["kernel"]
    report = xfdiff.compare(pt, (mod, variables), x, diagnose=False)
    assert len(pairing_runs) == 2
    assert report.first_divergence.torch_path == "blocks.0.fc1"


class _InPlace(torch.nn.Module):
    """fc's output is changed in place by the ReLU after it; the block returns that same tensor."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.fc(x))


def test_torch_capture_copies_a_tensor_again_after_an_in_place_write():
    from xfdiff.capture.from_torch import TorchSide

    torch.manual_seed(0)
    model = _InPlace().eval()
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    trace = TorchSide(model, x).capture()
    rec = {r.path: r for r in trace.records}
    with torch.no_grad():
        want = model.fc(torch.from_numpy(x)).numpy()
    fc_out = rec["fc"].outputs["out"]
    assert (fc_out < 0).any()  # the value before the ReLU wrote over it
    np.testing.assert_array_equal(fc_out, want)
    np.testing.assert_array_equal(rec["act"].inputs["args.0"], want)
    np.testing.assert_array_equal(rec["act"].outputs["out"], np.maximum(want, 0))
    # one tensor, unchanged between the hooks: one copy shared by the records
    assert rec["act"].inputs["args.0"] is fc_out
    assert rec[""].outputs["out"] is rec["act"].outputs["out"]
