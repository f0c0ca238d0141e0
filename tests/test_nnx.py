"""Flax NNX capture and NNX ports whose attribute names differ from the reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reach_models import lm_pair

import xfdiff
from xfdiff.capture.from_nnx import TAG, NnxSide
from xfdiff.errors import CaptureError


class Block(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
        self.up = nnx.Linear(d, 2 * d, rngs=rngs)
        self.down = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.relu(self.up(x))) + x


class InheritedBlock(Block):
    """No ``__call__`` of its own."""


class SuperBlock(Block):
    def __call__(self, x):
        return super().__call__(x) * 2.0


class JitBlock(Block):
    @nnx.jit
    def __call__(self, x):
        return self.down(nnx.relu(self.up(x))) + x


class Stack(nnx.Module):
    def __init__(self, kinds, rngs: nnx.Rngs, d: int = 4):
        self.layers = nnx.List([k(d, rngs) for k in kinds])
        self.norm = nnx.LayerNorm(d, epsilon=1e-3, rngs=rngs)

    def __call__(self, x, scale: bool = False):
        for layer in self.layers:
            x = layer(x)
        if scale:  # a Python flag: must stay static under xfdiff's jit
            x = x * 3.0
        return self.norm(x)


X = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)


def _calls(trace):
    return [(r.path, r.call_index) for r in trace.records]


@pytest.mark.parametrize("jit", [True, False])
def test_every_module_call_is_recorded_with_graph_paths_including_inherited_call(jit):
    m = Stack([Block, InheritedBlock], nnx.Rngs(0))
    trace = NnxSide(m, X, jit=jit).capture()
    assert _calls(trace) == [
        ("layers.0.up", 0),
        ("layers.0.down", 0),
        ("layers.0", 0),
        ("layers.1.up", 0),
        ("layers.1.down", 0),
        ("layers.1", 0),
        ("norm", 0),
        ("", 0),
    ]
    assert trace.module_types["layers.1"] == "InheritedBlock"
    np.testing.assert_allclose(trace.root().outputs["out"], np.asarray(m(X)), rtol=1e-6, atol=1e-6)
    assert set(trace.params["layers.0.up"]) == {"kernel", "bias"}
    assert trace.config["norm"]["epsilon"] == pytest.approx(1e-3)


def test_super_call_is_one_call_not_two():
    trace = NnxSide(Stack([SuperBlock], nnx.Rngs(0)), X).capture()
    assert [p for p, _ in _calls(trace)].count("layers.0") == 1


def test_models_using_nnx_jit_and_remat_inside_are_captured():
    class Remat(nnx.Module):
        def __init__(self, rngs):
            self.inner = Stack([JitBlock, Block], rngs)

        def __call__(self, x):
            return nnx.remat(lambda m, y: m(y))(self.inner, x)

    m = Remat(nnx.Rngs(0))
    m(X)  # compiled once before: xfdiff must not be served that cached trace without its hooks
    side = NnxSide(m, X)
    trace = side.capture()
    paths = [p for p, _ in _calls(trace)]
    assert side.mode in ("callback", "unordered")
    for p in ("inner.layers.0.up", "inner.layers.0", "inner.layers.1.down", "inner.norm", ""):
        assert p in paths
    forced = side.capture(substitute={("inner.layers.1.up", 0): {"args.0": np.zeros_like(X)}})
    up = forced.by_key()["inner.layers.1.up"]
    np.testing.assert_allclose(
        up.outputs["out"], np.broadcast_to(np.asarray(m.inner.layers[1].up.bias.get_value()), (2, 8))
    )
    assert up.raw_inputs["args.0"].shape == X.shape and np.abs(up.raw_inputs["args.0"]).max() > 0


def test_scan_over_stacked_layers_gives_one_call_per_step():
    class Scanned(nnx.Module):
        def __init__(self):
            @nnx.vmap(in_axes=0, out_axes=0)
            def make(key):
                return Block(4, nnx.Rngs(params=key))

            self.layers = make(jax.random.split(jax.random.key(0), 3))

        def __call__(self, x):
            @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
            def step(block, h):
                return block(h)

            return step(self.layers, x)

    trace = NnxSide(Scanned(), X).capture()
    assert [i for p, i in _calls(trace) if p == "layers"] == [0, 1, 2]


def test_python_flags_stay_static_under_jit():
    m = Stack([Block], nnx.Rngs(0))
    side = NnxSide(m, {"x": X, "scale": True})
    trace = side.capture()
    assert side.jit is True
    np.testing.assert_allclose(trace.root().outputs["out"], np.asarray(m(X, scale=True)), rtol=1e-6, atol=1e-6)


def test_classes_and_instances_are_restored_when_the_forward_raises():
    class Broken(Block):
        def __call__(self, x):
            raise RuntimeError("boom")

    m = Stack([Block, Broken], nnx.Rngs(0))
    before = nnx.graphdef(m)
    with pytest.raises(CaptureError, match="boom"):
        NnxSide(m, X, jit=False).capture()
    assert "__call__" not in vars(InheritedBlock) and Block.__call__.__name__ == "__call__"
    assert not hasattr(Block.__call__, "__xfdiff_wrapped__") and not hasattr(Broken.__call__, "__xfdiff_wrapped__")
    assert not hasattr(nnx.Linear.__call__, "__xfdiff_wrapped__")
    assert all(not hasattr(node, TAG) for _, node in nnx.iter_graph(m))
    assert nnx.graphdef(m) == before


def test_capture_runs_on_a_copy_and_leaves_state_alone():
    class Stats(nnx.Module):
        def __init__(self, rngs):
            self.bn = nnx.BatchNorm(4, use_running_average=False, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.bn(x))

    def snapshot(model):
        leaves = jax.tree_util.tree_leaves(nnx.state(model))
        return [
            np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
            for v in leaves
        ]

    m = Stats(nnx.Rngs(0))
    before = snapshot(m)
    side = NnxSide(m, X)
    a, b = side.capture(), side.capture()
    for x, y in zip(before, snapshot(m), strict=True):  # batch statistics and RNG counters untouched
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.root().outputs["out"], b.root().outputs["out"])  # same random stream
    assert set(a.params["bn"]) >= {"scale", "bias", "batch_stats.mean", "batch_stats.var"}


# --- an NNX port with other names ------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_report():
    pt, port, ids = lm_pair()
    return xfdiff.compare(pt, port, ids)


def test_port_with_other_names_is_aligned_and_clean(clean_report):
    r = clean_report
    assert r.meta["flax_framework"] == "nnx"
    assert r.meta["n_param_modules_aligned"] / r.meta["n_param_modules_torch"] >= 0.9
    assert r.first_divergence is None and not r.diverged
    pairs = {lyr.torch_path: lyr.flax_path for lyr in r.layers}
    assert pairs["blocks.1.attn.q_proj"] == "layers.1.attention.query"
    assert pairs["blocks.0.mlp.fc1"] == "layers.0.ffn.up"
    assert pairs["blocks.0.mlp.act"] == "layers.0.ffn.activation"  # parameter-free, other name and type
    assert pairs["blocks.0.mlp.dropout"] == "layers.0.ffn.drop"
    assert pairs["head"] == "lm_head"
    q = r.layer("blocks.0.attn.q_proj")
    assert q.layout == "split_heads" and "transpose+reshape" in q.match and q.confidence >= 0.9
    assert all(lyr.match and 0 < lyr.confidence <= 1 for lyr in r.layers)


@pytest.mark.parametrize(
    "bugs, culprit",
    [
        ({1: {"eps": 1e-2}}, ("blocks.1.ln1", "layers.1.norm1")),
        ({0: {"approximate": True}}, ("blocks.0.mlp.act", "layers.0.ffn.activation")),
    ],
)
def test_teacher_forcing_names_the_buggy_nnx_layer_by_its_torch_path(bugs, culprit):
    pt, port, ids = lm_pair(bugs=bugs)
    r = xfdiff.compare(pt, port, ids, diagnose=False)
    fd = r.first_divergence
    assert (fd.torch_path, fd.flax_path) == culprit
    assert fd.local_max_abs is not None and fd.local_max_abs > 10 * fd.atol
    downstream = [lyr for lyr in r.layers if lyr.order > fd.order and lyr.torch_path.startswith("blocks.1.attn.")]
    if downstream:  # later layers inherit the error but add none of their own
        assert all(lyr.local_status == "ok" for lyr in downstream)


def test_jitted_and_eager_nnx_captures_agree():
    pt, port, ids = lm_pair()
    a = NnxSide(port, ids, jit=True).capture()
    b = NnxSide(port, ids, jit=False).capture()
    assert _calls(a) == _calls(b)
    np.testing.assert_allclose(a.root().outputs["out"], b.root().outputs["out"], rtol=1e-5, atol=1e-5)


def test_tap_inside_an_nnx_module_is_recorded():
    class Tapped(Block):
        def __call__(self, x):
            h = xfdiff.tap("hidden", nnx.relu(self.up(x)))
            return self.down(h) + jnp.zeros(())

    trace = NnxSide(Stack([Tapped], nnx.Rngs(0)), X).capture()
    assert "layers.0.hidden" in [p for p, _ in _calls(trace)]  # relative to the module it runs in
