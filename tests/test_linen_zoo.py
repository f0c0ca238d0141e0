"""The linen zoo: ordinary linen constructs that capture must take in its stride.

Each construct is a tiny PyTorch reference and a hand-written linen port of
it, written the way people write linen: ``nn.Sequential`` of blocks that keep
module classes and partials as fields, settings of every type, non-array
arguments and outputs, ``nn.remat`` / ``nn.scan`` / ``nn.vmap``, ``@nn.compact``
automatic names, methods other than ``__call__``. For each: the correct port
compares clean (no first divergence), and a planted bug (the tanh GELU or a
wrong epsilon) is found at the module that holds it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

import xfdiff
from xfdiff.capture.from_linen import LinenSide, module_config
from xfdiff.errors import CaptureError, InternalError

D = 8
TANH = functools.partial(nn.gelu, approximate=True)
ERF = functools.partial(nn.gelu, approximate=False)


# --- the PyTorch reference pieces ------------------------------------------------------------


class TMLP(torch.nn.Module):
    """ln(x + fc2(gelu(fc1(x))))."""

    def __init__(self, d: int = D):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, 2 * d)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(2 * d, d)
        self.ln = torch.nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x + self.fc2(self.act(self.fc1(x))))


class TStack(torch.nn.Module):
    def __init__(self, n: int = 2, d: int = D):
        super().__init__()
        self.blocks = torch.nn.ModuleList([TMLP(d) for _ in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def lin(m: torch.nn.Linear) -> dict:
    return {"kernel": _np(m.weight).T.copy(), "bias": _np(m.bias)}


def norm(m: torch.nn.Module) -> dict:
    return {"scale": _np(m.weight), "bias": _np(m.bias)}


def mlp(m: TMLP, names=("fc1", "fc2", "ln")) -> dict:
    return {names[0]: lin(m.fc1), names[1]: lin(m.fc2), names[2]: norm(m.ln)}


def seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def data(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(pt, good, bad, x, where: set[str], flax_inputs=None) -> None:
    """The correct port compares clean; the planted bug is the first divergence, at ``where``."""
    report = xfdiff.compare(pt, good, x, flax_inputs=flax_inputs, diagnose=False, progress=False)
    fd = report.first_divergence
    assert fd is None, f"clean port diverged at {fd.torch_path} ({fd.status}, {fd.note})"
    assert report.meta["n_param_modules_aligned"] == report.meta["n_param_modules_torch"]
    report = xfdiff.compare(pt, bad, x, flax_inputs=flax_inputs, diagnose=False, progress=False)
    fd = report.first_divergence
    assert fd is not None, "the planted bug was not found"
    assert fd.torch_path in where, f"bug blamed on {fd.torch_path!r}, expected one of {sorted(where)}"


# --- 1. nn.Sequential of blocks that keep module classes and partials as fields ------------


class TConvBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, bias: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.norm = torch.nn.GroupNorm(2, cout)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class ConvBlock(nn.Module):
    features: int
    conv_cls: Any = nn.Conv  # a module class as a field
    norm_cls: Callable = functools.partial(nn.GroupNorm, num_groups=2, epsilon=1e-5)  # a partial of a class
    act: Callable = ERF

    @nn.compact
    def __call__(self, x):
        x = self.conv_cls(self.features, (3, 3), padding=1, name="conv")(x)
        return self.act(self.norm_cls(name="norm")(x))


def sequential_pair(bad_eps: float | None = None):
    pt = seeded(torch.nn.Sequential(TConvBlock(3, 4, True), TConvBlock(4, 4, False)))

    def conv(m):
        p = {"kernel": _np(m.weight).transpose(2, 3, 1, 0).copy()}
        if m.bias is not None:
            p["bias"] = _np(m.bias)
        return p

    variables = {"params": {f"layers_{i}": {"conv": conv(b.conv), "norm": norm(b.norm)} for i, b in enumerate(pt)}}
    second_norm = functools.partial(nn.GroupNorm, num_groups=2, epsilon=bad_eps or 1e-5)
    port = nn.Sequential(
        [
            ConvBlock(4),
            ConvBlock(4, conv_cls=functools.partial(nn.Conv, use_bias=False), norm_cls=second_norm),
        ]
    )
    return pt, (port, variables)


def test_sequential_of_blocks_holding_classes_and_partials():
    x = data(2, 3, 6, 6)
    pt, good = sequential_pair()
    _, bad = sequential_pair(bad_eps=0.5)
    check(pt, good, bad, x, {"1.norm"}, flax_inputs=x.transpose(0, 2, 3, 1))


# --- 2. module fields of any type ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    hidden: int
    eps: float = 1e-5


class Dense2(nn.Module):
    """A nested module passed to its parent as a field."""

    features: int
    dense_cls: Any = nn.Dense

    @nn.compact
    def __call__(self, x):
        return self.dense_cls(self.features, name="inner")(x)


class FieldsMLP(nn.Module):
    cfg: MLPConfig  # a dataclass
    out: nn.Module  # a module instance
    dense: Callable = functools.partial(nn.Dense, use_bias=True)
    act: Callable = ERF
    dtype: Any = "float32"  # dtypes as a string, a scalar type, a numpy dtype, a numpy type
    param_dtype: Any = jnp.float32
    acc_dtype: Any = np.dtype("float32")
    np_type: Any = np.float32
    norm_cls: type = nn.LayerNorm
    shape: tuple = (None, 8)
    lookup: dict = dataclasses.field(default_factory=lambda: {"a": 1})

    @nn.compact
    def __call__(self, x):
        h = self.act(self.dense(self.cfg.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x))
        return self.norm_cls(epsilon=self.cfg.eps, name="ln")(x + self.out(h))


def fields_pair(eps: float = 1e-5):
    pt = seeded(TMLP())
    port = FieldsMLP(MLPConfig(2 * D, eps), out=Dense2(D))
    p = mlp(pt)
    p["out"] = {"inner": p.pop("fc2")}
    return pt, (port, {"params": p})


def test_module_config_of_fields_of_every_type_never_raises():
    cfg = module_config(FieldsMLP(MLPConfig(4), out=Dense2(D)))
    assert cfg["dtype"] == "float32" and cfg["param_dtype"] == "float32" and cfg["acc_dtype"] == "float32"
    assert cfg["np_type"] == "float32" and cfg["act"].startswith("gelu")
    assert "norm_cls" not in cfg and "cfg" not in cfg and "out" not in cfg and "dense" not in cfg


def test_module_fields_of_every_type():
    x = data(2, 3, D)
    pt, good = fields_pair()
    _, bad = fields_pair(eps=0.5)
    check(pt, good, bad, x, {"ln"})


# --- 3. non-array arguments and outputs -------------------------------------------------------


class TMixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TMLP()
        self.head = torch.nn.Linear(D, 3)

    def forward(self, x):
        h = self.block(x)
        return {"hidden": h, "logits": self.head(h)}


class MixedBlock(nn.Module):
    act: Callable = ERF

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, mode: str = "eval"):
        assert mask is None and deterministic and mode == "eval"
        h = nn.Dense(2 * D, name="fc1")(x)
        y = nn.LayerNorm(epsilon=1e-5, name="ln")(x + nn.Dense(D, name="fc2")(self.act(h)))
        return y, None, {"hidden": y, "flag": True, "name": "block", "nothing": None}


class MixedPort(nn.Module):
    act: Callable = ERF

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, mode: str = "eval"):
        y, _, extra = MixedBlock(self.act, name="block")(x, None, deterministic, mode=mode)
        return {"hidden": extra["hidden"], "logits": nn.Dense(3, name="head")(y), "aux": (None, True)}


def test_non_array_arguments_and_outputs():
    pt = seeded(TMixed())
    variables = {"params": {"block": mlp(pt.block), "head": lin(pt.head)}}
    x = data(2, 3, D)
    fx = {"x": x, "mask": None, "deterministic": True, "mode": "eval"}
    check(pt, (MixedPort(), variables), (MixedPort(TANH), variables), x, {"block", "block.act"}, flax_inputs=fx)


# --- 4. nn.remat-lifted blocks ------------------------------------------------------------------


class FMLP(nn.Module):
    act: Callable = ERF
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        h = self.act(nn.Dense(2 * D, name="fc1")(x))
        return nn.LayerNorm(epsilon=self.eps, name="ln")(x + nn.Dense(D, name="fc2")(h))


class RematStack(nn.Module):
    bug_at: int = -1

    @nn.compact
    def __call__(self, x):
        block = nn.remat(FMLP)
        for i in range(2):
            x = block(TANH if i == self.bug_at else ERF, name=f"blocks_{i}")(x)
        return x


def test_remat_lifted_blocks():
    pt = seeded(TStack())
    variables = {"params": {f"blocks_{i}": mlp(b) for i, b in enumerate(pt.blocks)}}
    x = data(2, 3, D)
    check(pt, (RematStack(), variables), (RematStack(1), variables), x, {"blocks.1", "blocks.1.act"})


# --- 5. nn.scan over a shared block -----------------------------------------------------------


class TRepeat(torch.nn.Module):
    """One block applied three times (shared weights)."""

    def __init__(self):
        super().__init__()
        self.layer = TMLP()

    def forward(self, x):
        for _ in range(3):
            x = self.layer(x)
        return x


class ScanStep(nn.Module):
    eps: float = 1e-5

    @nn.compact
    def __call__(self, carry, _):
        return FMLP(eps=self.eps, name="mlp")(carry), None


class ScanPort(nn.Module):
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        steps = nn.scan(ScanStep, variable_broadcast="params", split_rngs={"params": False}, length=3)
        y, _ = steps(self.eps, name="layer")(x, None)
        return y


def test_scan_over_a_shared_block_gives_one_record_per_step():
    pt = seeded(TRepeat())
    variables = {"params": {"layer": {"mlp": mlp(pt.layer)}}}
    x = data(2, 3, D)
    trace = LinenSide((ScanPort(), variables), x).capture()
    assert [r.call_index for r in trace.records if r.path == "layer.mlp"] == [0, 1, 2]
    check(
        pt,
        (ScanPort(), variables),
        (ScanPort(eps=0.5), variables),
        x,
        {"layer.ln"},
    )


def test_scan_over_stacked_layers_is_captured_step_by_step():
    class Stacked(nn.Module):
        @nn.compact
        def __call__(self, x):
            steps = nn.scan(ScanStep, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return steps(name="layers")(x, None)[0]

    x = jnp.asarray(data(2, 3, D))
    m = Stacked()
    variables = m.init(jax.random.PRNGKey(0), x)
    for jit in (True, False):
        trace = LinenSide((m, variables), x, jit=jit).capture()
        steps = [r for r in trace.records if r.path == "layers.mlp"]
        assert len(steps) == 3 and all(r.outputs["out"].shape == (2, 3, D) for r in steps)
        np.testing.assert_allclose(trace.root().outputs["out"], np.asarray(m.apply(variables, x)), rtol=1e-6)


# --- 6. nn.vmap-lifted block ------------------------------------------------------------------


class VmapPort(nn.Module):
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        per_example = nn.vmap(FMLP, in_axes=0, out_axes=0, variable_axes={"params": None}, split_rngs={"params": False})
        return per_example(eps=self.eps, name="block")(x)


def test_vmap_lifted_block_is_recorded_as_one_batched_call():
    pt = seeded(TMLP())
    variables = {"params": {"block": mlp(pt)}}
    x = data(2, 3, D)
    trace = LinenSide((VmapPort(), variables), x).capture()
    (rec,) = [r for r in trace.records if r.path == "block"]
    assert rec.outputs["out"].shape == (2, 3, D)
    wrapped = torch.nn.Sequential()
    wrapped.add_module("block", pt)
    # Teacher forcing is not applied per example inside nn.vmap: the planted bug sits on a module.
    check(wrapped, (VmapPort(), variables), (VmapPort(eps=0.5), variables), x, {"block.ln"})


# --- 7. @nn.compact automatic names ---------------------------------------------------------


class AutoBlock(nn.Module):
    approximate: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(2 * D)(x), approximate=self.approximate)
        return nn.LayerNorm(epsilon=1e-5)(x + nn.Dense(D)(h))


class AutoNamed(nn.Module):
    bug_at: int = -1

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = AutoBlock(approximate=i == self.bug_at)(x)  # AutoBlock_0, AutoBlock_1: names nobody chose
        return x


def test_compact_automatic_names():
    pt = seeded(TStack())
    p = {}
    for i, b in enumerate(pt.blocks):
        p[f"AutoBlock_{i}"] = mlp(b, ("Dense_0", "Dense_1", "LayerNorm_0"))
    variables = {"params": p}
    x = data(2, 3, D)
    check(pt, (AutoNamed(), variables), (AutoNamed(1), variables), x, {"blocks.1", "blocks.1.act"})


# --- 8. methods other than __call__: encode, decode, attend --------------------------------


class TSeq2Seq(torch.nn.Module):
    def __init__(self, vocab: int = 11):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, D)
        self.encoder = TMLP()
        self.decoder = TMLP()

    def forward(self, ids):
        h = self.decoder(self.encoder(self.embed(ids)))
        return h @ self.embed.weight.T  # tied output projection


class Seq2Seq(nn.Module):
    vocab: int = 11
    decoder_act: Callable = ERF

    def setup(self):
        self.embed = nn.Embed(self.vocab, D)
        self.encoder = FMLP()
        self.decoder = FMLP(self.decoder_act)

    def encode(self, ids):
        return self.encoder(self.embed(ids))

    def decode(self, h):
        return self.decoder(h)

    def __call__(self, ids):
        return self.embed.attend(self.decode(self.encode(ids)))


def test_methods_other_than_call():
    pt = seeded(TSeq2Seq())
    variables = {
        "params": {"embed": {"embedding": _np(pt.embed.weight)}, "encoder": mlp(pt.encoder), "decoder": mlp(pt.decoder)}
    }
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)
    trace = LinenSide((Seq2Seq(), variables), ids).capture()
    assert {"encode", "decode", "embed.attend"} <= set(trace.paths())
    assert [r.method for r in trace.records if r.path in ("encode", "decode", "embed.attend")] == [
        "encode",
        "decode",
        "attend",
    ]
    check(pt, (Seq2Seq(), variables), (Seq2Seq(decoder_act=TANH), variables), ids, {"decoder", "decoder.act"})


# --- failures: the model's own vs xfdiff's -----------------------------------------------------


def test_a_model_that_raises_is_reported_as_the_models_error():
    class Broken(nn.Module):
        @nn.compact
        def __call__(self, x):
            raise ValueError("shape check failed in the user's code")

    with pytest.raises(CaptureError, match="raised ValueError") as info:
        LinenSide((Broken(), {}), data(2, D)).capture()
    assert not isinstance(info.value, InternalError)


def test_a_failure_of_xfdiffs_recording_is_reported_as_xfdiffs(monkeypatch):
    from xfdiff.capture import from_linen

    def broken_config(mod):
        raise RuntimeError("config reader broke")

    monkeypatch.setattr(from_linen, "module_config", broken_config)
    pt = seeded(TMLP())
    with pytest.raises(InternalError, match="not of your model") as info:
        LinenSide((FMLP(), {"params": mlp(pt)}), data(2, D)).capture()
    assert "config reader broke" in str(info.value) and "raised RuntimeError during its forward" not in str(info.value)


def test_bounded_memory_finds_the_same_culprit_inside_nn_remat():
    pt = seeded(TStack())
    variables = {"params": {f"blocks_{i}": mlp(b) for i, b in enumerate(pt.blocks)}}
    x = data(2, 3, D)
    kw = dict(diagnose=False, progress=False)
    full = xfdiff.compare(pt, (RematStack(1), variables), x, **kw)
    bounded = xfdiff.compare(pt, (RematStack(1), variables), x, memory="bounded", **kw)
    assert full.first_divergence.torch_path == bounded.first_divergence.torch_path == "blocks.1"
    assert [lyr.torch_path for lyr in full.layers] == [lyr.torch_path for lyr in bounded.layers]
