"""An encoder-decoder reference and ports that share neither names nor parameters with it.

- ``TorchSeq2Seq``: a small post-norm Transformer (``encoder.layers.i.self_attn.q_proj``,
  ``fc1``/``fc2``, ``final_layer_norm``...), random trained-looking weights.
- ``paper_forward``: the same model ported from the paper as functions over a
  params dict with the porter's own names (``enc[i]["mha"]["wq"]``); values are
  marked with value taps (``encoder_layers.0.ff0``), which carry no parameters.
- ``generated_forward``: the same port tapping every value under a generated
  name (``t0``, ``t1``...), as tracing tools name them.

Bugs are switched on by keyword arguments: ``gelu_tanh_layer`` (the FFN of
that encoder layer uses the tanh approximation) and ``unscaled_layer`` (that
encoder layer's attention forgets ``1/sqrt(d)``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

import xfdiff

D, H, FF, V, L = 32, 4, 64, 61, 2
HD = D // H
SRC, TGT = 8, 6


class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (torch.nn.Linear(D, D) for _ in range(4))

    def forward(self, x, mem=None, causal=False):
        mem = x if mem is None else mem
        b, t, s = x.shape[0], x.shape[1], mem.shape[1]
        q = self.q_proj(x).view(b, t, H, HD).transpose(1, 2)
        k = self.k_proj(mem).view(b, s, H, HD).transpose(1, 2)
        v = self.v_proj(mem).view(b, s, H, HD).transpose(1, 2)
        att = q @ k.transpose(-1, -2) / math.sqrt(HD)
        if causal:
            att = att.masked_fill(torch.triu(torch.ones(t, s, dtype=torch.bool), 1), float("-inf"))
        return self.out_proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, D))


class TorchEncoderLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.self_attn_layer_norm = TorchAttention(), torch.nn.LayerNorm(D)
        self.fc1, self.act, self.fc2 = torch.nn.Linear(D, FF), torch.nn.GELU(), torch.nn.Linear(FF, D)
        self.final_layer_norm = torch.nn.LayerNorm(D)

    def forward(self, x):
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class TorchDecoderLayer(TorchEncoderLayer):
    def __init__(self):
        super().__init__()
        self.encoder_attn, self.encoder_attn_layer_norm = TorchAttention(), torch.nn.LayerNorm(D)

    def forward(self, x, mem):
        x = self.self_attn_layer_norm(x + self.self_attn(x, causal=True))
        x = self.encoder_attn_layer_norm(x + self.encoder_attn(x, mem))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class TorchStack(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.embed_tokens, self.embed_positions = torch.nn.Embedding(V, D), torch.nn.Embedding(16, D)
        self.layers = torch.nn.ModuleList([layer() for _ in range(L)])


class TorchSeq2Seq(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = TorchStack(TorchEncoderLayer), TorchStack(TorchDecoderLayer)
        self.lm_head = torch.nn.Linear(D, V)

    def forward(self, src, tgt):
        x = self.encoder.embed_tokens(src) + self.encoder.embed_positions(torch.arange(src.shape[1]))
        for layer in self.encoder.layers:
            x = layer(x)
        y = self.decoder.embed_tokens(tgt) + self.decoder.embed_positions(torch.arange(tgt.shape[1]))
        for layer in self.decoder.layers:
            y = layer(y, x)
        return self.lm_head(y)


def reference(seed: int = 0) -> TorchSeq2Seq:
    g = torch.Generator().manual_seed(seed)
    pt = TorchSeq2Seq()
    with torch.no_grad():
        for name, p in pt.named_parameters():
            norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if norm_scale or p.ndim == 1 else 0.3) + norm_scale)
    return pt.eval()


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (2, SRC)).astype(np.int64), rng.integers(0, V, (2, TGT)).astype(np.int64)


# --- the port: a params dict with the porter's names ------------------------------------------


def _a(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().numpy())


def _mha(m: TorchAttention) -> dict:
    out = {}
    for short, lin in (("q", m.q_proj), ("k", m.k_proj), ("v", m.v_proj), ("o", m.out_proj)):
        out[f"w{short}"], out[f"b{short}"] = _a(lin.weight).T, _a(lin.bias)
    return out


def _ln(m: torch.nn.LayerNorm) -> dict:
    return {"g": _a(m.weight), "b": _a(m.bias)}


def _layer(m: TorchEncoderLayer) -> dict:
    p = {"mha": _mha(m.self_attn), "ln0": _ln(m.self_attn_layer_norm), "ln1": _ln(m.final_layer_norm)}
    p["ff"] = {"w0": _a(m.fc1.weight).T, "b0": _a(m.fc1.bias), "w1": _a(m.fc2.weight).T, "b1": _a(m.fc2.bias)}
    if isinstance(m, TorchDecoderLayer):
        p["xmha"], p["lnx"] = _mha(m.encoder_attn), _ln(m.encoder_attn_layer_norm)
    return p


def port_params(pt: TorchSeq2Seq) -> dict:
    stack = lambda s: {"tok": _a(s.embed_tokens.weight), "pos": _a(s.embed_positions.weight)}  # noqa: E731
    return {
        "src": stack(pt.encoder),
        "tgt": stack(pt.decoder),
        "enc": [_layer(m) for m in pt.encoder.layers],
        "dec": [_layer(m) for m in pt.decoder.layers],
        "out": {"w": _a(pt.lm_head.weight).T, "b": _a(pt.lm_head.bias)},
    }


def _norm(p, x):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["g"] + p["b"]


class _Namer:
    """Gives each value its tap name: the porter's own, or a generated one."""

    def __init__(self, generated: bool):
        self.generated, self.n = generated, 0

    def __call__(self, name: str, value):
        if self.generated:
            name, self.n = f"t{self.n}", self.n + 1
        return xfdiff.tap(name, value)


def _attention(tap, p, x, mem, name, causal=False, scaled=True):
    b, t, s = x.shape[0], x.shape[1], mem.shape[1]
    q = tap(f"{name}.q", (x @ p["wq"] + p["bq"]).reshape(b, t, H, HD))
    k = tap(f"{name}.k", (mem @ p["wk"] + p["bk"]).reshape(b, s, H, HD))
    v = tap(f"{name}.v", (mem @ p["wv"] + p["bv"]).reshape(b, s, H, HD))
    att = jnp.einsum("bthd,bshd->bhts", q, k) / (math.sqrt(HD) if scaled else 1.0)
    if causal:
        att = jnp.where(jnp.tril(jnp.ones((t, s), bool)), att, -jnp.inf)
    ctx = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(att, -1), v).reshape(b, t, D)
    return tap(f"{name}.o", ctx @ p["wo"] + p["bo"])


def _ffn(tap, p, x, name, tanh=False):
    h = tap(f"{name}.ff0", x @ p["w0"] + p["b0"])
    return tap(f"{name}.ff1", jax.nn.gelu(h, approximate=tanh) @ p["w1"] + p["b1"])


def _embed(tap, p, ids, name):
    tok = tap(f"{name}_tok", p["tok"][ids])
    pos = tap(f"{name}_pos", jnp.broadcast_to(p["pos"][: ids.shape[1]], tok.shape))  # (B, T, D): broadcast
    return tok + pos


def _forward(params, src, tgt, generated=False, gelu_tanh_layer=-1, unscaled_layer=-1):
    tap = _Namer(generated)
    x = _embed(tap, params["src"], src, "src")
    for i, p in enumerate(params["enc"]):
        n = f"encoder_layers.{i}"
        x = tap(
            f"{n}.ln0", _norm(p["ln0"], x + _attention(tap, p["mha"], x, x, f"{n}.attn", scaled=i != unscaled_layer))
        )
        x = tap(f"{n}.ln1", _norm(p["ln1"], x + _ffn(tap, p["ff"], x, n, tanh=i == gelu_tanh_layer)))
    y = _embed(tap, params["tgt"], tgt, "tgt")
    for i, p in enumerate(params["dec"]):
        n = f"decoder_layers.{i}"
        y = tap(f"{n}.ln0", _norm(p["ln0"], y + _attention(tap, p["mha"], y, y, f"{n}.attn", causal=True)))
        y = tap(f"{n}.lnx", _norm(p["lnx"], y + _attention(tap, p["xmha"], y, x, f"{n}.xattn")))
        y = tap(f"{n}.ln1", _norm(p["ln1"], y + _ffn(tap, p["ff"], y, n)))
    return tap("logits", y @ params["out"]["w"] + params["out"]["b"])


def paper_forward(params, src, tgt, **bugs):
    """The port with the porter's own tap names (``encoder_layers.0.ff0``)."""
    return _forward(params, src, tgt, **bugs)


def generated_forward(params, src, tgt, **bugs):
    """The port with generated tap names (``t0``, ``t1``, ...)."""
    return _forward(params, src, tgt, generated=True, **bugs)
