"""Ports that share neither names nor parameters with the reference are aligned by their values."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from value_ports import generated_forward, inputs, paper_forward, port_params, reference  # noqa: E402

import xfdiff  # noqa: E402


def _coverage(report) -> float:
    return report.meta["n_param_modules_aligned"] / report.meta["n_param_modules_torch"]


@functools.cache
def _seq2seq():
    pt = reference()
    return pt, port_params(pt), inputs()


@functools.cache
def _report(fn, bug: tuple = ()):
    """One comparison per port and bug, shared by the tests (value taps have no local error to measure)."""
    pt, params, (src, tgt) = _seq2seq()
    return xfdiff.compare(pt, (functools.partial(fn, **dict(bug)), params), (src, tgt), local=False)


@pytest.mark.parametrize("fn", [paper_forward, generated_forward])
def test_tapped_port_without_parameters_is_aligned_by_values(fn):
    r = _report(fn)
    assert _coverage(r) >= 0.9, [u.path for u in r.unmatched if u.has_params]
    assert r.first_divergence is None and not r.findings, r.summary()
    assert all(lyr.status == "ok" for lyr in r.layers)
    q = r.layer("encoder.layers.1.self_attn.q_proj")
    assert q.match == "values (split_heads)" and q.layout == "split_heads"


def test_value_pairs_follow_the_porters_names():
    r = _report(paper_forward)
    assert r.layer("encoder.layers.0.fc1").flax_path == "encoder_layers.0.ff0"
    assert r.layer("decoder.layers.1.encoder_attn.k_proj").flax_path == "decoder_layers.1.xattn.k"
    # the layer's output equals its last norm's: the module with parameters takes the tap
    assert r.layer("encoder.layers.0.final_layer_norm").flax_path == "encoder_layers.0.ln1"


def test_positions_broadcast_over_the_batch_are_a_layout_not_a_mismatch():
    r = _report(paper_forward)
    pos = r.layer("encoder.embed_positions")  # (S, H) in torch, (B, S, H) in the port
    assert pos.flax_path == "src_pos" and pos.layout == "broadcast" and pos.status == "ok"


@pytest.mark.parametrize("fn", [paper_forward, generated_forward])
def test_tanh_gelu_is_found_at_the_ffn_of_its_layer(fn):
    r = _report(fn, (("gelu_tanh_layer", 1),))
    assert _coverage(r) >= 0.9
    assert r.first_divergence.torch_path == "encoder.layers.1.fc2"
    assert r.layer("encoder.layers.0.fc2").status == "ok"


@pytest.mark.parametrize("fn", [paper_forward, generated_forward])
def test_layers_after_a_large_bug_are_aligned_by_order_and_shape(fn):
    r = _report(fn, (("unscaled_layer", 0),))
    assert _coverage(r) >= 0.9
    assert r.first_divergence.torch_path == "encoder.layers.0.self_attn.out_proj"
    after = r.layer("encoder.layers.1.fc2")
    assert after.match == "order+output shape" and after.status == "diverged"
    expected = "encoder_layers.1.ff1" if fn is paper_forward else "t16"
    assert after.flax_path == expected


def test_ports_that_share_names_keep_their_parameter_pairs():
    from reach_models import TorchLM, lm_params, randomize, tap_forward, token_ids

    pt = randomize(TorchLM())
    r = xfdiff.compare(pt, (tap_forward, lm_params(pt)), token_ids(), local=False)
    assert not any(lyr.match.startswith(("values", "order+output")) for lyr in r.layers)


# --- parametrizations ---------------------------------------------------------------------


class TorchWeightNormed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 6, 3, padding=1))
        self.proj = torch.nn.Linear(6, 5)

    def forward(self, x):  # (B, C, L)
        return self.proj(self.conv(x).transpose(1, 2))


class LinenWeightNormConv(nn.Module):
    @nn.compact
    def __call__(self, x):  # (B, L, C)
        v = self.param("weight_v", nn.initializers.normal(), (3, 4, 6))
        g = self.param("weight_g", nn.initializers.ones, (6,))
        b = self.param("bias", nn.initializers.zeros, (6,))
        kernel = v * (g / jnp.sqrt(jnp.sum(v**2, axis=(0, 1))))
        return nn.Conv(6, (3,), padding=1).apply({"params": {"kernel": kernel, "bias": b}}, x)


class LinenWeightNormed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="proj")(LinenWeightNormConv(name="conv")(x))


def test_weight_norm_parametrization_belongs_to_its_convolution():
    torch.manual_seed(0)
    pt = TorchWeightNormed().eval()
    w = pt.conv.parametrizations.weight
    g, v = w.original0.detach().numpy(), w.original1.detach().numpy()
    variables = {
        "params": {
            "conv": {
                "weight_v": v.transpose(2, 1, 0),
                "weight_g": g.reshape(-1),
                "bias": pt.conv.bias.detach().numpy(),
            },
            "proj": {"kernel": pt.proj.weight.detach().numpy().T, "bias": pt.proj.bias.detach().numpy()},
        }
    }
    x = np.random.default_rng(0).standard_normal((2, 4, 7)).astype(np.float32)
    r = xfdiff.compare(pt, (LinenWeightNormed(), variables), x, flax_inputs=x.transpose(0, 2, 1))
    conv = r.layer("conv")
    assert conv.flax_path == "conv" and conv.match.startswith("fingerprint"), conv.match
    assert not any(lyr.torch_path and "parametrizations" in lyr.torch_path for lyr in r.layers)
    assert not any("parametrizations" in u.path for u in r.unmatched if u.side == "torch")
    assert r.meta["n_param_modules_aligned"] == r.meta["n_param_modules_torch"]
    assert r.first_divergence is None, r.summary()
