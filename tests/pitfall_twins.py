"""Twin models for the pitfall detectors: a tiny PyTorch reference and a Flax linen
port with the same weights, the port broken at a known layer (or not).

``TWINS[pitfall](broken)`` returns a :class:`Twin`; ``xfdiff.compare`` on a
broken twin must report ``pitfall`` at ``Twin.torch_path``, on a correct twin
nothing. Matmul precision is emulated on CPU by rounding the operands inside a
Dense ``dot_general`` (CPU JAX ignores the matmul precision flags).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import linen as nn

D = 32  # model width
T = 8  # sequence length


@dataclass
class Twin:
    pitfall: str
    torch_path: str  # where the finding must land
    pt: torch.nn.Module
    port: tuple
    inputs: Any
    flax_inputs: Any = None
    kwargs: dict = field(default_factory=dict)  # extra compare() arguments
    context: Any = None  # a context manager to run compare() in
    clean_key: str = ""  # correct twins with equal keys are the same model

    def compare(self, **extra):
        import xfdiff

        with self.context or contextlib.nullcontext():
            return xfdiff.compare(
                self.pt, self.port, self.inputs, flax_inputs=self.flax_inputs, progress=False, **self.kwargs, **extra
            )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def dense(lin: torch.nn.Linear, transposed: bool = True, bias: bool = True) -> dict:
    p = {"kernel": _np(lin.weight).T if transposed else _np(lin.weight)}
    if bias and lin.bias is not None:
        p["bias"] = _np(lin.bias)
    return p


def rand(shape, scale=1.0, shift=0.0, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(np.float32)


def _randomize(*mods, seed=0, around=1.0, spread=0.2):
    """Non-trivial norm weights so parameter fingerprints identify the modules."""
    g = torch.Generator().manual_seed(seed)
    for m in mods:
        with torch.no_grad():
            m.weight.copy_(around + spread * torch.randn(m.weight.shape, generator=g))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


# --- emulated low-precision matmuls ------------------------------------------------------------


def _round(x, fmt: str):
    if fmt == "bf16":
        return x.astype(jnp.bfloat16).astype(x.dtype)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0xFFFFE000)  # TF32: keep 10 mantissa bits
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def rounded_dot(fmt: str):
    """A Dense ``dot_general`` that rounds both operands like a TPU (bf16) or an Ampere GPU (tf32)."""

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
        return jax.lax.dot_general(
            _round(lhs, fmt),
            _round(rhs, fmt),
            dimension_numbers,
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=preferred_element_type,
        )

    dot_general.__name__ = f"{fmt}_dot_general"
    return dot_general


# --- MLP --------------------------------------------------------------------------------------


class TMLP(torch.nn.Module):
    def __init__(self, hidden=64, dropout=False, leaky=False):
        super().__init__()
        self.fc1 = torch.nn.Linear(D, hidden)
        self.act = torch.nn.LeakyReLU(0.01) if leaky else torch.nn.GELU()
        self.drop = torch.nn.Dropout(0.1) if dropout else None
        self.fc2 = torch.nn.Linear(hidden, D)

    def forward(self, x):
        h = self.act(self.fc1(x))
        if self.drop is not None:
            h = self.drop(h)
        return self.fc2(h)


class TMLPNet(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.mlp = TMLP(**kw)

    def forward(self, x):
        return self.mlp(x)


class FMLP(nn.Module):
    hidden: int = 64
    act: str = "erf"  # "erf" | "tanh" | "leaky0.01" | "leaky0.2"
    fc1_fmt: str = "fp32"
    fc1_bias: bool = True
    dropout: bool = False
    dropout_active: bool = False

    @nn.compact
    def __call__(self, x):
        dot = None if self.fc1_fmt == "fp32" else rounded_dot(self.fc1_fmt)
        h = nn.Dense(self.hidden, use_bias=self.fc1_bias, dot_general=dot, name="fc1")(x)
        if self.act.startswith("leaky"):
            h = nn.leaky_relu(h, negative_slope=float(self.act[5:]))
        else:
            h = nn.gelu(h, approximate=self.act == "tanh")
        if self.dropout:
            h = nn.Dropout(0.1, deterministic=not self.dropout_active, name="drop")(h)
        return nn.Dense(D, name="fc2")(h)


class FMLPNet(nn.Module):
    mlp_kw: tuple = ()

    @nn.compact
    def __call__(self, x):
        return FMLP(name="mlp", **dict(self.mlp_kw))(x)


def mlp_twin(
    pitfall,
    path,
    broken,
    *,
    port_kw=None,
    hidden=64,
    transposed_fc2=False,
    dropout=False,
    leaky=False,
    clean_kw=None,
    x_scale=2.0,
    dtype=torch.float32,
    **twin_kw,
) -> Twin:
    torch.manual_seed(0)
    pt = TMLPNet(hidden=hidden, dropout=dropout, leaky=leaky).eval().to(dtype)
    kw = dict((port_kw or {}) if broken else (clean_kw or {}))
    kw.setdefault("hidden", hidden)
    kw.setdefault("dropout", dropout)
    m = pt.mlp
    params = {
        "mlp": {
            "fc1": dense(m.fc1, bias=kw.get("fc1_bias", True)),
            "fc2": dense(m.fc2, transposed=not (broken and transposed_fc2)),
        }
    }
    x = rand((2, T, D), x_scale)
    inputs = torch.from_numpy(x).to(dtype) if dtype != torch.float32 else x
    flax_inputs = {"x": x, "rngs": {"dropout": jax.random.PRNGKey(0)}} if kw.get("dropout_active") else None
    key = f"mlp-{hidden}-{dropout}-{leaky}-{dtype}-{sorted(kw.items())}"
    return Twin(
        pitfall,
        path,
        pt,
        (FMLPNet(mlp_kw=tuple(sorted(kw.items()))), {"params": params}),
        (inputs,),
        flax_inputs,
        clean_key=key,
        **twin_kw,
    )


# --- normalisation ------------------------------------------------------------------------------


class TRMSNorm(torch.nn.Module):
    def __init__(self, eps=1e-6, plus_one=False):
        super().__init__()
        self.eps, self.plus_one = eps, plus_one
        self.weight = torch.nn.Parameter(torch.zeros(D) if plus_one else torch.ones(D))

    def forward(self, x):
        xh = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return xh * (1.0 + self.weight) if self.plus_one else xh * self.weight


class TNormNet(torch.nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.norm = norm
        self.fc = torch.nn.Linear(D, D)

    def forward(self, x):
        return self.fc(self.norm(x))


class FHandNorm(nn.Module):
    """A hand-written LayerNorm/RMSNorm with the knobs ports get wrong."""

    kind: str = "ln"
    eps: float = 1e-5
    ddof: int = 0
    eps_outside: bool = False
    rsqrt_bf16: bool = False
    plus_one: bool = False

    @nn.compact
    def __call__(self, x):
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        xc = x - x.mean(-1, keepdims=True) if self.kind == "ln" else x
        var = (xc * xc).sum(-1, keepdims=True) / (x.shape[-1] - self.ddof)
        inv = 1.0 / (jnp.sqrt(var) + self.eps) if self.eps_outside else jax.lax.rsqrt(var + self.eps)
        if self.rsqrt_bf16:
            inv = inv.astype(jnp.bfloat16).astype(jnp.float32)
        y = xc * inv * ((1.0 + w) if self.plus_one else w)
        if self.kind == "ln":
            y = y + self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return y


class FNormNet(nn.Module):
    norm: Any

    @nn.compact
    def __call__(self, x):
        return nn.Dense(D, name="fc")(self.norm(x))


def norm_twin(pitfall, broken, *, ref, port, clean, x, norm_params=None):
    torch.manual_seed(0)
    pt = TNormNet(ref).eval()
    if isinstance(ref, torch.nn.LayerNorm) or getattr(ref, "plus_one", None) is False:
        _randomize(ref)
    else:
        _randomize(ref, around=0.0, spread=0.3)
    w = _np(ref.weight)
    p = {"scale": w}
    if getattr(ref, "bias", None) is not None:
        p["bias"] = _np(ref.bias)
    if norm_params is not None:
        p = norm_params(p)
    params = {"norm": p, "fc": dense(pt.fc)}
    return Twin(
        pitfall,
        "norm",
        pt,
        (FNormNet(port if broken else clean), {"params": params}),
        (x,),
        clean_key=f"norm-{pitfall}",
    )


# --- attention ------------------------------------------------------------------------------------


def _rope_tables(t, hd, base=10000.0):
    inv = 1.0 / base ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class TAttn(torch.nn.Module):
    def __init__(self, heads=4, kv_heads=4, causal=True, rope=True):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, D // heads
        self.causal, self.rope = causal, rope
        self.q_proj = torch.nn.Linear(D, D)
        self.k_proj = torch.nn.Linear(D, kv_heads * self.head_dim)
        self.v_proj = torch.nn.Linear(D, kv_heads * self.head_dim)
        self.o_proj = torch.nn.Linear(D, D)

    def forward(self, x, mask):
        b, t, _ = x.shape
        h, kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(b, t, h, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, kv, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, kv, hd).transpose(1, 2)
        if self.rope:
            cos, sin = (torch.from_numpy(np.concatenate([a, a], -1)).to(q.device) for a in _rope_tables(t, hd))
            q = q * cos + torch.cat([-q[..., hd // 2 :], q[..., : hd // 2]], -1) * sin
            k = k * cos + torch.cat([-k[..., hd // 2 :], k[..., : hd // 2]], -1) * sin
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        allowed = mask.bool()[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, D))


class TAttnNet(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = TAttn(**kw)

    def forward(self, x, mask):
        return self.attn(x, mask)


class FAttn(nn.Module):
    heads: int = 4
    kv_heads: int = 4
    causal: bool = True
    rope: str = "half"  # "half" | "interleaved" | "none"
    kv_map: str = "repeat"
    zero_empty_rows: bool = True
    invert_mask: bool = False
    scale: float | None = None

    def _rope(self, x):
        t, hd = x.shape[2], x.shape[3]
        cos, sin = _rope_tables(t, hd)
        if self.rope == "half":
            cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
            return x * cos + jnp.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1) * sin
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).reshape(x.shape)

    @nn.compact
    def __call__(self, x, mask):
        b, t, _ = x.shape
        h, kv, hd = self.heads, self.kv_heads, D // self.heads
        q = nn.Dense(D, name="q_proj")(x).reshape(b, t, h, hd).transpose(0, 2, 1, 3)
        k = nn.Dense(kv * hd, name="k_proj")(x).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        v = nn.Dense(kv * hd, name="v_proj")(x).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        if self.rope != "none":
            q, k = self._rope(q), self._rope(k)
        if self.kv_map == "repeat":
            k, v = jnp.repeat(k, h // kv, axis=1), jnp.repeat(v, h // kv, axis=1)
        else:
            k, v = jnp.tile(k, (1, h // kv, 1, 1)), jnp.tile(v, (1, h // kv, 1, 1))
        m = mask.astype(bool)
        allowed = (~m if self.invert_mask else m)[:, None, None, :]
        if self.causal:
            allowed = allowed & jnp.tril(jnp.ones((t, t), bool))
        scale = 1.0 / math.sqrt(hd) if self.scale is None else self.scale
        logits = jnp.where(allowed, q @ k.swapaxes(-1, -2) * scale, jnp.finfo(jnp.float32).min)
        o = jax.nn.softmax(logits, axis=-1) @ v
        if self.zero_empty_rows:
            o = jnp.where(allowed.any(-1, keepdims=True), o, 0.0)
        return nn.Dense(D, name="o_proj")(o.transpose(0, 2, 1, 3).reshape(b, t, D))


class FAttnNet(nn.Module):
    attn_kw: tuple = ()

    @nn.compact
    def __call__(self, x, mask):
        return FAttn(name="attn", **dict(self.attn_kw))(x, mask)


def attn_twin(pitfall, broken, *, port_kw, heads=4, kv_heads=4, causal=True, rope=True, pad=None):
    torch.manual_seed(0)
    pt = TAttnNet(heads=heads, kv_heads=kv_heads, causal=causal, rope=rope).eval()
    a = pt.attn
    params = {"attn": {n: dense(getattr(a, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}}
    base = {"heads": heads, "kv_heads": kv_heads, "causal": causal, "rope": "half" if rope else "none"}
    kw = {**base, **(port_kw if broken else {})}
    mask = np.ones((2, T), dtype=bool)
    if pad is not None:
        mask[1, pad] = False
    x = rand((2, T, D))
    return Twin(
        pitfall,
        "attn",
        pt,
        (FAttnNet(attn_kw=tuple(sorted(kw.items()))), {"params": params}),
        (x, mask),
        clean_key=f"attn-{sorted(base.items())}-{pad}",
    )


# --- convolutions -------------------------------------------------------------------------------


class THead(torch.nn.Module):
    def __init__(self, features):
        super().__init__()
        self.fc = torch.nn.Linear(features, 10)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


class TConvNet(torch.nn.Module):
    def __init__(self, stride=1, hw=(8, 8)):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=stride, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = THead(8 * (hw[0] // stride) * (hw[1] // stride))

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))))


class FHead(nn.Module):
    flatten: str = "CHW"

    @nn.compact
    def __call__(self, x):
        if self.flatten == "CHW":
            x = x.transpose(0, 3, 1, 2)
        return nn.Dense(10, name="fc")(x.reshape(x.shape[0], -1))


class FConvNet(nn.Module):
    stride: int = 1
    padding: Any = ((1, 1), (1, 1))
    bn_running: bool = True
    bn_eps: float = 1e-5
    flatten: str = "CHW"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=self.stride, padding=self.padding, name="conv")(x)
        x = nn.BatchNorm(use_running_average=self.bn_running, momentum=0.9, epsilon=self.bn_eps, name="bn")(x)
        return FHead(self.flatten, name="head")(nn.relu(x))


def conv_twin(pitfall, path, broken, *, port_kw, stride=1, kernel=None, hw=(8, 8)):
    torch.manual_seed(0)
    pt = TConvNet(stride=stride, hw=hw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pt.bn.running_mean.copy_(0.3 * torch.randn(8, generator=g))
        pt.bn.running_var.copy_(0.5 + torch.rand(8, generator=g))
    _randomize(pt.bn, seed=2)
    w = _np(pt.conv.weight).transpose(2, 3, 1, 0)
    if broken and kernel == "swap":
        w = _np(pt.conv.weight).transpose(3, 2, 1, 0)
    params = {
        "conv": {"kernel": w, "bias": _np(pt.conv.bias)},
        "bn": {"scale": _np(pt.bn.weight), "bias": _np(pt.bn.bias)},
        "head": {"fc": dense(pt.head.fc)},
    }
    stats = {"bn": {"mean": _np(pt.bn.running_mean), "var": _np(pt.bn.running_var)}}
    kw = {"stride": stride, **(port_kw if broken else {})}
    x = rand((2, 3, *hw), seed=3)
    flax_x = x.transpose(0, 2, 3, 1)
    flax_inputs = {"x": flax_x, "mutable": ["batch_stats"]} if not kw.get("bn_running", True) else (flax_x,)
    return Twin(
        pitfall,
        path,
        pt,
        (FConvNet(**kw), {"params": params, "batch_stats": stats}),
        (x,),
        flax_inputs,
        clean_key=f"conv-{stride}-{hw}",
    )


# --- embeddings ---------------------------------------------------------------------------------


class TEmb(torch.nn.Module):
    def __init__(self, vocab=50, max_pos=20, offset=2, scale=1.0):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, D)
        self.pos = torch.nn.Embedding(max_pos, D)
        self.offset, self.scale = offset, scale

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device) + self.offset
        return self.tok(ids) * self.scale + self.pos(pos)[None]


class TEmbNet(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.emb = TEmb(**kw)
        self.fc = torch.nn.Linear(D, D)

    def forward(self, ids):
        return self.fc(self.emb(ids))


class FEmbNet(nn.Module):
    offset: int = 2
    scale: float = 1.0

    @nn.compact
    def __call__(self, ids):
        return nn.Dense(D, name="fc")(FEmb(self.offset, self.scale, name="emb")(ids))


class FEmb(nn.Module):
    offset: int = 2
    scale: float = 1.0

    @nn.compact
    def __call__(self, ids):
        pos = jnp.arange(ids.shape[1]) + self.offset
        return nn.Embed(50, D, name="tok")(ids) * self.scale + nn.Embed(20, D, name="pos")(pos)[None]


def emb_twin(pitfall, path, broken, *, ref_kw, port_kw):
    torch.manual_seed(0)
    pt = TEmbNet(**ref_kw).eval()
    params = {
        "emb": {"tok": {"embedding": _np(pt.emb.tok.weight)}, "pos": {"embedding": _np(pt.emb.pos.weight)}},
        "fc": dense(pt.fc),
    }
    ids = np.random.default_rng(0).integers(0, 50, (2, T)).astype(np.int64)
    kw = {"offset": 2, "scale": 1.0, **ref_kw, **(port_kw if broken else {})}
    return Twin(
        pitfall,
        path,
        pt,
        (FEmbNet(kw["offset"], kw["scale"]), {"params": params}),
        (ids,),
        clean_key=f"emb-{sorted(ref_kw.items())}",
    )


# --- a scale moved across a module boundary --------------------------------------------------------


class TBlock(torch.nn.Module):
    def __init__(self, post=1.0):
        super().__init__()
        self.fc, self.post = torch.nn.Linear(D, D), post

    def forward(self, x):
        return self.fc(x) * self.post


class TTwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = TBlock(post=2.0), TBlock()

    def forward(self, x):
        return self.b(self.a(x))


class FBlock(nn.Module):
    pre: float = 1.0
    post: float = 1.0

    @nn.compact
    def __call__(self, x):
        return nn.Dense(D, name="fc")(x * self.pre) * self.post


class FTwoBlocks(nn.Module):
    shifted: bool = False

    @nn.compact
    def __call__(self, x):
        if self.shifted:  # the ×2 moves from the end of a to the start of b
            return FBlock(pre=2.0, name="b")(FBlock(name="a")(x))
        return FBlock(name="b")(FBlock(post=2.0, name="a")(x))


def boundary_twin(broken):
    torch.manual_seed(0)
    pt = TTwoBlocks().eval()
    params = {"a": {"fc": dense(pt.a.fc)}, "b": {"fc": dense(pt.b.fc)}}
    return Twin(
        "boundary_shift",
        "a",
        pt,
        (FTwoBlocks(shifted=broken), {"params": params}),
        (rand((2, T, D)),),
        clean_key="boundary",
    )
