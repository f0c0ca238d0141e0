"""Verdicts on real pairs: boundaries are notes, rounding is judged against a float64 floor, coverage gates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from verdict_pairs import make_boundary_pair

import xfdiff
from xfdiff import floor as F
from xfdiff.cli import EXIT_DIVERGED, EXIT_INCONCLUSIVE, EXIT_OK, main
from xfdiff.verdict import MIN_COVERAGE, decide

pytestmark = pytest.mark.filterwarnings("ignore")


def _compare(pt, fx, inputs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xfdiff.compare(pt, fx, inputs, progress=False, **kw)


def _layer_findings(report):
    return [f for f in report.findings if f.confidence != "setting"]


@pytest.mark.parametrize("name", ["bert_mlm", "roberta_mlm", "albert_mlm", "xglm", "blenderbot"])
def test_clean_hf_ports_with_boundary_differences_match(name):
    pt, fx, inputs = make_boundary_pair(name)
    report = _compare(pt, fx, inputs)
    assert report.verdict == "match", report.summary()
    assert report.first_divergence is None and _layer_findings(report) == []
    assert report.coverage["modules"] == 1.0
    if name == "xglm":  # the row that differs is listed with where the sides agree again
        where = {b["label"]: b for b in report.boundaries}
        key = "model.embed_tokens"
        assert key in where and where[key]["agrees_again_at"] and where[key]["why"]
        assert "scale" in where[key]["why"]
        assert "boundary" in report.summary()
    if name == "blenderbot":  # (S, H) against (B, S, H): compared through the broadcast transform
        lyr = report.layer("encoder.embed_positions")
        assert lyr.status == "ok" and "broadcast" in lyr.layout


def test_a_real_bug_after_a_boundary_difference_is_still_found():
    pt, fx, inputs = make_boundary_pair("xglm")
    import jax

    params = jax.tree_util.tree_map(lambda a: a, fx.params)
    fc1 = params["model"]["layers"]["1"]["fc1"]
    fc1["kernel"] = fc1["kernel"] * 1.5  # a wrong weight in the second layer's MLP
    fx.params = params
    report = _compare(pt, fx, inputs)
    assert report.verdict == "diverged"
    assert report.first_divergence.torch_path == "model.layers.1.fc1"
    assert [b["label"] for b in report.boundaries][:1] == ["model.embed_tokens"]


def test_low_coverage_is_inconclusive_and_names_what_to_fix(monkeypatch):
    pt, fx, inputs = make_boundary_pair("bert_mlm")
    import xfdiff.verdict as V

    real = V.coverage

    def without_most(ev):  # as if only the embeddings had been aligned
        ev.rows = [r for r in ev.rows if "embeddings" in (r.layer.torch_path or "")]
        return real(ev)

    monkeypatch.setattr(V, "coverage", without_most)
    report = _compare(pt, fx, inputs)
    assert report.coverage["modules"] < MIN_COVERAGE
    assert report.verdict == "inconclusive" and report.first_divergence is None
    assert "mapping=" in report.verdict_reason and "bert.encoder" in report.verdict_reason


def test_floor_rule():
    assert F.within(2e-6, 1e-6, 1e-5)  # twice the reference's own rounding, plus atol/10
    assert not F.within(4e-6, 1e-6, 1e-5)
    assert F.rmse(np.ones(4), np.zeros(4)) == 1.0


class _Attn(torch.nn.Module):
    """Softmax attention over many keys: fp32 rounding alone exceeds atol=1e-5 at large scale."""

    def __init__(self, d=64):
        super().__init__()
        self.q = torch.nn.Linear(d, d)

    def forward(self, x):
        q = self.q(x) * 30.0
        return torch.softmax(q @ x.transpose(-1, -2), -1) @ x * 100.0


def test_rounding_above_atol_is_judged_against_the_float64_floor():
    import jax.numpy as jnp
    from flax import linen as nn

    class FAttn(nn.Module):
        eps_bug: bool = False

        @nn.compact
        def __call__(self, x):
            q = nn.Dense(64, name="q")(x) * 30.0
            p = jnp.exp(q @ jnp.swapaxes(x, -1, -2) - jnp.max(q @ jnp.swapaxes(x, -1, -2), -1, keepdims=True))
            p = p / (jnp.sum(p, -1, keepdims=True) + (1e-4 if self.eps_bug else 0.0))
            return p @ x * 100.0

    torch.manual_seed(0)
    pt = torch.nn.Sequential(_Attn()).eval()
    params = {"q": {"kernel": pt[0].q.weight.detach().numpy().T, "bias": pt[0].q.bias.detach().numpy()}}

    class FModel(nn.Module):
        eps_bug: bool = False

        @nn.compact
        def __call__(self, x):
            return FAttn(self.eps_bug, name="0")(x)

    x = np.random.default_rng(0).standard_normal((1, 512, 64)).astype(np.float32)
    tight = 1e-8  # below fp32 rounding of this layer: every row fails the plain tolerance
    clean = _compare(pt, (FModel(), {"params": {"0": params}}), (x,), tolerance=tight)
    row = clean.layer("0")
    assert row.status == "diverged" and row.floor is not None and row.floor_error <= 2 * row.floor + 1e-9
    assert clean.verdict == "match" and clean.first_divergence is None
    broken = _compare(pt, (FModel(eps_bug=True), {"params": {"0": params}}), (x,), tolerance=tight)
    assert broken.verdict == "diverged" and broken.first_divergence.torch_path == "0"
    assert broken.first_divergence.floor_error > 2 * broken.first_divergence.floor
    df = broken.to_dataframe()
    assert "floor" in df.columns and df.set_index("torch_path").loc["0", "floor"] > 0


def test_verdict_survives_save_and_old_files_get_one(tmp_path):
    pt, fx, inputs = make_boundary_pair("xglm")
    report = _compare(pt, fx, inputs)
    path = report.save(tmp_path / "r.xfd")
    loaded = xfdiff.load(path)
    assert loaded.verdict == report.verdict == "match" and loaded.boundaries == report.boundaries
    assert main(["summary", str(path)]) == EXIT_OK
    for key in ("verdict", "coverage", "boundaries", "floor"):  # as written before verdicts existed
        loaded.meta.pop(key)
    old = loaded.save(tmp_path / "old.xfd")
    assert xfdiff.load(old).verdict in ("match", "diverged", "inconclusive")
    loaded.meta["verdict"] = {"verdict": "inconclusive", "reason": "test"}
    assert main(["summary", loaded.save(tmp_path / "inc.xfd")]) == EXIT_INCONCLUSIVE
    loaded.meta["verdict"] = {"verdict": "diverged", "reason": "test"}
    assert main(["summary", loaded.save(tmp_path / "div.xfd")]) == EXIT_DIVERGED


def test_decide_without_rows_is_inconclusive():
    assert decide(xfdiff.Report())["verdict"] == "inconclusive"


def _bf16_llama(bug: bool):
    import jax
    import jax.numpy as jnp
    from hf_pairs import make_pair

    pt, fx, inputs = make_pair("llama")
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), fx.params)
    if bug:  # a square kernel loaded without its transpose
        q = params["model"]["layers"]["0"]["self_attn"]["q_proj"]
        q["kernel"] = q["kernel"].T
    fx.params = params
    return pt, fx, inputs


def test_a_bf16_port_of_a_float32_model_matches_against_the_bf16_floor():
    report = _compare(*_bf16_llama(False))
    assert report.meta["floor"]["rows_measured"] > 0
    assert report.verdict == "match", report.summary()
    assert report.first_divergence is None


def test_a_bug_in_a_bf16_port_is_still_found_at_its_module():
    report = _compare(*_bf16_llama(True))
    assert report.verdict == "diverged"
    fd = report.first_divergence
    assert fd.torch_path == "model.layers.0.self_attn.q_proj"
    assert fd.floor_error > 2 * fd.floor


def test_an_epsilon_bug_in_a_d2048_model_is_still_found():
    from hf_pairs import SPECS, _ids, _text, make_pair

    SPECS.setdefault(
        "llama_d2048",
        lambda T: (
            T.LlamaConfig,
            T.LlamaForCausalLM,
            T.FlaxLlamaForCausalLM,
            dict(
                vocab_size=128,
                hidden_size=2048,
                intermediate_size=256,
                num_hidden_layers=1,
                num_attention_heads=32,
                num_key_value_heads=4,
                max_position_embeddings=2048,
                rms_norm_eps=1e-6,
            ),
            _text(_ids(vocab=128, shape=(1, 16))),
        ),
    )
    pt, fx, inputs = make_pair("llama_d2048")
    clean = _compare(pt, fx, inputs)
    assert clean.verdict == "match", clean.summary()
    for m in pt.modules():  # the reference uses 1e-5, the port keeps 1e-6
        if type(m).__name__ == "LlamaRMSNorm":
            m.variance_epsilon = 1e-5
    report = _compare(pt, fx, inputs)
    assert report.verdict == "diverged"
    assert report.first_divergence.torch_path == "model.layers.0.input_layernorm"
    assert [(f.pitfall, f.torch_path) for f in _layer_findings(report)][:1] == [
        ("norm_epsilon", "model.layers.0.input_layernorm")
    ]
