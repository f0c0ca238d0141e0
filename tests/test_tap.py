"""``xfdiff.tap`` and function-style JAX ports (no modules, a params dict)."""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reach_models import TorchLM, lm_params, randomize, tap_forward, token_ids

import xfdiff
from xfdiff.capture.from_jaxfn import TapSide
from xfdiff.tap import TapError


def test_tap_is_identity_when_nothing_captures_also_under_jit():
    x = jnp.arange(3.0)
    assert xfdiff.tap("a.b", x) is x
    assert xfdiff.tap("a.add", jnp.add, x, 1.0).tolist() == [1.0, 2.0, 3.0]

    @jax.jit
    def f(v):
        return xfdiff.tap("double", v * 2) + xfdiff.tap("inc", lambda u: u + 1, v)

    assert f(x).tolist() == [1.0, 4.0, 7.0]


def test_tap_refuses_arguments_it_cannot_use():
    with pytest.raises(TapError, match="only accepted when value is a function"):
        xfdiff.tap("x", jnp.ones(2), 3)
    with pytest.raises(TapError, match="path must be a string"):
        xfdiff.tap(3, jnp.ones(2))
    assert "jax" not in sys.modules["xfdiff.tap"].__dict__  # tap.py itself stays free of jax


def _two_steps(params, x):
    h = xfdiff.tap("encoder.layers.0.fc1", lambda p, v: v @ p["kernel"], params["encoder"]["layers"][0]["fc1"], x)
    return xfdiff.tap("encoder.layers.0", jnp.tanh(h))


PARAMS = {
    "encoder": {
        "layers": [{"fc1": {"kernel": jnp.asarray(np.random.default_rng(0).standard_normal((4, 4)), jnp.float32)}}]
    }
}
X = np.ones((2, 4), np.float32)


@pytest.mark.parametrize("jit", [True, False])
def test_tap_side_records_taps_as_calls_with_params_by_path(jit):
    trace = TapSide((_two_steps, PARAMS), X, jit=jit).capture()
    assert [(r.path, r.module_type) for r in trace.records] == [
        ("encoder.layers.0.fc1", "<lambda>"),
        ("encoder.layers.0", "tap"),
        ("", "_two_steps"),
    ]
    step = trace.records[0]
    assert list(step.inputs) == ["args.1"]  # the kernel is a parameter, not an input
    assert set(trace.params) == {"encoder.layers.0.fc1"}
    np.testing.assert_allclose(
        trace.root().outputs["out"], np.tanh(X @ np.asarray(PARAMS["encoder"]["layers"][0]["fc1"]["kernel"])), rtol=1e-6
    )


def test_tapped_step_is_fed_substituted_inputs():
    side = TapSide((_two_steps, PARAMS), X)
    forced = side.capture(substitute={("encoder.layers.0.fc1", 0): {"args.1": np.zeros_like(X)}})
    fc1 = forced.by_key()["encoder.layers.0.fc1"]
    assert np.all(fc1.outputs["out"] == 0) and np.all(fc1.raw_inputs["args.1"] == 1)


def test_taps_inside_lax_scan_and_an_already_compiled_jit_are_captured():
    def body(c, w):
        return xfdiff.tap("layers", jnp.tanh(c @ w)), None

    def fn(ws, x):
        return jax.lax.scan(body, x, ws)[0]

    ws = jnp.stack([jnp.eye(4)] * 3)
    jitted = jax.jit(fn)
    jitted(ws, X)  # compiled before: xfdiff must trace the Python function again
    side = TapSide(jitted, (ws, X))
    trace = side.capture()
    assert [r.call_index for r in trace.records if r.path == "layers"] == [0, 1, 2]
    assert side.mode in ("callback", "unordered")


def test_function_without_taps_warns_and_compares_the_output_only():
    with pytest.warns(UserWarning, match="no xfdiff.tap"):
        trace = TapSide(lambda x: x * 2, X).capture()
    assert [r.path for r in trace.records] == [""]


@pytest.fixture(scope="module")
def lm():
    pt = randomize(TorchLM())
    return pt, lm_params(pt), token_ids()


def test_function_style_port_is_compared_layer_by_layer(lm):
    pt, params, ids = lm
    r = xfdiff.compare(pt, (tap_forward, params), ids)
    assert r.meta["flax_framework"] == "jax"
    assert r.first_divergence is None and not r.diverged
    aligned = {lyr.torch_path for lyr in r.layers}
    assert {"embed", "blocks.0.attn.q_proj", "blocks.1.mlp.fc2", "blocks.1.mlp", "blocks.1", "ln_f"} <= aligned
    assert r.layer("blocks.0.attn.q_proj").match == "fingerprint+name (transpose)"
    assert r.meta["n_param_modules_aligned"] >= 0.9 * r.meta["n_param_modules_torch"]


def test_teacher_forcing_through_taps_finds_the_step_between_taps(lm):
    pt, params, ids = lm
    r = xfdiff.compare(pt, (functools.partial(tap_forward, bug_layer=1), params), ids, diagnose=False)
    fd = r.first_divergence
    assert (fd.torch_path, fd.flax_path) == ("blocks.1.mlp", "blocks.1.mlp")  # the GELU between fc1 and fc2
    assert r.layer("blocks.1.mlp.fc1").local_status == "ok"
    assert r.layer("blocks.1.mlp.fc2").local_status == "ok"  # fed the reference's input, it is right


def _underscored(params, x):
    h = xfdiff.tap("blocks.0.ln_1", lambda p, v: v * p["g"], params["blocks"][0]["ln_1"], x)
    return xfdiff.tap("blocks.0.mlp_2", jnp.tanh(h))


def test_tap_names_and_param_keys_are_kept_as_written():
    params = {"blocks": [{"ln_1": {"g": jnp.full((4,), 2.0, jnp.float32)}}]}
    trace = TapSide((_underscored, params), X).capture()
    assert [r.path for r in trace.records] == ["blocks.0.ln_1", "blocks.0.mlp_2", ""]
    assert set(trace.params) == {"blocks.0.ln_1"}  # list items become digits, names stay as written


def test_mapping_names_a_tap_path_as_written():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.full((4,), 2.0))

        def forward(self, x):
            return torch.tanh(self.norm(x))

        def norm(self, x):
            return x * self.scale

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Net()

        def forward(self, x):
            return self.inner(x)

    params = {"blocks": [{"ln_1": {"g": jnp.full((4,), 2.0, jnp.float32)}}]}
    r = xfdiff.compare(Outer(), (_underscored, params), X, mapping={"inner": "blocks.0.mlp_2"}, progress=False)
    assert r.layer("blocks.0.mlp_2").torch_path == "inner"
