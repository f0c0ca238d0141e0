"""A small residual MLP stack (reference in PyTorch, port in Flax linen) with bugs to switch on per block.

Each block is ``x + fc2(act(fc1(ln(x))))`` with the activation a module on both
sides, so every step is a call xfdiff can pair and splice. ``port_bugs`` maps a
block index to ``{"act": "tanh"}`` (tanh-approximate GELU) and/or ``{"eps": 1e-2}``
(a LayerNorm epsilon other than the reference's 1e-5).
"""

from __future__ import annotations

import numpy as np
import torch
from flax import linen as nn

D, H, V = 32, 64, 96


class TBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(D)
        self.fc1 = torch.nn.Linear(D, H)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(H, D)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


class TStack(torch.nn.Module):
    def __init__(self, n_blocks=4, head=False):
        super().__init__()
        self.blocks = torch.nn.ModuleList([TBlock() for _ in range(n_blocks)])
        self.head = torch.nn.Linear(D, V) if head else None

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x) if self.head is not None else x


class GELU(nn.Module):
    approximate: bool = False

    def __call__(self, x):
        return nn.gelu(x, approximate=self.approximate)


class FBlock(nn.Module):
    act_tanh: bool = False
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(epsilon=self.eps, name="ln")(x)
        h = nn.Dense(H, name="fc1")(h)
        h = GELU(approximate=self.act_tanh, name="act")(h)
        return x + nn.Dense(D, name="fc2")(h)


class FStack(nn.Module):
    n_blocks: int = 4
    bugs: tuple = ()  # ((block, (("act", "tanh"), ("eps", 1e-2))), ...)
    head: bool = False

    @nn.compact
    def __call__(self, x):
        bugs = {i: dict(b) for i, b in self.bugs}
        for i in range(self.n_blocks):
            b = bugs.get(i, {})
            x = FBlock(act_tanh=b.get("act") == "tanh", eps=b.get("eps", 1e-5), name=f"blocks_{i}")(x)
        return nn.Dense(V, name="head")(x) if self.head else x


def _np(t):
    return t.detach().numpy()


def pair(port_bugs: dict | None = None, n_blocks: int = 4, head: bool = False, seed: int = 0):
    """``(torch model, (linen module, variables), input)`` with the port broken as ``port_bugs`` says."""
    torch.manual_seed(seed)
    pt = TStack(n_blocks, head).eval()
    params = {}
    for i, b in enumerate(pt.blocks):
        with torch.no_grad():  # non-trivial norm affine parameters
            b.ln.weight.uniform_(0.5, 1.5)
            b.ln.bias.uniform_(-0.2, 0.2)
        params[f"blocks_{i}"] = {
            "ln": {"scale": _np(b.ln.weight), "bias": _np(b.ln.bias)},
            "fc1": {"kernel": _np(b.fc1.weight).T, "bias": _np(b.fc1.bias)},
            "fc2": {"kernel": _np(b.fc2.weight).T, "bias": _np(b.fc2.bias)},
        }
    if head:
        params["head"] = {"kernel": _np(pt.head.weight).T, "bias": _np(pt.head.bias)}
    bugs = tuple(sorted((i, tuple(sorted(b.items()))) for i, b in (port_bugs or {}).items()))
    fx = FStack(n_blocks=n_blocks, bugs=bugs, head=head)
    x = np.random.default_rng(seed).normal(0, 1, (2, 8, D)).astype(np.float32)
    return pt, (fx, {"params": params}), x


class FBlockBiasOutside(nn.Module):
    """Block 0 of a port that applies fc1's bias in the block instead of in the Dense (a boundary difference)."""

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(epsilon=1e-5, name="ln")(x)
        h = nn.Dense(H, use_bias=False, name="fc1")(h) + self.param("fc1_bias", nn.initializers.zeros, (H,))
        h = GELU(name="act")(h)
        return x + nn.Dense(D, name="fc2")(h)


class FStackBoundary(nn.Module):
    """``FStack`` whose block 0 moves fc1's bias to the block and whose block 3 has a wrong epsilon."""

    eps3: float = 1e-5

    @nn.compact
    def __call__(self, x):
        x = FBlockBiasOutside(name="blocks_0")(x)
        for i in range(1, 4):
            x = FBlock(eps=self.eps3 if i == 3 else 1e-5, name=f"blocks_{i}")(x)
        return x


def boundary_pair(eps3: float = 5e-4):
    """Like :func:`pair` with a boundary difference at ``blocks.0.fc1`` and an epsilon bug at ``blocks.3.ln``."""
    pt, (_, variables), x = pair()
    params = dict(variables["params"])
    b0 = {k: dict(v) for k, v in params["blocks_0"].items()}
    b0["fc1_bias"] = b0["fc1"].pop("bias")
    params["blocks_0"] = b0
    return pt, (FStackBoundary(eps3=eps3), {"params": params}), x
