"""A small PyTorch MLP-block model and a hand-written Flax linen port of it."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import torch


class Block(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, 4 * d)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(4 * d, d)
        self.ln = torch.nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x + self.fc2(self.act(self.fc1(x))))


class Net(torch.nn.Module):
    def __init__(self, d: int = 16, n: int = 3):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(d) for _ in range(n)])
        self.head = torch.nn.Linear(d, 4)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class FBlock(nn.Module):
    d: int
    approximate: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4 * self.d, name="fc1")(x)
        h = nn.gelu(h, approximate=self.approximate)
        h = nn.Dense(self.d, name="fc2")(h)
        return nn.LayerNorm(epsilon=1e-5, name="ln")(x + h)


class FNet(nn.Module):
    d: int = 16
    n: int = 3
    tanh_gelu_in: int = -1  # block index whose GELU is the tanh approximation (a port bug)

    @nn.compact
    def __call__(self, x):
        for i in range(self.n):
            x = FBlock(self.d, approximate=(i == self.tanh_gelu_in), name=f"blocks_{i}")(x)
        return nn.Dense(4, name="head")(x)


def convert(pt: Net) -> dict:
    def lin(m):
        return {"kernel": m.weight.detach().numpy().T.copy(), "bias": m.bias.detach().numpy().copy()}

    p = {}
    for i, b in enumerate(pt.blocks):
        p[f"blocks_{i}"] = {
            "fc1": lin(b.fc1),
            "fc2": lin(b.fc2),
            "ln": {"scale": b.ln.weight.detach().numpy().copy(), "bias": b.ln.bias.detach().numpy().copy()},
        }
    p["head"] = lin(pt.head)
    return {"params": p}


def pair(d: int = 16, n: int = 3, seed: int = 0, **port_kw):
    torch.manual_seed(seed)
    pt = Net(d, n).eval()
    x = np.random.default_rng(seed).standard_normal((2, 5, d)).astype(np.float32)
    return pt, (FNet(d, n, **port_kw), convert(pt)), x
