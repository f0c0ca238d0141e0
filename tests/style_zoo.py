"""Port pairs written the way third-party code is written, not the way this project's other tests are.

Each pair is a PyTorch model and a port of it in one of the styles people
actually use, with the weights copied over by a hand-written conversion (as a
porter would write it). Every builder takes a ``bug`` flag that plants one
realistic port mistake; with ``bug=False`` the port is correct.

- ``mnist_pair``: a linen CNN in the style of the Flax MNIST example
  (``@nn.compact``, auto names ``Conv_0``/``Dense_0``, ``nn.avg_pool`` as a
  function, NHWC) against a ``torch.nn.Sequential`` CNN (paths ``0``, ``3``...).
  Bug: the dense kernel after the flatten converted with ``.T`` only (NCHW
  flatten order kept in an NHWC model).
- ``lm1b_pair``: a decoder-only LM in the style of Flax's lm1b/wmt examples
  (``nn.Embed``, a ``pos_embedding`` param, ``nn.MultiHeadDotProductAttention``
  with ``nn.make_causal_mask``, ``nn.LayerNorm``; blocks in ``setup()`` style,
  the rest ``@nn.compact``) against a PyTorch LM built on
  ``torch.nn.MultiheadAttention`` (fused ``in_proj_weight``).
  Bug: the decoder mask is not passed to the second block's attention; or
  (``bug="eps"``) one LayerNorm keeps flax's default epsilon 1e-6. ``tied=True``:
  logits through the embedding (``F.linear`` / ``embed.attend``).
- ``lm1b_builtin_pair``: the same linen decoder (exact GELU) against PyTorch's
  own ``nn.TransformerEncoder`` (pre-LN, GELU applied inside the layer's code).
  Bug: ``nn.gelu``'s tanh default in one block.
- ``nnx_cnn_pair``: an NNX CNN in the style of the NNX docs (``nnx.Conv``,
  ``nnx.BatchNorm``, ``nnx.Dropout``, ``nnx.avg_pool`` via ``partial``, a
  ``nnx.Sequential`` head, ``model.eval()``) against a PyTorch CNN of two
  ``nn.Sequential`` blocks with trained BatchNorm statistics.
  Bug: ``model.eval()`` forgotten (batch statistics and dropout active).
  ``nnx_keras_eps_pair``: Keras' BatchNorm epsilon 1e-3 in the port, either direction.
- ``picogpt_pair``: a function-style JAX GPT in the style of picoGPT (nested
  dicts with ``w``/``b``/``g`` leaves, pure functions, fused ``c_attn``,
  ``jax.nn.gelu``), values marked with ``xfdiff.tap`` at the port's own
  names, against a PyTorch GPT whose modules are named otherwise.
  Bug: ``jax.nn.gelu``'s default tanh approximation in one block.
  ``picogpt_values_pair`` marks the same function with value taps only
  (``tap(name, value)``, names unrelated to the parameter tree).
- ``vit_pair``: a linen ViT (patch embedding as a strided ``nn.Conv``, class
  token and position embedding as params, separate ``query``/``key``/``value``
  Dense layers) against a timm-like PyTorch ViT (``blocks.0.attn.qkv`` fused).
  Bug: the ``1/sqrt(head_dim)`` scale left out in one block's attention.
- ``reverse_pair``: a linen reference (compact, auto names, ``nn.gelu`` which
  is the tanh approximation by default, ``LayerNorm`` eps 1e-6) and its
  PyTorch port. Bug: ``torch.nn.GELU()`` (exact erf) in one block of the port.
- ``resnet_pair``: a ResNet in the style of Flax's imagenet example (``conv``/
  ``norm`` passed as ``partial``s, module classes as fields, BatchNorm
  ``batch_stats``, ``train`` flag) against a torchvision-style ResNet.
  Bug: the example's default ``'SAME'`` padding in the strided 3x3 conv.
- ``scanned_pair``: a linen stack run by ``nn.scan(nn.remat(Block))`` with
  stacked parameters (maxtext / t5x style) against a torch ``ModuleList``.
  Bug: ``nn.gelu``'s tanh default in the scanned block.

Dimensions are tiny so the whole corpus runs in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

import xfdiff


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _jitter(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter away from its initial value (norm scales off 1, biases off 0), as training does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and ("norm" in name or "ln" in name or name.endswith(".1.weight")):
                p.copy_(1.0 + 0.1 * noise)  # norm scales
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.add_(0.05 * noise)
    return model.eval()


# =============================================================================================
# 1. Flax MNIST-example CNN vs torch nn.Sequential
# =============================================================================================


def torch_mnist_cnn() -> torch.nn.Sequential:
    """(B, 1, 12, 12) -> (B, 10)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, kernel_size=3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(4, 8, kernel_size=3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 3 * 3, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
    )


class CNN(nn.Module):
    """A simple CNN model (the Flax MNIST example, smaller)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=4, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=8, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=16)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        return x


def mnist_params_from_torch(seq: torch.nn.Sequential, bug: bool = False) -> dict:
    def conv(m):
        return {"kernel": _np(m.weight).transpose(2, 3, 1, 0), "bias": _np(m.bias)}

    w = _np(seq[7].weight)  # (16, C*H*W) in NCHW flatten order
    if not bug:  # rows of the flax kernel follow the NHWC flatten order
        w = w.reshape(16, 8, 3, 3).transpose(0, 2, 3, 1).reshape(16, -1)
    return {
        "params": {
            "Conv_0": conv(seq[0]),
            "Conv_1": conv(seq[3]),
            "Dense_0": {"kernel": w.T.copy(), "bias": _np(seq[7].bias)},
            "Dense_1": {"kernel": _np(seq[9].weight).T.copy(), "bias": _np(seq[9].bias)},
        }
    }


def mnist_pair(bug: bool = False, seed: int = 0):
    """(torch Sequential, (CNN(), variables), NCHW images, NHWC images)."""
    torch.manual_seed(seed)
    seq = _jitter(torch_mnist_cnn(), seed)
    x = np.random.default_rng(seed).standard_normal((2, 1, 12, 12)).astype(np.float32)
    return seq, (CNN(), mnist_params_from_torch(seq, bug)), x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# =============================================================================================
# 2. lm1b-style linen decoder vs a torch LM on nn.MultiheadAttention
# =============================================================================================

LM_VOCAB, LM_D, LM_HEADS, LM_MLP, LM_LAYERS, LM_LEN = 48, 16, 2, 32, 2, 12


class TorchDecoderLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(LM_D)
        self.self_attn = torch.nn.MultiheadAttention(LM_D, LM_HEADS, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(LM_D)
        self.ff = torch.nn.Sequential(torch.nn.Linear(LM_D, LM_MLP), torch.nn.ReLU(), torch.nn.Linear(LM_MLP, LM_D))

    def forward(self, x, causal):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class TorchDecoderLM(torch.nn.Module):
    """``tied``: the output projection is the token embedding (``F.linear``, no module of its own)."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.tok_embeddings = torch.nn.Embedding(LM_VOCAB, LM_D)
        self.pos_embeddings = torch.nn.Parameter(torch.randn(1, LM_LEN, LM_D) * 0.02)
        self.layers = torch.nn.ModuleList([TorchDecoderLayer() for _ in range(LM_LAYERS)])
        self.final_norm = torch.nn.LayerNorm(LM_D)
        self.logits = None if tied else torch.nn.Linear(LM_D, LM_VOCAB)

    def forward(self, tokens):
        t = tokens.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), diagonal=1)  # True = not allowed
        x = self.tok_embeddings(tokens) + self.pos_embeddings[:, :t]
        for layer in self.layers:
            x = layer(x, causal)
        if self.logits is None:
            return F.linear(self.final_norm(x), self.tok_embeddings.weight)
        return self.logits(self.final_norm(x))


class AddPositionEmbs(nn.Module):
    """Adds learned positional embeddings to the inputs (lm1b style)."""

    max_len: int

    @nn.compact
    def __call__(self, inputs):
        length = inputs.shape[1]
        pos_embedding = self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.max_len, inputs.shape[-1]))
        return inputs + pos_embedding[:, :length, :]


class MlpBlock(nn.Module):
    mlp_dim: int
    out_dim: int
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, inputs):
        x = nn.Dense(self.mlp_dim)(inputs)
        x = self.activation(x)
        return nn.Dense(self.out_dim)(x)


class DecoderBlock(nn.Module):
    """Pre-LN decoder block, submodules declared in ``setup()``."""

    num_heads: int
    qkv_dim: int
    mlp_dim: int
    activation: Callable = nn.relu
    mlp_norm_epsilon: float = 1e-5

    def setup(self):
        self.pre_attention_norm = nn.LayerNorm(epsilon=1e-5)
        self.self_attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.qkv_dim, deterministic=True
        )
        self.pre_mlp_norm = nn.LayerNorm(epsilon=self.mlp_norm_epsilon)
        self.mlp = MlpBlock(self.mlp_dim, self.qkv_dim, self.activation)

    def __call__(self, inputs, decoder_mask=None):
        x = self.pre_attention_norm(inputs)
        x = self.self_attention(x, mask=decoder_mask)
        x = x + inputs
        z = self.pre_mlp_norm(x)
        return x + self.mlp(z)


class Decoder(nn.Module):
    vocab_size: int
    emb_dim: int
    num_heads: int
    mlp_dim: int
    num_layers: int
    max_len: int
    unmasked_layer: int = -1  # the bug: this block gets no decoder mask
    activation: Callable = nn.relu
    tanh_gelu_layer: int = -1  # the bug: nn.gelu's default (tanh) in this block
    default_eps_layer: int = -1  # the bug: this block's pre-MLP LayerNorm keeps flax's default epsilon 1e-6
    logits_via_embedding: bool = False  # wmt/lm1b option: logits from embed.attend

    @nn.compact
    def __call__(self, inputs):
        decoder_mask = nn.make_causal_mask(inputs)
        embed = nn.Embed(num_embeddings=self.vocab_size, features=self.emb_dim, name="embed")
        y = embed(inputs)
        y = AddPositionEmbs(self.max_len, name="posembed")(y)
        for lyr in range(self.num_layers):
            mask = None if lyr == self.unmasked_layer else decoder_mask
            act = nn.gelu if lyr == self.tanh_gelu_layer else self.activation
            eps = 1e-6 if lyr == self.default_eps_layer else 1e-5
            y = DecoderBlock(self.num_heads, self.emb_dim, self.mlp_dim, act, eps, name=f"decoderblock_{lyr}")(y, mask)
        y = nn.LayerNorm(epsilon=1e-5, name="decoder_norm")(y)
        if self.logits_via_embedding:
            return embed.attend(y)
        return nn.Dense(self.vocab_size, name="logitdense")(y)


class TorchBuiltinLM(torch.nn.Module):
    """The same LM on PyTorch's own ``nn.TransformerEncoderLayer`` (pre-LN, exact GELU)."""

    def __init__(self):
        super().__init__()
        self.tok_embeddings = torch.nn.Embedding(LM_VOCAB, LM_D)
        self.pos_embeddings = torch.nn.Parameter(torch.randn(1, LM_LEN, LM_D) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(
            LM_D, LM_HEADS, LM_MLP, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, LM_LAYERS, enable_nested_tensor=False)
        self.final_norm = torch.nn.LayerNorm(LM_D)
        self.logits = torch.nn.Linear(LM_D, LM_VOCAB)

    def forward(self, tokens):
        t = tokens.shape[1]
        causal = torch.nn.Transformer.generate_square_subsequent_mask(t)
        x = self.tok_embeddings(tokens) + self.pos_embeddings[:, :t]
        x = self.encoder(x, mask=causal, is_causal=True)
        return self.logits(self.final_norm(x))


def lm1b_params_from_torch(pt: TorchDecoderLM) -> dict:
    hd = LM_D // LM_HEADS
    norm = lambda m: {"scale": _np(m.weight), "bias": _np(m.bias)}  # noqa: E731
    dense = lambda m: {"kernel": _np(m.weight).T.copy(), "bias": _np(m.bias)}  # noqa: E731
    p = {
        "embed": {"embedding": _np(pt.tok_embeddings.weight)},
        "posembed": {"pos_embedding": _np(pt.pos_embeddings)},
        "decoder_norm": norm(pt.final_norm),
    }
    if getattr(pt, "logits", None) is not None:
        p["logitdense"] = dense(pt.logits)
    layers = pt.layers if hasattr(pt, "layers") else pt.encoder.layers
    for i, layer in enumerate(layers):
        a = layer.self_attn
        wq, wk, wv = np.split(_np(a.in_proj_weight), 3, axis=0)
        bq, bk, bv = np.split(_np(a.in_proj_bias), 3)
        attn = {
            name: {"kernel": w.T.reshape(LM_D, LM_HEADS, hd).copy(), "bias": b.reshape(LM_HEADS, hd).copy()}
            for name, w, b in (("query", wq, bq), ("key", wk, bk), ("value", wv, bv))
        }
        attn["out"] = {
            "kernel": _np(a.out_proj.weight).T.reshape(LM_HEADS, hd, LM_D).copy(),
            "bias": _np(a.out_proj.bias),
        }
        p[f"decoderblock_{i}"] = {
            "pre_attention_norm": norm(layer.norm1),
            "self_attention": attn,
            "pre_mlp_norm": norm(layer.norm2),
            "mlp": {
                "Dense_0": dense(layer.ff[0] if hasattr(layer, "ff") else layer.linear1),
                "Dense_1": dense(layer.ff[2] if hasattr(layer, "ff") else layer.linear2),
            },
        }
    return {"params": p}


def lm1b_pair(bug: bool | str = False, seed: int = 0, tied: bool = False):
    """(torch LM, (Decoder, variables), int32 tokens); ``bug="eps"``: flax's LayerNorm epsilon in block 1.

    ``tied``: logits through the token embedding on both sides (``embed.attend`` in the port).
    """
    torch.manual_seed(seed)
    pt = _jitter(TorchDecoderLM(tied), seed)
    with torch.no_grad():  # a trained LM's embeddings are small (GPT-2's: std ~0.1); norms then see small rows
        pt.tok_embeddings.weight.mul_(0.05)
        for layer in pt.layers:  # and a small residual stream: out projections of small norm
            layer.self_attn.out_proj.weight.mul_(0.1)
            layer.ff[2].weight.mul_(0.1)
    port = Decoder(
        LM_VOCAB,
        LM_D,
        LM_HEADS,
        LM_MLP,
        LM_LAYERS,
        LM_LEN,
        unmasked_layer=1 if bug is True else -1,
        default_eps_layer=1 if bug == "eps" else -1,
        logits_via_embedding=tied,
    )
    tokens = np.random.default_rng(seed).integers(0, LM_VOCAB, size=(2, LM_LEN)).astype(np.int32)
    return pt, (port, lm1b_params_from_torch(pt)), tokens


def lm1b_builtin_pair(bug: bool = False, seed: int = 0):
    """(torch LM on nn.TransformerEncoder, (Decoder with exact GELU, variables), int32 tokens)."""
    torch.manual_seed(seed)
    pt = _jitter(TorchBuiltinLM(), seed)
    port = Decoder(
        LM_VOCAB,
        LM_D,
        LM_HEADS,
        LM_MLP,
        LM_LAYERS,
        LM_LEN,
        activation=partial(nn.gelu, approximate=False),
        tanh_gelu_layer=1 if bug else -1,
    )
    tokens = np.random.default_rng(seed).integers(0, LM_VOCAB, size=(2, LM_LEN)).astype(np.int32)
    return pt, (port, lm1b_params_from_torch(pt)), tokens


# =============================================================================================
# 3. NNX-docs CNN (BatchNorm, Dropout, nnx.Sequential, model.eval()) vs torch
# =============================================================================================


class TorchBNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.25),
            torch.nn.AvgPool2d(2),
            torch.nn.Conv2d(4, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AvgPool2d(2),
        )
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 3 * 3, 16),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.25),
            torch.nn.Linear(16, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class NnxCNN(nnx.Module):
    """A simple CNN model (NNX docs style)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(4, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.25, rngs=rngs)
        self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(8, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.head = nnx.Sequential(
            nnx.Linear(8 * 3 * 3, 16, rngs=rngs),
            nnx.relu,
            nnx.Dropout(rate=0.25, rngs=rngs),
            nnx.Linear(16, 10, rngs=rngs),
        )

    def __call__(self, x):
        x = self.avg_pool(self.dropout1(nnx.relu(self.batch_norm1(self.conv1(x)))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        return self.head(x)


def trained_bn_net(seed: int = 0) -> TorchBNNet:
    """A TorchBNNet with jittered weights and running statistics from a few training batches."""
    torch.manual_seed(seed)
    net = _jitter(TorchBNNet(), seed)
    net.train()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(8, 1, 12, 12, generator=g) * 2.0 + 0.5)
    return net.eval()


def nnx_cnn_from_torch(net: TorchBNNet, bug: bool = False) -> NnxCNN:
    model = NnxCNN(rngs=nnx.Rngs(0))
    f, c = net.features, net.classifier
    for conv, tconv in ((model.conv1, f[0]), (model.conv2, f[5])):
        conv.kernel.value = jnp.asarray(_np(tconv.weight).transpose(2, 3, 1, 0))
        conv.bias.value = jnp.asarray(_np(tconv.bias))
    for bn, tbn in ((model.batch_norm1, f[1]), (model.batch_norm2, f[6])):
        bn.scale.value = jnp.asarray(_np(tbn.weight))
        bn.bias.value = jnp.asarray(_np(tbn.bias))
        bn.mean.value = jnp.asarray(_np(tbn.running_mean))
        bn.var.value = jnp.asarray(_np(tbn.running_var))
    w = _np(c[1].weight).reshape(16, 8, 3, 3).transpose(0, 2, 3, 1).reshape(16, -1)
    model.head.layers[0].kernel.value = jnp.asarray(w.T)
    model.head.layers[0].bias.value = jnp.asarray(_np(c[1].bias))
    model.head.layers[3].kernel.value = jnp.asarray(_np(c[4].weight).T)
    model.head.layers[3].bias.value = jnp.asarray(_np(c[4].bias))
    if not bug:  # the bug: evaluation without model.eval()
        model.eval()
    return model


def nnx_cnn_pair(bug: bool = False, seed: int = 0):
    """(torch net, NNX model, NCHW images, NHWC images)."""
    net = trained_bn_net(seed)
    x = (np.random.default_rng(seed).standard_normal((4, 1, 12, 12)) * 2.0 + 0.5).astype(np.float32)
    return net, nnx_cnn_from_torch(net, bug), x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nnx_keras_eps_pair(port_side: str, seed: int = 0):
    """(torch net, NNX model, NCHW, NHWC): the port's second BatchNorm uses Keras' epsilon 1e-3.

    ``port_side`` is "flax" (the NNX model is the port) or "torch" (the torch net is the port of an
    NNX reference). That BatchNorm's running variance is small, as late BatchNorms' often are, so the
    epsilon matters.
    """
    net = trained_bn_net(seed)
    with torch.no_grad():
        net.features[6].running_var.mul_(0.01)
    model = nnx_cnn_from_torch(net)
    if port_side == "flax":
        model.batch_norm2.epsilon = 1e-3
    else:
        net.features[6].eps = 1e-3
    x = (np.random.default_rng(seed).standard_normal((4, 1, 12, 12)) * 2.0 + 0.5).astype(np.float32)
    return net, model, x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# =============================================================================================
# 4. picoGPT-style function port with taps vs a torch GPT with other names
# =============================================================================================

GPT_VOCAB, GPT_D, GPT_HEADS, GPT_LAYERS, GPT_CTX = 40, 16, 2, 2, 10


class TorchSelfAttention(torch.nn.Module):
    def __init__(self, d: int = GPT_D, heads: int = GPT_HEADS):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TorchGPTBlock(torch.nn.Module):
    def __init__(self, d: int = GPT_D, heads: int = GPT_HEADS):
        super().__init__()
        self.norm_attn = torch.nn.LayerNorm(d)
        self.attention = TorchSelfAttention(d, heads)
        self.norm_ff = torch.nn.LayerNorm(d)
        self.feed_forward = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attention(self.norm_attn(x))
        return x + self.feed_forward(self.norm_ff(x))


class TorchGPT(torch.nn.Module):
    """Tied output projection (the token embedding's transpose), as GPT-2."""

    def __init__(self, d=GPT_D, heads=GPT_HEADS, layers=GPT_LAYERS, vocab=GPT_VOCAB, ctx=GPT_CTX):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(vocab, d)
        self.position_embedding = torch.nn.Embedding(ctx, d)
        self.blocks = torch.nn.ModuleList([TorchGPTBlock(d, heads) for _ in range(layers)])
        self.norm_out = torch.nn.LayerNorm(d)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.token_embedding(idx) + self.position_embedding(pos)
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x) @ self.token_embedding.weight.T


def gelu(x, approximate):
    return jax.nn.gelu(x, approximate=approximate)


def layer_norm(x, g, b, eps: float = 1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.var(x, axis=-1, keepdims=True)
    return g * (x - mean) / jnp.sqrt(variance + eps) + b


def linear(x, w, b):
    return x @ w + b


def ffn(x, c_fc, c_proj, approximate=False, prefix=None):
    a = gelu(_tap(prefix, "c_fc", linear, x, **c_fc), approximate)
    return _tap(prefix, "c_proj", linear, a, **c_proj)


def _tap(prefix, name, fn, *args, **kwargs):
    """A tapped step, or the plain call when the caller marks nothing (``prefix=None``)."""
    if prefix is None:
        return fn(*args, **kwargs)
    return xfdiff.tap(f"{prefix}.{name}", fn, *args, **kwargs)


def mha(x, c_attn, c_proj, n_head, prefix=None):
    t = x.shape[-2]
    qkv = _tap(prefix, "c_attn", linear, x, **c_attn)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    split = lambda z: z.reshape(z.shape[:-1] + (n_head, -1))  # noqa: E731
    q, k, v = split(q), split(k), split(v)  # (B, T, H, hd)
    causal_mask = (1 - jnp.tri(t, dtype=x.dtype)) * -1e10
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]) + causal_mask
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(x.shape)
    return _tap(prefix, "c_proj", linear, out, **c_proj)


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, approximate=False, prefix=""):
    x = x + xfdiff.tap(
        f"{prefix}.attn",
        mha(xfdiff.tap(f"{prefix}.ln_1", layer_norm, x, **ln_1), **attn, n_head=n_head, prefix=f"{prefix}.attn"),
    )
    h = xfdiff.tap(f"{prefix}.ln_2", layer_norm, x, **ln_2)
    x = x + xfdiff.tap(f"{prefix}.mlp", ffn(h, **mlp, approximate=approximate, prefix=f"{prefix}.mlp"))
    return xfdiff.tap(prefix, x)


def gpt2(params, inputs, n_head=GPT_HEADS, tanh_gelu_block=-1):
    wte, wpe = params["wte"], params["wpe"]
    x = xfdiff.tap("wte", wte[inputs]) + xfdiff.tap("wpe", wpe[jnp.arange(inputs.shape[-1])])
    for i, block in enumerate(params["blocks"]):
        x = transformer_block(x, **block, n_head=n_head, approximate=i == tanh_gelu_block, prefix=f"blocks.{i}")
    x = xfdiff.tap("ln_f", layer_norm, x, **params["ln_f"])
    return x @ wte.T


def picogpt_params_from_torch(pt: TorchGPT) -> dict:
    lin = lambda m: {"w": jnp.asarray(_np(m.weight).T), "b": jnp.asarray(_np(m.bias))}  # noqa: E731
    ln = lambda m: {"g": jnp.asarray(_np(m.weight)), "b": jnp.asarray(_np(m.bias))}  # noqa: E731
    return {
        "wte": jnp.asarray(_np(pt.token_embedding.weight)),
        "wpe": jnp.asarray(_np(pt.position_embedding.weight)),
        "blocks": [
            {
                "ln_1": ln(b.norm_attn),
                "attn": {"c_attn": lin(b.attention.qkv), "c_proj": lin(b.attention.out)},
                "ln_2": ln(b.norm_ff),
                "mlp": {"c_fc": lin(b.feed_forward[0]), "c_proj": lin(b.feed_forward[2])},
            }
            for b in pt.blocks
        ],
        "ln_f": ln(pt.norm_out),
    }


def picogpt_pair(bug: bool = False, seed: int = 0, **dims):
    """(torch GPT, (gpt2 function, params), int32 tokens); ``dims``: d, heads, layers, vocab, ctx."""
    torch.manual_seed(seed)
    pt = _jitter(TorchGPT(**dims), seed)
    heads = dims.get("heads", GPT_HEADS)
    fn = partial(gpt2, n_head=heads, tanh_gelu_block=1 if bug else -1)
    ids = np.random.default_rng(seed).integers(0, dims.get("vocab", GPT_VOCAB), size=(2, dims.get("ctx", GPT_CTX)))
    ids = ids.astype(np.int32)
    return pt, (fn, picogpt_params_from_torch(pt)), ids


# =============================================================================================
# 5. timm-like torch ViT (fused qkv) vs linen ViT (separate q/k/v)
# =============================================================================================

VIT_IMG, VIT_PATCH, VIT_D, VIT_HEADS, VIT_LAYERS, VIT_CLASSES = 8, 4, 16, 2, 2, 5
VIT_TOKENS = (VIT_IMG // VIT_PATCH) ** 2


class PatchEmbed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, VIT_D, kernel_size=VIT_PATCH, stride=VIT_PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class TimmAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = VIT_HEADS
        self.scale = (VIT_D // VIT_HEADS) ** -0.5
        self.qkv = torch.nn.Linear(VIT_D, VIT_D * 3)
        self.proj = torch.nn.Linear(VIT_D, VIT_D)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TimmMlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(VIT_D, 2 * VIT_D)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(2 * VIT_D, VIT_D)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(VIT_D, eps=1e-6)
        self.attn = TimmAttention()
        self.norm2 = torch.nn.LayerNorm(VIT_D, eps=1e-6)
        self.mlp = TimmMlp()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, VIT_D) * 0.02)
        self.pos_embed = torch.nn.Parameter(torch.randn(1, VIT_TOKENS + 1, VIT_D) * 0.02)
        self.blocks = torch.nn.Sequential(*[TimmBlock() for _ in range(VIT_LAYERS)])
        self.norm = torch.nn.LayerNorm(VIT_D, eps=1e-6)
        self.head = torch.nn.Linear(VIT_D, VIT_CLASSES)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class SelfAttention(nn.Module):
    num_heads: int
    scaled: bool = True

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        hd = d // self.num_heads
        q = nn.Dense(d, name="query")(x).reshape(b, n, self.num_heads, hd)
        k = nn.Dense(d, name="key")(x).reshape(b, n, self.num_heads, hd)
        v = nn.Dense(d, name="value")(x).reshape(b, n, self.num_heads, hd)
        if self.scaled:
            q = q / jnp.sqrt(hd).astype(x.dtype)
        w = nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, n, d)
        return nn.Dense(d, name="out")(out)


class ViTMlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        y = nn.Dense(self.mlp_dim)(x)
        y = nn.gelu(y, approximate=False)
        return nn.Dense(d)(y)


class Encoder1DBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    scaled: bool = True

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)  # flax's default epsilon 1e-6 is timm's
        y = SelfAttention(self.num_heads, self.scaled)(y)
        x = x + y
        y = nn.LayerNorm()(x)
        y = ViTMlpBlock(self.mlp_dim)(y)
        return x + y


class ViT(nn.Module):
    unscaled_block: int = -1  # the bug: this block's attention logits are not scaled

    @nn.compact
    def __call__(self, images):  # (B, H, W, 3)
        x = nn.Conv(VIT_D, (VIT_PATCH, VIT_PATCH), strides=(VIT_PATCH, VIT_PATCH), padding="VALID", name="embedding")(
            images
        )
        b = x.shape[0]
        x = x.reshape(b, -1, VIT_D)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, VIT_D))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, VIT_TOKENS + 1, VIT_D))
        for i in range(VIT_LAYERS):
            x = Encoder1DBlock(VIT_HEADS, 2 * VIT_D, scaled=i != self.unscaled_block, name=f"encoderblock_{i}")(x)
        x = nn.LayerNorm(name="encoder_norm")(x)
        return nn.Dense(VIT_CLASSES, name="head")(x[:, 0])


def vit_params_from_torch(pt: VisionTransformer) -> dict:
    dense = lambda w, b: {"kernel": w.T.copy(), "bias": b.copy()}  # noqa: E731
    norm = lambda m: {"scale": _np(m.weight), "bias": _np(m.bias)}  # noqa: E731
    p = {
        "embedding": {
            "kernel": _np(pt.patch_embed.proj.weight).transpose(2, 3, 1, 0),
            "bias": _np(pt.patch_embed.proj.bias),
        },
        "cls": _np(pt.cls_token),
        "pos_embedding": _np(pt.pos_embed),
        "encoder_norm": norm(pt.norm),
        "head": dense(_np(pt.head.weight), _np(pt.head.bias)),
    }
    for i, blk in enumerate(pt.blocks):
        wq, wk, wv = np.split(_np(blk.attn.qkv.weight), 3, axis=0)
        bq, bk, bv = np.split(_np(blk.attn.qkv.bias), 3)
        p[f"encoderblock_{i}"] = {
            "LayerNorm_0": norm(blk.norm1),
            "SelfAttention_0": {
                "query": dense(wq, bq),
                "key": dense(wk, bk),
                "value": dense(wv, bv),
                "out": dense(_np(blk.attn.proj.weight), _np(blk.attn.proj.bias)),
            },
            "LayerNorm_1": norm(blk.norm2),
            "ViTMlpBlock_0": {
                "Dense_0": dense(_np(blk.mlp.fc1.weight), _np(blk.mlp.fc1.bias)),
                "Dense_1": dense(_np(blk.mlp.fc2.weight), _np(blk.mlp.fc2.bias)),
            },
        }
    return {"params": p}


def vit_pair(bug: bool = False, seed: int = 0):
    """(torch ViT, (ViT, variables), NCHW images, NHWC images)."""
    torch.manual_seed(seed)
    pt = _jitter(VisionTransformer(), seed)
    x = np.random.default_rng(seed).standard_normal((2, 3, VIT_IMG, VIT_IMG)).astype(np.float32)
    port = ViT(unscaled_block=1 if bug else -1)
    return pt, (port, vit_params_from_torch(pt)), x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# =============================================================================================
# 6. Reverse direction: linen reference, torch port
# =============================================================================================

REV_D, REV_LAYERS = 16, 2


class ResMlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        y = nn.Dense(2 * x.shape[-1])(y)
        y = nn.gelu(y)  # tanh approximation: flax's default
        y = nn.Dense(x.shape[-1])(y)
        return x + y


class ResMlpNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(REV_D)(x)
        for _ in range(REV_LAYERS):
            x = ResMlp()(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(3)(x)


class TorchResMlp(torch.nn.Module):
    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        self.norm = torch.nn.LayerNorm(REV_D, eps=1e-6)
        self.fc1 = torch.nn.Linear(REV_D, 2 * REV_D)
        self.act = torch.nn.GELU(approximate=approximate)
        self.fc2 = torch.nn.Linear(2 * REV_D, REV_D)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class TorchResMlpNet(torch.nn.Module):
    def __init__(self, erf_gelu_block: int = -1):
        super().__init__()
        self.stem = torch.nn.Linear(6, REV_D)
        self.layers = torch.nn.ModuleList(
            [TorchResMlp("none" if i == erf_gelu_block else "tanh") for i in range(REV_LAYERS)]
        )
        self.norm = torch.nn.LayerNorm(REV_D, eps=1e-6)
        self.out = torch.nn.Linear(REV_D, 3)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x))


def reverse_pair(bug: bool = False, seed: int = 0):
    """(torch port, (ResMlpNet, variables) reference, inputs)."""
    x = np.random.default_rng(seed).standard_normal((4, 6)).astype(np.float32)
    ref = ResMlpNet()
    variables = ref.init(jax.random.PRNGKey(seed), x)
    # as after training: norms away from (1, 0)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    moved = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        name = jax.tree_util.keystr(path)
        noise = jax.random.normal(k, leaf.shape)
        if "scale" in name:
            moved.append(1.0 + 0.1 * noise)
        elif "bias" in name:
            moved.append(0.1 * noise)
        else:
            moved.append(leaf)
    variables = jax.tree_util.tree_unflatten(treedef, moved)
    p = variables["params"]
    port = TorchResMlpNet(erf_gelu_block=1 if bug else -1)
    t = lambda a: torch.from_numpy(np.asarray(a).copy())  # noqa: E731
    with torch.no_grad():

        def dense(tm, fp):
            tm.weight.copy_(t(fp["kernel"]).T)
            tm.bias.copy_(t(fp["bias"]))

        def norm(tm, fp):
            tm.weight.copy_(t(fp["scale"]))
            tm.bias.copy_(t(fp["bias"]))

        dense(port.stem, p["Dense_0"])
        for i, layer in enumerate(port.layers):
            fp = p[f"ResMlp_{i}"]
            norm(layer.norm, fp["LayerNorm_0"])
            dense(layer.fc1, fp["Dense_0"])
            dense(layer.fc2, fp["Dense_1"])
        norm(port.norm, p["LayerNorm_0"])
        dense(port.out, p["Dense_1"])
    return port.eval(), (ref, variables), x


def gpt2_values(params, inputs, n_head=GPT_HEADS, tanh_gelu_block=-1):
    """The same GPT, marked the way people usually mark values: ``tap(name, value)`` only, names of their own."""
    wte, wpe = params["wte"], params["wpe"]
    x = xfdiff.tap("embeddings", wte[inputs] + wpe[jnp.arange(inputs.shape[-1])])
    for i, blk in enumerate(params["blocks"]):
        a = mha(layer_norm(x, **blk["ln_1"]), **blk["attn"], n_head=n_head)
        x = x + xfdiff.tap(f"decoder.{i}.self_attention_out", a)
        h = layer_norm(x, **blk["ln_2"])
        m = ffn(h, **blk["mlp"], approximate=i == tanh_gelu_block)
        x = x + xfdiff.tap(f"decoder.{i}.feed_forward_out", m)
        x = xfdiff.tap(f"decoder.{i}.hidden", x)
    x = xfdiff.tap("final_ln", layer_norm(x, **params["ln_f"]))
    return x @ wte.T


def picogpt_values_pair(bug: bool = False, seed: int = 0):
    """(torch GPT, (gpt2_values, params), int32 tokens)."""
    pt, (_, params), ids = picogpt_pair(False, seed)
    fn = partial(gpt2_values, tanh_gelu_block=1) if bug else gpt2_values
    return pt, (fn, params), ids


# =============================================================================================
# 7. Flax imagenet-example ResNet (conv/norm as partials in fields) vs torchvision-style ResNet
# =============================================================================================

RN_WIDTH, RN_CLASSES, RN_IMG = 4, 5, 16


class TorchBasicBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, RN_WIDTH, 7, 2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(RN_WIDTH)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = torch.nn.Sequential(TorchBasicBlock(RN_WIDTH, RN_WIDTH, 1))
        self.layer2 = torch.nn.Sequential(TorchBasicBlock(RN_WIDTH, 2 * RN_WIDTH, 2))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2 * RN_WIDTH, RN_CLASSES)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ModuleDef = Any


class ResNetBlock(nn.Module):
    """ResNet block (flax imagenet example)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)
    same_padding: bool = False  # the bug: the example's default 'SAME' in the strided 3x3 conv

    @nn.compact
    def __call__(self, x):
        residual = x
        pad = "SAME" if self.same_padding else ((1, 1), (1, 1))
        y = self.conv(self.filters, (3, 3), self.strides, padding=pad)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNetV1.5 (flax imagenet example), smaller."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    same_padding_stage: int = -1

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(
                    self.num_filters * 2**i,
                    strides=strides,
                    conv=conv,
                    norm=norm,
                    act=self.act,
                    same_padding=i == self.same_padding_stage,
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


def trained_resnet(seed: int = 0) -> TorchResNet:
    torch.manual_seed(seed)
    net = TorchResNet()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        net.train()
        for _ in range(4):
            net(torch.randn(4, 3, RN_IMG, RN_IMG, generator=g))
    return net.eval()


def resnet_variables_from_torch(net: TorchResNet) -> dict:
    conv = lambda m: {"kernel": _np(m.weight).transpose(2, 3, 1, 0)}  # noqa: E731
    params, stats = {}, {}

    def bn(name, m, p_owner, s_owner):
        p_owner[name] = {"scale": _np(m.weight), "bias": _np(m.bias)}
        s_owner[name] = {"mean": _np(m.running_mean), "var": _np(m.running_var)}

    params["conv_init"] = conv(net.conv1)
    bn("bn_init", net.bn1, params, stats)
    for i, stage in enumerate((net.layer1, net.layer2)):
        blk = stage[0]
        name = f"ResNetBlock_{i}"
        p, s = {}, {}
        p["Conv_0"], p["Conv_1"] = conv(blk.conv1), conv(blk.conv2)
        bn("BatchNorm_0", blk.bn1, p, s)
        bn("BatchNorm_1", blk.bn2, p, s)
        if blk.downsample is not None:
            p["conv_proj"] = conv(blk.downsample[0])
            bn("norm_proj", blk.downsample[1], p, s)
        params[name], stats[name] = p, s
    params["Dense_0"] = {"kernel": _np(net.fc.weight).T.copy(), "bias": _np(net.fc.bias)}
    return {"params": params, "batch_stats": stats}


def resnet_pair(bug: bool = False, seed: int = 0):
    """(torch ResNet, (linen ResNet, variables), NCHW images, flax kwargs with NHWC images and train=False)."""
    net = trained_resnet(seed)
    port = ResNet(
        stage_sizes=[1, 1],
        block_cls=ResNetBlock,
        num_classes=RN_CLASSES,
        num_filters=RN_WIDTH,
        same_padding_stage=1 if bug else -1,
    )
    x = np.random.default_rng(seed).standard_normal((2, 3, RN_IMG, RN_IMG)).astype(np.float32)
    return (
        net,
        (port, resnet_variables_from_torch(net)),
        x,
        {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "train": False},
    )


# =============================================================================================
# 8. A scanned, rematerialised linen layer stack (maxtext / t5x style) vs a torch ModuleList
# =============================================================================================

SC_D, SC_LAYERS = 16, 3


class ScanMlpBlock(nn.Module):
    tanh_gelu: bool = False

    @nn.compact
    def __call__(self, carry, _):
        y = nn.LayerNorm(epsilon=1e-5)(carry)
        y = nn.Dense(2 * SC_D)(y)
        y = nn.gelu(y, approximate=self.tanh_gelu)
        y = nn.Dense(SC_D)(y)
        return carry + y, None


class ScannedMlp(nn.Module):
    tanh_gelu: bool = False  # the bug: nn.gelu's default (tanh) in every layer

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(SC_D, name="embed")(x)
        stack = nn.scan(
            nn.remat(ScanMlpBlock),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=SC_LAYERS,
        )
        x, _ = stack(self.tanh_gelu, name="layers")(x, None)
        return nn.Dense(3, name="head")(nn.LayerNorm(epsilon=1e-5, name="norm")(x))


class TorchMlpBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(SC_D)
        self.fc1 = torch.nn.Linear(SC_D, 2 * SC_D)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(2 * SC_D, SC_D)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class TorchMlpStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(6, SC_D)
        self.layers = torch.nn.ModuleList([TorchMlpBlock() for _ in range(SC_LAYERS)])
        self.norm = torch.nn.LayerNorm(SC_D)
        self.head = torch.nn.Linear(SC_D, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def scanned_params_from_torch(pt: TorchMlpStack) -> dict:
    dense = lambda m: {"kernel": _np(m.weight).T.copy(), "bias": _np(m.bias)}  # noqa: E731
    norm = lambda m: {"scale": _np(m.weight), "bias": _np(m.bias)}  # noqa: E731
    stacked = lambda f: np.stack([f(i) for i in range(SC_LAYERS)])  # noqa: E731
    blocks = pt.layers
    return {
        "params": {
            "embed": dense(pt.embed),
            "layers": {
                "LayerNorm_0": {
                    "scale": stacked(lambda i: _np(blocks[i].norm.weight)),
                    "bias": stacked(lambda i: _np(blocks[i].norm.bias)),
                },
                "Dense_0": {
                    "kernel": stacked(lambda i: _np(blocks[i].fc1.weight).T),
                    "bias": stacked(lambda i: _np(blocks[i].fc1.bias)),
                },
                "Dense_1": {
                    "kernel": stacked(lambda i: _np(blocks[i].fc2.weight).T),
                    "bias": stacked(lambda i: _np(blocks[i].fc2.bias)),
                },
            },
            "norm": norm(pt.norm),
            "head": dense(pt.head),
        }
    }


def scanned_pair(bug: bool = False, seed: int = 0):
    """(torch ModuleList stack, (ScannedMlp, variables), inputs)."""
    torch.manual_seed(seed)
    pt = _jitter(TorchMlpStack(), seed)
    x = np.random.default_rng(seed).standard_normal((4, 5, 6)).astype(np.float32)
    return pt, (ScannedMlp(tanh_gelu=bug), scanned_params_from_torch(pt)), x


# =============================================================================================
# 9. One block applied several times (ALBERT / universal-transformer style) in both frameworks
# =============================================================================================

SHARED_STEPS = 3


class TorchSharedStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(6, SC_D)
        self.block = TorchMlpBlock()
        self.norm = torch.nn.LayerNorm(SC_D)
        self.head = torch.nn.Linear(SC_D, 3)

    def forward(self, x):
        x = self.embed(x)
        for _ in range(SHARED_STEPS):
            x = self.block(x)
        return self.head(self.norm(x))


class SharedBlock(nn.Module):
    tanh_gelu: bool = False

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=1e-5)(x)
        y = nn.Dense(2 * SC_D)(y)
        y = nn.gelu(y, approximate=self.tanh_gelu)
        return x + nn.Dense(SC_D)(y)


class SharedStack(nn.Module):
    tanh_gelu: bool = False  # the bug: nn.gelu's default (tanh) in the shared block

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(SC_D)(x)
        block = SharedBlock(self.tanh_gelu, name="shared")
        for _ in range(SHARED_STEPS):
            x = block(x)
        return nn.Dense(3)(nn.LayerNorm(epsilon=1e-5)(x))


def shared_pair(bug: bool = False, seed: int = 0):
    """(torch stack reusing one block, (SharedStack, variables), inputs)."""
    torch.manual_seed(seed)
    pt = _jitter(TorchSharedStack(), seed)
    dense = lambda m: {"kernel": _np(m.weight).T.copy(), "bias": _np(m.bias)}  # noqa: E731
    norm = lambda m: {"scale": _np(m.weight), "bias": _np(m.bias)}  # noqa: E731
    b = pt.block
    variables = {
        "params": {
            "Dense_0": dense(pt.embed),
            "shared": {"LayerNorm_0": norm(b.norm), "Dense_0": dense(b.fc1), "Dense_1": dense(b.fc2)},
            "LayerNorm_0": norm(pt.norm),
            "Dense_1": dense(pt.head),
        }
    }
    x = np.random.default_rng(seed).standard_normal((4, 5, 6)).astype(np.float32)
    return pt, (SharedStack(tanh_gelu=bug), variables), x
