"""Tiny random Hugging Face PyTorch/Flax pairs with the same weights (transformers 4.x)."""

from __future__ import annotations

import warnings

import numpy as np

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _transformers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers
        from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
    return transformers, convert_pytorch_state_dict_to_flax


def make_pair(name: str, seed: int = 0):
    """(pt_model, flax_model, inputs) for one model family, weights shared."""
    import torch

    T, convert = _transformers()
    cfg_cls, pt_cls, fx_cls, cfg_kw, inputs = SPECS[name](T)
    cfg = cfg_cls(**cfg_kw)
    torch.manual_seed(seed)
    pt = pt_cls(cfg).eval()
    if name in CONVNETS:
        trained_norms_(pt, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = fx_cls(cfg, seed=seed)
        fx.params = converted_params(pt, fx, convert)
    return pt, fx, inputs


def converted_params(pt, fx, convert) -> dict:
    """``convert_pytorch_state_dict_to_flax`` laid onto the Flax model's own parameter tree.

    The converter names some entries unlike the Flax modules of convnets
    (``layer.0`` for ``layer_0``, ``kernel`` for a BatchNorm ``scale``); each
    expected entry is looked up by its canonical path, then by its sibling of
    the same shape.
    """
    import re

    from flax.traverse_util import flatten_dict, unflatten_dict

    canon = lambda key: tuple(re.sub(r"^[a-z]+_(\d+)$", r"\1", str(k)) for k in key)  # noqa: E731
    state = pt.state_dict()
    got = {canon(k): v for k, v in flatten_dict(convert(state, fx)).items()}
    want = flatten_dict(fx.params)
    out = {}
    for key, ref in want.items():
        v = got.get(canon(key))
        if v is None and ".".join(canon(key)) in state:  # left out by the converter (masked_spec_embed)
            v = state[".".join(canon(key))].detach().numpy()
        if v is None:
            v = next(
                got[k] for k in got if k[:-1] == canon(key)[:-1] and np.shape(got[k]) == np.shape(ref) and k not in out
            )
        out[key] = v
    return unflatten_dict(out)


def trained_norms_(pt, seed: int = 0) -> None:
    """BatchNorm scales and running statistics away from their initial 1 and 0, as after training."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*pt.named_parameters(), *pt.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "normalization.bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("normalization.weight"):
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.1)


def _ids(vocab: int = 90, shape=(2, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, shape).astype(np.int64)


def _text(ids):
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _pixels(size: int = 32) -> dict:
    return {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)}


# A tiny BART-style encoder-decoder (BART, Blenderbot, ...).
SEQ2SEQ_SMALL = dict(
    vocab_size=100,
    max_position_embeddings=64,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
)


def _seq2seq_inputs() -> dict:
    return {"input_ids": _ids(), "attention_mask": np.ones((2, 8), np.int64), "decoder_input_ids": _ids(seed=1)}


CONV = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
CONVNETS = ("resnet-basic", "resnet-bottleneck", "regnet")

SPECS = {
    "resnet-basic": lambda T: (
        T.ResNetConfig,
        T.ResNetForImageClassification,
        T.FlaxResNetForImageClassification,
        dict(layer_type="basic", **CONV),
        _pixels(),
    ),
    "resnet-bottleneck": lambda T: (
        T.ResNetConfig,
        T.ResNetForImageClassification,
        T.FlaxResNetForImageClassification,
        dict(layer_type="bottleneck", **CONV),
        _pixels(),
    ),
    "regnet": lambda T: (
        T.RegNetConfig,
        T.RegNetForImageClassification,
        T.FlaxRegNetForImageClassification,
        dict(groups_width=4, **CONV),
        _pixels(),
    ),
    "bert": lambda T: (
        T.BertConfig,
        T.BertModel,
        T.FlaxBertModel,
        dict(vocab_size=100, max_position_embeddings=64, **SMALL),
        _text(_ids()),
    ),
    "llama": lambda T: (
        T.LlamaConfig,
        T.LlamaForCausalLM,
        T.FlaxLlamaForCausalLM,
        dict(vocab_size=100, max_position_embeddings=64, num_key_value_heads=2, **SMALL),
        _text(_ids()),
    ),
    "gpt2": lambda T: (
        T.GPT2Config,
        T.GPT2LMHeadModel,
        T.FlaxGPT2LMHeadModel,
        dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4),
        _text(_ids()),
    ),
    "bart": lambda T: (
        T.BartConfig,
        T.BartModel,
        T.FlaxBartModel,
        dict(SEQ2SEQ_SMALL),
        _seq2seq_inputs(),
    ),
    "vit": lambda T: (
        T.ViTConfig,
        T.ViTModel,
        T.FlaxViTModel,
        dict(image_size=16, patch_size=4, num_channels=3, **SMALL),
        {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)},
    ),
    "albert": lambda T: (
        T.AlbertConfig,
        T.AlbertModel,
        T.FlaxAlbertModel,
        dict(vocab_size=100, embedding_size=16, max_position_embeddings=64, **SMALL),
        _text(_ids()),
    ),
}
