"""Float64 reference implementations used to test pitfall hypotheses.

Every detector recomputes a layer from captured inputs and parameters under
a hypothesis. These kernels do that in float64 numpy (or with operands
rounded to a lower precision when the hypothesis *is* a precision), so the
recomputation itself adds no error of the size being diagnosed. Parameters
follow the PyTorch convention (Linear weight ``(out, in)``, conv ``OIHW``,
activations channels-first).
"""

from __future__ import annotations

import math

import numpy as np

from ..stats.meet import to_host

# Noise floors (relative Frobenius error of a correct layer against a float64
# recomputation), by the lower precision of the two sides. See pitfalls.md §0.
TAU = {"float64": 1e-12, "float32": 5e-7, "float16": 1e-3, "bfloat16": 8e-3}


def tau_for(*dtypes: str | None) -> float:
    """The noise floor of the least precise dtype among ``dtypes``."""
    return max((TAU.get(d or "float32", TAU["float32"]) for d in dtypes), default=TAU["float32"])


def f64(a) -> np.ndarray:
    """Any float array (bfloat16 included; a device value is copied to the host) as float64."""
    return np.asarray(to_host(a), dtype=np.float64)


def rel(port: np.ndarray, ref: np.ndarray, norm_of: np.ndarray | None = None) -> float:
    """``||port - ref|| / ||norm_of||`` (``norm_of`` defaults to ``ref``).

    NaN or infinity at the same place on both sides counts as agreement;
    a non-finite value on one side only makes the error infinite.
    """
    p, r = f64(port), f64(ref)
    if p.shape != r.shape:
        return float("inf")
    fp, fr = np.isfinite(p), np.isfinite(r)
    same = (~fp & ~fr) & ((np.isnan(p) & np.isnan(r)) | (p == r))
    if np.any((~fp | ~fr) & ~same):
        return float("inf")
    both = fp & fr
    base = f64(norm_of if norm_of is not None else r)
    den = float(np.linalg.norm(base[np.isfinite(base)]))
    num = float(np.linalg.norm(p[both] - r[both]))
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den


# --- rounding to lower precisions ---------------------------------------------------------


def round_to(a: np.ndarray, fmt: str) -> np.ndarray:
    """Round float32 values to ``fmt`` and return them as float64.

    ``bf16`` and ``fp16`` round to nearest even; ``tf32`` keeps 10 mantissa
    bits by rounding to nearest, ``tf32_trunc`` by zeroing the low 13 bits.
    """
    x = np.asarray(a, dtype=np.float32)
    if fmt == "bf16":
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16).astype(np.float64)
    if fmt == "fp16":
        return x.astype(np.float16).astype(np.float64)
    if fmt in ("tf32", "tf32_trunc"):
        bits = x.view(np.uint32).copy()
        if fmt == "tf32":
            bits = bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))
        bits &= np.uint32(0xFFFFE000)
        out = bits.view(np.float32)
        return np.where(np.isfinite(x), out, x).astype(np.float64)
    if fmt == "fp32":
        return x.astype(np.float64)
    raise ValueError(f"unknown format {fmt!r}")


# --- elementwise -------------------------------------------------------------------------


def erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf as _erf

        return _erf(x)
    except ImportError:  # scipy ships with jax; keep a slow exact fallback anyway
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu(x: np.ndarray, variant: str) -> np.ndarray:
    """GELU variants: ``erf`` (exact), ``tanh`` (approximate), ``sigmoid`` (x·σ(1.702x))."""
    x = f64(x)
    if variant == "erf":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if variant == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if variant == "sigmoid":
        return x / (1.0 + np.exp(-1.702 * x))
    raise ValueError(variant)


# --- linear and convolution ---------------------------------------------------------------


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, fmt: str = "fp32") -> np.ndarray:
    """``x @ w.T + b`` in float64 with operands rounded to ``fmt`` first."""
    xx, ww = round_to(x, fmt), round_to(w, fmt)
    y = xx @ ww.T
    return y if b is None else y + f64(b)


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    fmt: str = "fp32",
) -> np.ndarray:
    """Cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C/groups, kH, kW) in float64."""
    xx, ww = round_to(x, fmt), round_to(w, fmt)
    (plh, phh), (plw, phw) = pads
    xx = np.pad(xx, ((0, 0), (0, 0), (max(plh, 0), max(phh, 0)), (max(plw, 0), max(phw, 0))))
    # negative pads crop
    xx = xx[:, :, max(-plh, 0) : xx.shape[2] - max(-phh, 0), max(-plw, 0) : xx.shape[3] - max(-phw, 0)]
    n, c, h, wd = xx.shape
    o, cg, kh, kw = ww.shape
    sh, sw = stride
    dh, dw = dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        return np.zeros((n, o, max(oh, 0), max(ow, 0)))
    cols = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xx[
                :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
            ]
    og = o // groups
    outs = []
    for g in range(groups):
        cg_cols = cols[:, g * cg : (g + 1) * cg]
        outs.append(np.einsum("nckluv,ockl->nouv", cg_cols, ww[g * og : (g + 1) * og]))
    y = np.concatenate(outs, axis=1)
    return y if b is None else y + f64(b)[None, :, None, None]


# --- normalisation ------------------------------------------------------------------------


def norm(
    x: np.ndarray,
    *,
    kind: str = "ln",
    eps: float = 1e-5,
    ddof: int = 0,
    eps_outside: bool = False,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    plus_one: bool = False,
    rsqrt_fmt: str | None = None,
    fast: bool = False,
    axes: int = 1,
) -> np.ndarray:
    """LayerNorm (``kind='ln'``) or RMSNorm (``'rms'``) over the last ``axes`` axes.

    Args:
        ddof: 1 for torch's unbiased ``std``/``var`` default.
        eps_outside: ``(x - mu) / (std + eps)`` instead of ``rsqrt(var + eps)``.
        plus_one: Gemma-style gain ``1 + weight``.
        rsqrt_fmt: round the inverse standard deviation to ``bf16``/``fp16``.
        fast: flax's one-pass ``E[x²] - E[x]²`` variance in float32 (via jax).
    """
    if fast:
        return _norm_fast(x, kind=kind, eps=eps, weight=weight, bias=bias, plus_one=plus_one, axes=axes)
    xx = f64(x)
    ax = tuple(range(-axes, 0))
    n = int(np.prod(xx.shape[-axes:])) if axes else 1
    if kind == "ln":
        xc = xx - xx.mean(axis=ax, keepdims=True)
    else:
        xc = xx
    ss = (xc * xc).sum(axis=ax, keepdims=True)
    var = ss / max(n - ddof, 1)
    if eps_outside:
        inv = 1.0 / (np.sqrt(var) + eps)
    else:
        inv = 1.0 / np.sqrt(var + eps)
    if rsqrt_fmt:
        inv = round_to(inv, rsqrt_fmt)
    y = xc * inv
    if weight is not None:
        w = f64(weight)
        y = y * (1.0 + w if plus_one else w)
    if bias is not None:
        y = y + f64(bias)
    return y


def _norm_fast(x, *, kind, eps, weight, bias, plus_one, axes):
    """Flax's fast-variance path: the statistics in float32 under ``jax.jit`` as in the port, the rest in float64.

    The cancellation error lives in ``E[x²] - E[x]²``; XLA's fused reductions
    under jit round differently from eager ones, so the statistics are
    computed the way a jitted port computes them.
    """
    mu, mu2 = _fast_stats(np.asarray(x, dtype=np.float32), axes)
    xx = f64(x)
    if kind == "ln":
        y = (xx - mu) / np.sqrt(np.maximum(mu2 - mu * mu, 0.0) + eps)
    else:
        y = xx / np.sqrt(mu2 + eps)
    if weight is not None:
        y = y * (1.0 + f64(weight) if plus_one else f64(weight))
    if bias is not None:
        y = y + f64(bias)
    return y


_FAST_STATS = {}


def _fast_stats(x: np.ndarray, axes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(E[x], E[x²])`` in float32 from a jitted jax function; the subtraction is left to the caller."""
    import jax
    import jax.numpy as jnp

    if axes not in _FAST_STATS:
        ax = tuple(range(-axes, 0))

        def stats(v):
            mu = jnp.mean(v, axis=ax, keepdims=True)
            mu2 = jnp.mean(v * v, axis=ax, keepdims=True)
            return mu, mu2, jnp.maximum(0.0, mu2 - mu * mu)

        _FAST_STATS[axes] = jax.jit(stats)
    mu, mu2, var = (f64(np.asarray(a)) for a in _FAST_STATS[axes](x))
    # return mu2 such that mu2 - mu*mu (in float64) equals the float32 variance the port saw
    return mu, var + mu * mu


def batchnorm(x: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, weight=None, bias=None) -> np.ndarray:
    """Channels-first BatchNorm (channel axis 1) with the given statistics."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (f64(x) - f64(mean).reshape(shape)) / np.sqrt(f64(var).reshape(shape) + eps)
    if weight is not None:
        y = y * f64(weight).reshape(shape)
    if bias is not None:
        y = y + f64(bias).reshape(shape)
    return y


# --- attention ----------------------------------------------------------------------------


def rope(x: np.ndarray, layout: str, base: float = 10000.0, positions: np.ndarray | None = None) -> np.ndarray:
    """Rotary embedding of ``x`` (B, H, T, D): ``half`` (rotate_half, HF/NeoX) or ``interleaved`` (GPT-J)."""
    if layout == "none":
        return x
    b, h, t, d = x.shape
    pos = np.arange(t, dtype=np.float64) if positions is None else f64(positions)
    inv = 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = np.cos(ang), np.sin(ang)
    if layout == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    if layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x2 * cos + x1 * sin
        return out
    raise ValueError(layout)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    heads: int,
    kv_heads: int,
    rope_layout: str = "none",
    rope_base: float = 10000.0,
    allowed: np.ndarray | None = None,
    scale: float | None = None,
    kv_map: str = "repeat",
    empty_rows: str = "zeros",
) -> np.ndarray:
    """Multi-head attention from projected ``q, k, v`` (B, T, H·D) to the merged context (B, T, H·D).

    Args:
        allowed: boolean (B, Tq, Tk), True where a query may attend a key.
        kv_map: ``repeat`` (query head h uses kv head h // (H/Hkv), torch
            ``repeat_interleave``) or ``tile`` (h % Hkv, ``jnp.tile``).
        empty_rows: output of a query with no allowed key: ``zeros`` (torch
            SDPA), ``mean`` (uniform weights, a finite fill such as
            ``finfo.min``), ``nan`` (``-inf`` fill).
    """
    bsz, tq, dq = q.shape
    hd = dq // heads
    qh = f64(q).reshape(bsz, tq, heads, hd).transpose(0, 2, 1, 3)
    kh = f64(k).reshape(bsz, k.shape[1], kv_heads, hd).transpose(0, 2, 1, 3)
    vh = f64(v).reshape(bsz, v.shape[1], kv_heads, v.shape[2] // kv_heads).transpose(0, 2, 1, 3)
    qh, kh = rope(qh, rope_layout, rope_base), rope(kh, rope_layout, rope_base)
    rep = heads // kv_heads
    idx = np.arange(heads) // rep if kv_map == "repeat" else np.arange(heads) % kv_heads
    kh, vh = kh[:, idx], vh[:, idx]
    s = (qh @ kh.transpose(0, 1, 3, 2)) * (scale if scale is not None else 1.0 / math.sqrt(hd))
    if allowed is not None:
        s = np.where(allowed[:, None], s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    empty = ~np.isfinite(m)
    e = np.exp(s - np.where(empty, 0.0, m))
    den = e.sum(axis=-1, keepdims=True)
    p = e / np.where(den == 0, 1.0, den)
    out = p @ vh
    if allowed is not None and np.any(empty):
        fill = {
            "zeros": np.zeros_like(out),
            "nan": np.full_like(out, np.nan),
            "mean": np.broadcast_to(vh.mean(axis=2, keepdims=True), out.shape),
        }[empty_rows]
        out = np.where(empty, fill, out)
    return out.transpose(0, 2, 1, 3).reshape(bsz, tq, -1)
