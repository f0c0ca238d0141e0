"""A function-style JAX port of Hugging Face's ``LlamaForCausalLM`` forward, marked with ``xfdiff.tap``.

No Flax classes: plain functions over a params pytree, the way a port is
written when the reference library has no JAX model (transformers 5 dropped
its Flax classes). Names follow the port, not torch (``layers.0.attn.q``
for ``model.layers.0.self_attn.q_proj``); xfdiff pairs them by parameter
fingerprints.

Steps are tapped with ``tap(path, fn, *args)`` so teacher forcing can feed
each one the reference's inputs (a step's own keyword arguments must not be
named ``path`` or ``value``: those are ``tap``'s). Bugs that can be switched on:
``eps_overrides`` (an RMSNorm epsilon other than the config's, by tap path),
``interleaved_rope_layers`` (GPT-J style RoPE instead of rotate-half),
``matmul="bf16"`` (every projection with bfloat16 operands, as a TPU's default
precision does) and ``inline_norm`` (the decoder layers' RMSNorms written
inline, not as tapped steps: ``"exact"``, or with a bug: ``"ddof1"`` divides
the sum of squares by d - 1, ``"rsqrt_fp16"`` rounds the inverse RMS to float16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import xfdiff


@dataclass(frozen=True)
class LlamaPortConfig:
    """The settings the forward needs (static: not traced)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float

    @classmethod
    def from_hf(cls, config: Any) -> LlamaPortConfig:
        """Read a transformers ``LlamaConfig`` of 4.x (``rope_theta``) or 5.x (``rope_parameters``).

        Args:
            config: a ``transformers.LlamaConfig``.

        Returns:
            The port's config.
        """
        theta = getattr(config, "rope_theta", None)
        if theta is None:  # transformers 5 keeps it in rope_parameters
            theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        heads = config.num_attention_heads
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=config.num_key_value_heads or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            rms_norm_eps=config.rms_norm_eps,
            rope_theta=float(theta),
        )


# --- converter -------------------------------------------------------------------------------


def _array(t: Any) -> np.ndarray:
    return np.asarray(t.detach().cpu().float().numpy() if hasattr(t, "detach") else t, dtype=np.float32)


def params_from_torch(state_dict: Mapping[str, Any], cfg: LlamaPortConfig) -> dict:
    """Convert a ``LlamaForCausalLM`` state_dict to the port's params pytree.

    torch ``Linear`` weights ``(out, in)`` become ``kernel`` ``(in, out)``;
    RMSNorm weights become ``scale``; the embedding table keeps its layout.

    Args:
        state_dict: ``model.state_dict()`` of a ``LlamaForCausalLM``.
        cfg: the port's config (number of layers).

    Returns:
        ``{"embed": {"embedding"}, "layers": [...], "norm": {"scale"}, "lm_head": {"kernel"}}``.
    """
    sd = {k: _array(v) for k, v in state_dict.items()}

    def kernel(name: str) -> dict:
        return {"kernel": jnp.asarray(sd[f"{name}.weight"].T)}

    def scale(name: str) -> dict:
        return {"scale": jnp.asarray(sd[f"{name}.weight"])}

    layers = []
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}"
        layers.append(
            {
                "attn_norm": scale(f"{pre}.input_layernorm"),
                "attn": {short: kernel(f"{pre}.self_attn.{short}_proj") for short in ("q", "k", "v", "o")},
                "mlp_norm": scale(f"{pre}.post_attention_layernorm"),
                "mlp": {short: kernel(f"{pre}.mlp.{short}_proj") for short in ("gate", "up", "down")},
            }
        )
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])  # tied embeddings have no lm_head entry
    return {
        "embed": {"embedding": jnp.asarray(sd["model.embed_tokens.weight"])},
        "layers": layers,
        "norm": scale("model.norm"),
        "lm_head": {"kernel": jnp.asarray(head.T)},
    }


# --- building blocks -------------------------------------------------------------------------


def embed(p: dict, ids: jax.Array) -> jax.Array:
    """Rows of the embedding table."""
    return p["embedding"][ids]


def dense(p: dict, x: jax.Array) -> jax.Array:
    """``x @ kernel`` (Llama's projections have no bias)."""
    return x @ p["kernel"]


def bf16_dense(p: dict, x: jax.Array) -> jax.Array:
    """``x @ kernel`` with both operands rounded to bfloat16 and a float32 result (a TPU's default precision)."""
    xb, kb = x.astype(jnp.bfloat16), p["kernel"].astype(jnp.bfloat16)
    return jax.lax.dot_general(xb, kb, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def inline_rms_norm(scale: jax.Array, x: jax.Array, eps: float, variant: str) -> jax.Array:
    """RMSNorm as a port writes it inside the layer's own code: ``exact``, ``ddof1`` or ``rsqrt_fp16``."""
    xf = x.astype(jnp.float32)
    n = x.shape[-1] - (1 if variant == "ddof1" else 0)
    inv = jax.lax.rsqrt(jnp.sum(xf * xf, axis=-1, keepdims=True) / n + eps)
    if variant == "rsqrt_fp16":
        inv = inv.astype(jnp.float16).astype(jnp.float32)
    return scale * (xf * inv).astype(x.dtype)


def rms_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, scaled by ``scale``."""
    xf = x.astype(jnp.float32)
    var = jnp.mean(xf * xf, axis=-1, keepdims=True)
    return p["scale"] * (xf * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``(B, T, head_dim)``, frequencies tiled ``[f, f]`` (rotate-half layout)."""
    inv = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    ang = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    """``(x1, x2) -> (-x2, x1)`` over the two halves of the last axis."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, interleaved: bool = False) -> jax.Array:
    """Rotate ``x`` ``(B, T, H, D)``; ``interleaved`` rotates pairs ``(2j, 2j+1)`` (GPT-J), a bug here."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if not interleaved:
        return x * cos + rotate_half(x) * sin
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(x.shape)


def attention(
    p: dict,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    mask: jax.Array | None,
    *,
    cfg: LlamaPortConfig,
    scope: str,
    interleaved: bool = False,
    dense_fn: Any = dense,
) -> jax.Array:
    """Causal grouped-query self-attention with RoPE; q/k/v/o are tapped as steps under ``scope``."""
    b, t, _ = x.shape
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = xfdiff.tap(f"{scope}.q", dense_fn, p["q"], x).reshape(b, t, h, hd)
    k = xfdiff.tap(f"{scope}.k", dense_fn, p["k"], x).reshape(b, t, kvh, hd)
    v = xfdiff.tap(f"{scope}.v", dense_fn, p["v"], x).reshape(b, t, kvh, hd)
    q, k = apply_rope(q, cos, sin, interleaved), apply_rope(k, cos, sin, interleaved)
    k, v = jnp.repeat(k, h // kvh, axis=2), jnp.repeat(v, h // kvh, axis=2)  # query head i reads kv head i // groups
    scores = jnp.einsum("bthd,bshd->bhts", q, k) * hd**-0.5
    allowed = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
    if mask is not None:
        allowed = allowed & mask.astype(bool)[:, None, None, :]
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
    ctx = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, h * hd)
    return xfdiff.tap(f"{scope}.o", dense_fn, p["o"], ctx)


def mlp(p: dict, x: jax.Array, *, scope: str, dense_fn: Any = dense) -> jax.Array:
    """SiLU-gated MLP: ``down(silu(gate(x)) * up(x))``."""
    gate = xfdiff.tap(f"{scope}.act", jax.nn.silu, xfdiff.tap(f"{scope}.gate", dense_fn, p["gate"], x))
    up = xfdiff.tap(f"{scope}.up", dense_fn, p["up"], x)
    return xfdiff.tap(f"{scope}.down", dense_fn, p["down"], gate * up)


def decoder_layer(
    p: dict,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    mask: jax.Array | None,
    *,
    cfg: LlamaPortConfig,
    scope: str,
    eps: dict[str, float],
    interleaved: bool,
    dense_fn: Any = dense,
    inline_norm: str | None = None,
) -> jax.Array:
    """Pre-norm residual block: attention, then MLP."""
    attn_norm, mlp_norm = f"{scope}.attn_norm", f"{scope}.mlp_norm"

    def norm(name: str, x: jax.Array) -> jax.Array:
        e = eps.get(name, cfg.rms_norm_eps)
        key = name.rsplit(".", 1)[-1]
        if inline_norm:  # no step of its own: part of the decoder layer's code
            return inline_rms_norm(p[key]["scale"], x, e, inline_norm)
        return xfdiff.tap(name, rms_norm, p[key], x, e)

    h = norm(attn_norm, x)
    x = x + xfdiff.tap(
        f"{scope}.attn",
        attention,
        p["attn"],
        h,
        cos,
        sin,
        mask,
        cfg=cfg,
        scope=f"{scope}.attn",
        interleaved=interleaved,
        dense_fn=dense_fn,
    )
    h = norm(mlp_norm, x)
    return x + xfdiff.tap(f"{scope}.mlp", mlp, p["mlp"], h, scope=f"{scope}.mlp", dense_fn=dense_fn)


# --- the model -------------------------------------------------------------------------------


def llama_forward(
    params: dict,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    cfg: LlamaPortConfig,
    eps_overrides: Mapping[str, float] | None = None,
    interleaved_rope_layers: tuple[int, ...] = (),
    matmul: str | None = None,
    inline_norm: str | None = None,
) -> jax.Array:
    """Logits ``(B, T, vocab)`` of ``LlamaForCausalLM`` for ``input_ids`` ``(B, T)``.

    Args:
        params: from :func:`params_from_torch`.
        input_ids: token ids.
        attention_mask: ``(B, T)``, 1 for tokens to attend to (optional).
        cfg: the port's config.
        eps_overrides: bug switch: RMSNorm epsilon by tap path, e.g. ``{"layers.0.mlp_norm": 1e-5}``.
        interleaved_rope_layers: bug switch: layers that use interleaved RoPE.
        matmul: ``"bf16"``: every projection with bfloat16 operands (precision switch).
        inline_norm: the decoder layers' RMSNorms inline (``"exact"``, ``"ddof1"``, ``"rsqrt_fp16"``).

    Returns:
        The logits.
    """
    eps = dict(eps_overrides or {})
    dense_fn = bf16_dense if matmul == "bf16" else dense
    x = xfdiff.tap("embed", embed, params["embed"], input_ids)
    positions = jnp.arange(input_ids.shape[1])[None]  # (1, T): one table for the batch, as in HF
    cos, sin = xfdiff.tap("rope", rope_tables, positions, cfg.head_dim, cfg.rope_theta)
    for i, p in enumerate(params["layers"]):
        x = xfdiff.tap(
            f"layers.{i}",
            decoder_layer,
            p,
            x,
            cos,
            sin,
            attention_mask,
            cfg=cfg,
            scope=f"layers.{i}",
            eps=eps,
            interleaved=i in interleaved_rope_layers,
            dense_fn=dense_fn,
            inline_norm=inline_norm,
        )
    x = xfdiff.tap("norm", rms_norm, params["norm"], x, eps.get("norm", cfg.rms_norm_eps))
    return xfdiff.tap("lm_head", dense_fn, params["lm_head"], x)


def tiny_hf_pair(hidden: int = 32, vocab: int = 100, seq: int = 8, seed: int = 0, lm_head_std: float | None = None):
    """(HF torch ``LlamaForCausalLM``, port config, port params, token ids): HF's own random init.

    Two layers, 4 heads, 2 key/value heads; ``lm_head_std`` re-draws the head's weights so the
    logits have a spread (top tokens that are not all near ties).
    """
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    pt = transformers.LlamaForCausalLM(cfg).eval()
    if lm_head_std is not None:
        with torch.no_grad():
            pt.lm_head.weight.normal_(0, lm_head_std)
    port_cfg = LlamaPortConfig.from_hf(cfg)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, seq)).astype(np.int64)
    return pt, port_cfg, params_from_torch(pt.state_dict(), port_cfg), ids
