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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = fx_cls(cfg, seed=seed)
        fx.params = convert(pt.state_dict(), fx)
    return pt, fx, inputs


def _ids(vocab: int = 90, shape=(2, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, shape).astype(np.int64)


def _text(ids):
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


SPECS = {
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
        dict(
            vocab_size=100,
            max_position_embeddings=64,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
        ),
        {"input_ids": _ids(), "attention_mask": np.ones((2, 8), np.int64), "decoder_input_ids": _ids(seed=1)},
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
