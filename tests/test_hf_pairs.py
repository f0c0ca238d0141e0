"""Real Hugging Face PyTorch/Flax pairs (transformers 4.x, tiny random configs)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from hf_pairs import make_pair  # noqa: E402

import xfdiff  # noqa: E402

pytestmark = pytest.mark.hf


def _param_alignment(report) -> float:
    return report.meta["n_param_modules_aligned"] / report.meta["n_param_modules_torch"]


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2", "bart", "vit"])
def test_clean_pair_has_no_divergence_and_aligns_parametrised_modules(name):
    pt, fx, inputs = make_pair(name)
    report = xfdiff.compare(pt, fx, inputs)
    assert report.first_divergence is None, report.summary()
    assert _param_alignment(report) >= 0.95, [u for u in report.unmatched if u.has_params]
    assert report.final is not None and report.final.status == "ok"
    assert all(lyr.status == "ok" for lyr in report.layers)
    assert len(report.layers) > 20


def _with_params(fx, edit):
    fx = copy.copy(fx)
    params = copy.deepcopy(fx.params)
    edit(params)
    fx.params = params
    return fx


INJECTIONS = {
    # torch path of the bugged module -> edit of the Flax params
    "encoder.layer.1.attention.self.query": lambda p: p["encoder"]["layer"]["1"]["attention"]["self"]["query"].update(
        kernel=np.asarray(p["encoder"]["layer"]["1"]["attention"]["self"]["query"]["kernel"]).T
    ),
    "encoder.layer.0.output.dense": lambda p: p["encoder"]["layer"]["0"]["output"]["dense"].update(
        bias=np.zeros_like(p["encoder"]["layer"]["0"]["output"]["dense"]["bias"])
    ),
    "encoder.layer.0.attention.output.LayerNorm": lambda p: p["encoder"]["layer"]["0"]["attention"]["output"][
        "LayerNorm"
    ].update(scale=np.asarray(p["encoder"]["layer"]["0"]["attention"]["output"]["LayerNorm"]["scale"]) * 1.5),
}


@pytest.mark.parametrize("torch_path", list(INJECTIONS))
def test_injected_bug_is_first_divergence_and_later_layers_only_inherit(torch_path):
    pt, fx, inputs = make_pair("bert")
    with torch.no_grad():  # make zeroed biases and LayerNorm scales matter
        for m in pt.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)) and m.bias is not None:
                m.bias.normal_(0, 0.5)
    from hf_pairs import _transformers

    _, convert = _transformers()
    fx.params = convert(pt.state_dict(), fx)
    bad = _with_params(fx, INJECTIONS[torch_path])
    report = xfdiff.compare(pt, bad, inputs, diagnose=False)
    fd = report.first_divergence
    assert fd is not None and fd.torch_path == torch_path, report.summary()
    assert fd.local_max_abs > 1e-3
    after = [
        lyr
        for lyr in report.layers
        if lyr.order > fd.order
        and lyr.torch_path.startswith("encoder.layer.1.")
        and lyr.torch_path != torch_path
        and lyr.torch_type in ("Linear", "LayerNorm")
    ]
    assert after, "the bug should propagate into layer 1"
    inherited = [lyr for lyr in after if lyr.status == "diverged"]
    assert inherited, "later layers should carry propagated error"
    assert all(lyr.local_max_abs < 1e-4 for lyr in inherited), [(lyr.label, lyr.local_max_abs) for lyr in inherited]


def test_shared_albert_layer_gets_one_row_per_call():
    pt, fx, inputs = make_pair("albert")
    report = xfdiff.compare(pt, fx, inputs)
    shared = [lyr for lyr in report.layers if lyr.torch_path == "encoder.albert_layer_groups.0.albert_layers.0"]
    assert [lyr.call_index for lyr in shared] == [0, 1]
    assert report.first_divergence is None


def test_tied_embeddings_pair_each_call_with_its_counterpart():
    pt, fx, inputs = make_pair("bart")
    report = xfdiff.compare(pt, fx, inputs)
    dec = report.layer("decoder.embed_tokens")
    assert dec.flax_path == "shared" and dec.status == "ok" and dec.match == "tied weights"


def test_hooks_removed_and_training_flag_kept():
    pt, fx, inputs = make_pair("gpt2")
    pt.train()
    rng = torch.get_rng_state()
    xfdiff.compare(pt, fx, inputs, local=False)
    assert pt.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pt.modules())
    assert torch.equal(rng, torch.get_rng_state())


def test_hooks_removed_when_forward_raises():
    pt, fx, inputs = make_pair("bert")
    bad = {"input_ids": inputs["input_ids"], "attention_mask": np.ones((2, 3), np.int64)}
    with pytest.raises(xfdiff.XfdiffError, match="raised"):
        xfdiff.compare(pt, fx, bad)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pt.modules())
    assert not pt.training
