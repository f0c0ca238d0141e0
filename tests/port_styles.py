"""More port styles: fused projections the other way round, and weights held beside value taps.

- ``merged_qkv_pair``: a PyTorch encoder in the Hugging Face style (separate
  ``q_proj``/``k_proj``/``v_proj`` Linear layers) against a linen port in the
  style of big-vision/maxtext code that projects q, k and v with one fused
  ``nn.Dense(3 * D, name="qkv")`` and splits the result. Bug: the port leaves
  out ``1/sqrt(head_dim)`` in one block.
- ``kv_fused_pair``: the same PyTorch encoder against a port that fuses only
  k and v (``nn.Dense(2 * D, name="kv")``, as in cross-attention code), with a
  separate ``q``. Bug: the port's GELU is the tanh approximation in one block.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import torch

D, HEADS, LAYERS, T = 16, 2, 2, 6


class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(D, D)
        self.k_proj = torch.nn.Linear(D, D)
        self.v_proj = torch.nn.Linear(D, D)
        self.o_proj = torch.nn.Linear(D, D)

    def forward(self, x):
        b, t, _ = x.shape
        split = lambda z: z.view(b, t, HEADS, D // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        w = torch.softmax(q @ k.transpose(-1, -2) / (D // HEADS) ** 0.5, dim=-1)
        return self.o_proj((w @ v).transpose(1, 2).reshape(b, t, D))


class TorchLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(D)
        self.attn = TorchAttention()
        self.ln2 = torch.nn.LayerNorm(D)
        self.fc1 = torch.nn.Linear(D, 2 * D)
        self.fc2 = torch.nn.Linear(2 * D, D)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class TorchEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(5, D)
        self.layers = torch.nn.ModuleList([TorchLayer() for _ in range(LAYERS)])
        self.out = torch.nn.Linear(D, 3)

    def forward(self, x):
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


def _attend(q, k, v, scaled: bool):
    b, t, _ = q.shape
    hd = D // HEADS
    split = lambda z: z.reshape(b, t, HEADS, hd)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    if scaled:
        q = q / jnp.sqrt(hd).astype(q.dtype)
    w = nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, D)


class FusedAttention(nn.Module):
    scaled: bool = True
    fuse: str = "qkv"  # "qkv": one Dense for all three; "kv": q alone, k and v fused

    @nn.compact
    def __call__(self, x):
        if self.fuse == "qkv":
            q, k, v = jnp.split(nn.Dense(3 * D, name="qkv")(x), 3, axis=-1)
        else:
            q = nn.Dense(D, name="q")(x)
            k, v = jnp.split(nn.Dense(2 * D, name="kv")(x), 2, axis=-1)
        return nn.Dense(D, name="proj")(_attend(q, k, v, self.scaled))


class Block(nn.Module):
    scaled: bool = True
    tanh_gelu: bool = False
    fuse: str = "qkv"

    @nn.compact
    def __call__(self, x):
        x = x + FusedAttention(self.scaled, self.fuse, name="attn")(nn.LayerNorm(epsilon=1e-5, name="ln1")(x))
        h = nn.Dense(2 * D, name="fc1")(nn.LayerNorm(epsilon=1e-5, name="ln2")(x))
        return x + nn.Dense(D, name="fc2")(nn.gelu(h, approximate=self.tanh_gelu))


class Encoder(nn.Module):
    bug_layer: int = -1
    bug: str = ""
    fuse: str = "qkv"

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(D, name="inp")(x)
        for i in range(LAYERS):
            hit = i == self.bug_layer
            x = Block(not (hit and self.bug == "scale"), hit and self.bug == "gelu", self.fuse, name=f"block{i}")(x)
        return nn.Dense(3, name="out")(x)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _variables(pt: TorchEncoder, fuse: str) -> dict:
    dense = lambda m: {"kernel": _np(m.weight).T.copy(), "bias": _np(m.bias)}  # noqa: E731
    norm = lambda m: {"scale": _np(m.weight), "bias": _np(m.bias)}  # noqa: E731

    def joined(*ms):
        return {
            "kernel": np.concatenate([_np(m.weight).T for m in ms], axis=1),
            "bias": np.concatenate([_np(m.bias) for m in ms]),
        }

    p = {"inp": dense(pt.inp), "out": dense(pt.out)}
    for i, layer in enumerate(pt.layers):
        a = layer.attn
        if fuse == "qkv":
            attn = {"qkv": joined(a.q_proj, a.k_proj, a.v_proj)}
        else:
            attn = {"q": dense(a.q_proj), "kv": joined(a.k_proj, a.v_proj)}
        attn["proj"] = dense(a.o_proj)
        p[f"block{i}"] = {
            "ln1": norm(layer.ln1),
            "attn": attn,
            "ln2": norm(layer.ln2),
            "fc1": dense(layer.fc1),
            "fc2": dense(layer.fc2),
        }
    return {"params": p}


def _torch_encoder(seed: int) -> TorchEncoder:
    torch.manual_seed(seed)
    pt = TorchEncoder().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in pt.named_parameters():
            if prm.ndim == 1 and "ln" in name:
                prm.copy_(1.0 + 0.1 * torch.randn(prm.shape, generator=g))
            elif prm.ndim == 1:
                prm.copy_(0.1 * torch.randn(prm.shape, generator=g))
    return pt


def merged_qkv_pair(bug: bool = False, seed: int = 0):
    """(torch encoder with separate q/k/v, (linen encoder with a fused qkv Dense, variables), inputs)."""
    pt = _torch_encoder(seed)
    port = Encoder(bug_layer=1 if bug else -1, bug="scale", fuse="qkv")
    x = np.random.default_rng(seed).standard_normal((2, T, 5)).astype(np.float32)
    return pt, (port, _variables(pt, "qkv")), x


def kv_fused_pair(bug: bool = False, seed: int = 0):
    """(torch encoder, (linen encoder with q alone and k/v fused, variables), inputs)."""
    pt = _torch_encoder(seed)
    port = Encoder(bug_layer=1 if bug else -1, bug="gelu", fuse="kv")
    x = np.random.default_rng(seed).standard_normal((2, T, 5)).astype(np.float32)
    return pt, (port, _variables(pt, "kv")), x
