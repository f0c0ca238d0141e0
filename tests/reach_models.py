"""Reference/port pairs whose names and layouts differ.

- ``TorchLM``: a tiny PyTorch transformer (``blocks.i.attn.q_proj``, ``mlp.fc1``...).
- ``NnxLM``: its Flax NNX port with other attribute names (``layers.i.attention.query``,
  ``ffn.up``...), heads split in the projections (``LinearGeneral`` to ``(H, D)``).
- ``TorchCNN`` (NCHW) and ``LinenCNN`` (NHWC, auto names ``Conv_0``, ``Dense_0``).
- ``tap_forward``: the same transformer written as functions over a params dict,
  its values marked with ``xfdiff.tap``.

Parameters are random (like a trained model: layer norms are not 1 and 0), so
fingerprints are informative. Bugs are switched on by keyword arguments.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import xfdiff

D, H, V, T, L = 32, 4, 64, 8, 2  # hidden, heads, vocab, sequence, layers
HD = D // H


# --- PyTorch reference transformer ---------------------------------------------------------


class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(D, D) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, H, HD).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
        att = att.masked_fill(
            torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1), float("-inf")
        ).softmax(-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, t, D))


class TorchMLP(torch.nn.Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            torch.nn.Linear(D, 4 * D),
            torch.nn.GELU(approximate=approximate),
            torch.nn.Linear(4 * D, D),
        )
        self.dropout = torch.nn.Dropout(0.1)

    def forward(self, x):
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class TorchBlock(torch.nn.Module):
    def __init__(self, eps: float = 1e-5, approximate: str = "none"):
        super().__init__()
        self.ln1, self.attn = torch.nn.LayerNorm(D, eps=eps), TorchAttention()
        self.ln2, self.mlp = torch.nn.LayerNorm(D, eps=eps), TorchMLP(approximate)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TorchLM(torch.nn.Module):
    """``bugs``: ``{layer: {"eps": ..., "approximate": "tanh"}}`` (used when torch is the port)."""

    def __init__(self, bugs: dict | None = None):
        super().__init__()
        bugs = bugs or {}
        self.embed = torch.nn.Embedding(V, D)
        self.blocks = torch.nn.ModuleList([TorchBlock(**bugs.get(i, {})) for i in range(L)])
        self.ln_f, self.head = torch.nn.LayerNorm(D), torch.nn.Linear(D, V)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (layer norms included), as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1)
                + (1.0 if p.ndim == 1 and p.shape[0] == D else 0.0)
            )
    return model.eval()


def token_ids(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(2, T)).astype(np.int64)


# --- NNX port with other names -------------------------------------------------------------


class NnxAttention(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.query, self.key, self.value = (nnx.LinearGeneral(D, (H, HD), rngs=rngs) for _ in range(3))
        self.out = nnx.LinearGeneral((H, HD), D, axis=(-2, -1), rngs=rngs)

    def __call__(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, H, HD)
        att = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(HD)
        t = x.shape[1]
        att = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -jnp.inf), axis=-1)
        return self.out(jnp.einsum("bhts,bshd->bthd", att, v))


class NnxGelu(nnx.Module):
    def __init__(self, approximate: bool = False):
        self.approximate = approximate

    def __call__(self, x):
        return nnx.gelu(x, approximate=self.approximate)


class NnxFFN(nnx.Module):
    """Parameter-free children named and typed unlike the reference's (``act`` GELU -> ``activation``)."""

    def __init__(self, rngs: nnx.Rngs, approximate: bool = False):
        self.up, self.down = nnx.Linear(D, 4 * D, rngs=rngs), nnx.Linear(4 * D, D, rngs=rngs)
        self.activation = NnxGelu(approximate)
        self.drop = nnx.Dropout(0.1, deterministic=True, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.down(self.activation(self.up(x))))


class NnxBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, eps: float = 1e-5, approximate: bool = False):
        self.norm1 = nnx.LayerNorm(D, epsilon=eps, rngs=rngs)
        self.attention = NnxAttention(rngs)
        self.norm2 = nnx.LayerNorm(D, epsilon=eps, rngs=rngs)
        self.ffn = NnxFFN(rngs, approximate)

    def __call__(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class NnxLM(nnx.Module):
    """``bugs``: ``{layer: {"eps": ..., "approximate": True}}``."""

    def __init__(self, rngs: nnx.Rngs, bugs: dict | None = None):
        bugs = bugs or {}
        self.tok_emb = nnx.Embed(V, D, rngs=rngs)
        self.layers = nnx.List([NnxBlock(rngs, **bugs.get(i, {})) for i in range(L)])
        self.final_norm = nnx.LayerNorm(D, epsilon=1e-5, rngs=rngs)
        self.lm_head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, ids):
        x = self.tok_emb(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.final_norm(x))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _set(var, value) -> None:
    var.set_value(jnp.asarray(value))


def nnx_from_torch(pt: TorchLM, bugs: dict | None = None) -> NnxLM:
    """The NNX port carrying the reference's weights (kernels transposed, heads split)."""
    m = NnxLM(nnx.Rngs(0), bugs)
    _set(m.tok_emb.embedding, _np(pt.embed.weight))
    for b, blk in zip(pt.blocks, m.layers, strict=True):
        for tn, nn_ in ((b.ln1, blk.norm1), (b.ln2, blk.norm2)):
            _set(nn_.scale, _np(tn.weight))
            _set(nn_.bias, _np(tn.bias))
        for tp, np_ in (
            (b.attn.q_proj, blk.attention.query),
            (b.attn.k_proj, blk.attention.key),
            (b.attn.v_proj, blk.attention.value),
        ):
            _set(np_.kernel, _np(tp.weight).T.reshape(D, H, HD))
            _set(np_.bias, _np(tp.bias).reshape(H, HD))
        _set(blk.attention.out.kernel, _np(b.attn.o_proj.weight).T.reshape(H, HD, D))
        _set(blk.attention.out.bias, _np(b.attn.o_proj.bias))
        for tp, np_ in ((b.mlp.fc1, blk.ffn.up), (b.mlp.fc2, blk.ffn.down)):
            _set(np_.kernel, _np(tp.weight).T)
            _set(np_.bias, _np(tp.bias))
    _set(m.final_norm.scale, _np(pt.ln_f.weight))
    _set(m.final_norm.bias, _np(pt.ln_f.bias))
    _set(m.lm_head.kernel, _np(pt.head.weight).T)
    _set(m.lm_head.bias, _np(pt.head.bias))
    return m


def torch_from_nnx(m: NnxLM, bugs: dict | None = None) -> TorchLM:
    """A PyTorch port of an NNX reference (the reverse direction)."""
    pt = TorchLM(bugs)
    val = lambda v: torch.from_numpy(np.asarray(v.get_value()).copy())  # noqa: E731
    with torch.no_grad():
        pt.embed.weight.copy_(val(m.tok_emb.embedding))
        for b, blk in zip(pt.blocks, m.layers, strict=True):
            for tn, nn_ in ((b.ln1, blk.norm1), (b.ln2, blk.norm2)):
                tn.weight.copy_(val(nn_.scale))
                tn.bias.copy_(val(nn_.bias))
            for tp, np_ in (
                (b.attn.q_proj, blk.attention.query),
                (b.attn.k_proj, blk.attention.key),
                (b.attn.v_proj, blk.attention.value),
            ):
                tp.weight.copy_(val(np_.kernel).reshape(D, D).T)
                tp.bias.copy_(val(np_.bias).reshape(D))
            b.attn.o_proj.weight.copy_(val(blk.attention.out.kernel).reshape(D, D).T)
            b.attn.o_proj.bias.copy_(val(blk.attention.out.bias))
            for tp, np_ in ((b.mlp.fc1, blk.ffn.up), (b.mlp.fc2, blk.ffn.down)):
                tp.weight.copy_(val(np_.kernel).T)
                tp.bias.copy_(val(np_.bias))
        pt.ln_f.weight.copy_(val(m.final_norm.scale))
        pt.ln_f.bias.copy_(val(m.final_norm.bias))
        pt.head.weight.copy_(val(m.lm_head.kernel).T)
        pt.head.bias.copy_(val(m.lm_head.bias))
    return pt.eval()


def lm_pair(seed: int = 0, bugs: dict | None = None):
    """(torch reference, NNX port, token ids); ``bugs`` go into the port."""
    pt = randomize(TorchLM(), seed)
    return pt, nnx_from_torch(pt, bugs), token_ids(seed)


# --- function-style port with taps ----------------------------------------------------------


def lm_params(pt: TorchLM) -> dict:
    """The reference weights as a params dict whose paths follow the tap names."""
    lin = lambda m: {"kernel": jnp.asarray(_np(m.weight).T), "bias": jnp.asarray(_np(m.bias))}  # noqa: E731
    norm = lambda m: {"scale": jnp.asarray(_np(m.weight)), "bias": jnp.asarray(_np(m.bias))}  # noqa: E731
    layers = []
    for b in pt.blocks:
        layers.append(
            {
                "ln1": norm(b.ln1),
                "ln2": norm(b.ln2),
                "attn": {n: lin(getattr(b.attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
                "mlp": {"fc1": lin(b.mlp.fc1), "fc2": lin(b.mlp.fc2)},
            }
        )
    return {
        "embed": {"embedding": jnp.asarray(_np(pt.embed.weight))},
        "blocks": layers,
        "ln_f": norm(pt.ln_f),
        "head": lin(pt.head),
    }


def dense(p, x):
    return x @ p["kernel"] + p["bias"]


def layer_norm(p, x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _attention(p, x, prefix):
    b, t, _ = x.shape
    q, k, v = (xfdiff.tap(f"{prefix}.{n}", dense, p[n], x).reshape(b, t, H, HD) for n in ("q_proj", "k_proj", "v_proj"))
    att = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(HD)
    att = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -jnp.inf), axis=-1)
    return xfdiff.tap(f"{prefix}.o_proj", dense, p["o_proj"], jnp.einsum("bhts,bshd->bthd", att, v).reshape(b, t, D))


def tap_forward(params, ids, bug_layer: int = -1):
    """The transformer as functions; ``bug_layer``: that layer's GELU is the tanh approximation."""
    x = xfdiff.tap("embed", params["embed"]["embedding"][ids])
    for i, p in enumerate(params["blocks"]):
        pre = f"blocks.{i}"
        h = xfdiff.tap(f"{pre}.ln1", layer_norm, p["ln1"], x)
        x = x + xfdiff.tap(f"{pre}.attn", _attention(p["attn"], h, f"{pre}.attn"))
        h = xfdiff.tap(f"{pre}.ln2", layer_norm, p["ln2"], x)
        u = xfdiff.tap(f"{pre}.mlp.fc1", dense, p["mlp"]["fc1"], h)
        u = jax.nn.gelu(u, approximate=i == bug_layer)
        x = x + xfdiff.tap(f"{pre}.mlp", xfdiff.tap(f"{pre}.mlp.fc2", dense, p["mlp"]["fc2"], u))
        x = xfdiff.tap(pre, x)
    return dense(params["head"], xfdiff.tap("ln_f", layer_norm, params["ln_f"], x))


# --- CNN: NCHW PyTorch vs NHWC linen with auto names ----------------------------------------


class TorchCNN(torch.nn.Module):
    """(B, 3, 8, 8) -> conv 8 (C=H=W=8) -> pool -> conv 4 (C=H=W=4) -> flatten -> linear 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.conv2 = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.act2 = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(x)))
        return self.fc(self.flatten(self.act2(self.conv2(x))))


class LinenCNN(nn.Module):
    """The NHWC port; ``flip_conv`` flips the second kernel spatially (a port bug)."""

    flip_conv: bool = False

    @nn.compact
    def __call__(self, x):  # x: (B, 8, 8, 3)
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3), padding=1)(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(4, (3, 3), padding=1)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def cnn_variables(pt: TorchCNN, flip_conv: bool = False) -> dict:
    """Linen variables from the PyTorch CNN: OIHW -> HWIO, dense rows in NHWC flatten order."""
    k1 = _np(pt.conv1.weight).transpose(2, 3, 1, 0)
    k2 = _np(pt.conv2.weight).transpose(2, 3, 1, 0)
    if flip_conv:
        k2 = k2[::-1, ::-1].copy()
    w = _np(pt.fc.weight).reshape(10, 4, 4, 4).transpose(0, 2, 3, 1).reshape(10, -1)  # (out, C,H,W) -> (out, H,W,C)
    return {
        "params": {
            "Conv_0": {"kernel": k1, "bias": _np(pt.conv1.bias)},
            "Conv_1": {"kernel": k2, "bias": _np(pt.conv2.bias)},
            "Dense_0": {"kernel": w.T.copy(), "bias": _np(pt.fc.bias)},
        }
    }


def cnn_pair(seed: int = 0, flip_conv: bool = False):
    """(torch CNN, (linen module, variables), NCHW input, NHWC input)."""
    torch.manual_seed(seed)
    pt = TorchCNN().eval()
    x = np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32)
    return pt, (LinenCNN(), cnn_variables(pt, flip_conv)), x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))
