"""Every Hugging Face family with PyTorch and Flax classes, each Flax class against its PyTorch twin.

``sweep_pairs()`` lists ``(family, flax class name)`` for transformers 4.x;
``make(family, flax_name)`` builds the tiny random pair (weights converted
with ``convert_pytorch_state_dict_to_flax``) and its inputs. Configs are tiny
(2 layers, hidden 32, vocab 99, 8 tokens) so the whole sweep runs in minutes
on two CPU cores.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import re
import warnings

import numpy as np
from hf_pairs import _transformers, converted_params, trained_norms_

# Flax class -> PyTorch class where the name is not the Flax name without "Flax".
PT_NAME = {"FlaxBertForCausalLM": "BertLMHeadModel"}

# Families whose classes live in another family's module.
ALIASES = {"gpt-sw3": "gpt2 classes (GPT2LMHeadModel / FlaxGPT2LMHeadModel): covered by gpt2"}

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    ffn_dim=64,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    n_ctx=64,
    n_inner=64,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    d_ff=64,
    d_kv=8,
    image_size=32,
    patch_size=8,
    num_channels=3,
    num_labels=3,
    dim=32,
    n_layers=2,
    n_heads=4,
    hidden_dim=64,
    relative_attention_num_buckets=8,
    pad_token_id=0,
)

FAMILY = {
    "albert": dict(embedding_size=16),
    "electra": dict(embedding_size=16),
    "roformer": dict(embedding_size=32),
    "big_bird": dict(attention_type="original_full"),
    "gemma": dict(head_dim=8),
    "gptj": dict(rotary_dim=4),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]], window_size=4, hidden_size=32),
    "opt": dict(word_embed_proj_dim=32),
    "xglm": dict(attention_heads=4),
    "bloom": dict(hidden_size=32),
    "longt5": dict(local_radius=2, encoder_attention_type="local"),
    "resnet": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"),
    "regnet": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=4),
    "wav2vec2": dict(
        conv_dim=(16, 16),
        conv_stride=(4, 4),
        conv_kernel=(8, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True,  # the only layout Flax Wav2Vec2 implements
        feat_extract_norm="layer",
        codevector_dim=16,
        proj_codevector_dim=16,
        num_codevectors_per_group=8,
        num_codevector_groups=2,
    ),
    "whisper": dict(num_mel_bins=8, max_source_positions=8, max_target_positions=16, decoder_start_token_id=1),
}

VISION = {"beit", "dinov2", "vit", "resnet", "regnet"}
SEQ2SEQ = {"bart", "blenderbot", "blenderbot-small", "longt5", "marian", "mbart", "mt5", "pegasus", "t5"}


def _module(family: str):
    mod = family.replace("-", "_")
    return importlib.import_module(f"transformers.models.{mod}.modeling_flax_{mod}")


@functools.lru_cache(maxsize=1)
def sweep_pairs() -> list[tuple[str, str]]:
    """(family, Flax class name) for every family with Flax classes, base model and heads."""
    T, _ = _transformers()
    from transformers.modeling_flax_utils import FlaxPreTrainedModel
    from transformers.models.auto.modeling_flax_auto import FLAX_MODEL_MAPPING_NAMES

    out = []
    for family in sorted(FLAX_MODEL_MAPPING_NAMES):
        if family in ALIASES:
            continue
        m = _module(family)
        for name, cls in vars(m).items():
            if (
                inspect.isclass(cls)
                and issubclass(cls, FlaxPreTrainedModel)
                and cls.__module__ == m.__name__
                and not name.endswith("PreTrainedModel")
                and hasattr(T, PT_NAME.get(name, name[4:]))
            ):
                out.append((family, name))
    return out


def head_of(flax_name: str) -> str:
    """``FlaxBertForMaskedLM`` -> ``ForMaskedLM``; the base model -> ``Model``."""
    if flax_name.endswith("DualEncoderModel"):
        return "Model"
    m = re.search(
        r"(For[A-Z]\w+|LMHeadModel|MTModel|TextModelWithProjection|TextModel|VisionModel|EncoderModel)$", flax_name
    )
    return m.group(1) if m else "Model"


def tiny_config(family: str, config_cls):
    if family == "vision-text-dual-encoder":
        T, _ = _transformers()
        return config_cls.from_vision_text_configs(
            tiny_config("vit", T.ViTConfig), tiny_config("bert", T.BertConfig), projection_dim=16
        )
    default = config_cls()
    known = set(default.to_dict()) | set(getattr(config_cls, "attribute_map", {}))
    kw = {k: v for k, v in {**TINY, **FAMILY.get(family, {})}.items() if k in known}
    if family == "clip" and hasattr(default, "text_config"):
        return config_cls(
            text_config=tiny_config("clip-text", type(default.text_config)).to_dict(),
            vision_config=tiny_config("clip-vision", type(default.vision_config)).to_dict(),
            projection_dim=16,
        )
    return config_cls(**kw)


def _ids(shape, seed=0, vocab=99):
    return np.random.default_rng(seed).integers(3, vocab, shape).astype(np.int64)


def _pixels():
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


def make_inputs(family: str, flax_name: str, cfg) -> dict:
    """Inputs for the pair: tokens shared by every text model (``(2, 8)``, decoder ``(2, 6)``)."""
    if family in VISION:
        return {"pixel_values": _pixels()}
    if family == "wav2vec2":
        return {"input_values": np.random.default_rng(0).standard_normal((2, 400)).astype(np.float32)}
    if family == "whisper":
        feats = np.random.default_rng(0).standard_normal((2, 8, 16)).astype(np.float32)
        if flax_name.endswith("AudioClassification"):
            return {"input_features": feats}
        return {"input_features": feats, "decoder_input_ids": _ids((2, 6), 1)}
    if family == "clip":
        if flax_name == "FlaxCLIPVisionModel":
            return {"pixel_values": _pixels()}
        if flax_name.startswith("FlaxCLIPText"):
            return {"input_ids": _ids((2, 8))}
        return {"input_ids": _ids((2, 8)), "pixel_values": _pixels()}
    if family == "vision-text-dual-encoder":
        return {"input_ids": _ids((2, 8)), "pixel_values": _pixels()}
    if "MultipleChoice" in flax_name:
        ids = _ids((2, 2, 8))
        out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        return {**out, "token_type_ids": np.zeros_like(ids)} if family == "electra" else out
    ids = _ids((2, 8))
    if "SequenceClassification" in flax_name and family in SEQ2SEQ:
        ids[:, -1] = cfg.eos_token_id  # the head reads the decoder at the (one) end-of-sequence token
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if family == "electra":
        # Flax Electra defaults token_type_ids to ones, PyTorch to zeros: the sweep found it at
        # embeddings.token_type_embeddings. Given explicitly, both models see the same segments.
        out["token_type_ids"] = np.zeros_like(ids)
    if family in SEQ2SEQ and not flax_name.endswith(("EncoderModel", "CausalLM")):
        out["decoder_input_ids"] = _ids((2, 6), 1)
    return out


def _uninitialised(fx_cls, cfg, seed: int):
    """The Flax model without its random initialisation (a compiled run of the whole model:
    most of a tiny pair's cost); its parameter shapes stand in until the converted ones arrive."""
    try:
        fx = fx_cls(cfg, seed=seed, _do_init=False)
    except ValueError:  # a model that insists on its initialisation (VisionTextDualEncoder)
        return fx_cls(cfg, seed=seed)
    fx._is_initialized = True  # the converter reads shapes and keys from ``fx.params``
    fx._params = fx.params_shape_tree
    return fx


@contextlib.contextmanager
def jax_clip_compat(family: str):
    """transformers' Flax T5 family calls ``jnp.clip(x, a_max=...)``, a spelling JAX 0.10 removed;
    while the pair runs, ``jnp.clip`` takes it again (nothing else changes)."""
    import jax.numpy as jnp

    if family not in ("t5", "mt5", "longt5"):
        yield
        return
    clip = jnp.clip

    def compat(x, min=None, max=None, *, a_min=None, a_max=None):  # noqa: A002
        return clip(x, a_min if min is None else min, a_max if max is None else max)

    jnp.clip = compat
    try:
        yield
    finally:
        jnp.clip = clip


def make(family: str, flax_name: str, seed: int = 0):
    """(pt_model, flax_model, inputs) for one Flax class and its PyTorch twin, weights shared."""
    import torch

    T, convert = _transformers()
    fx_cls = getattr(_module(family), flax_name)
    pt_cls = getattr(T, PT_NAME.get(flax_name, flax_name[4:]))
    cfg = tiny_config(family, fx_cls.config_class)
    torch.manual_seed(seed)
    pt = pt_cls(cfg).eval()
    if family in ("resnet", "regnet"):
        trained_norms_(pt, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = _uninitialised(fx_cls, cfg, seed)
        fx.params = converted_params(pt, fx, convert)
    return pt, fx, make_inputs(family, flax_name, cfg)


# Compared on propagated errors only: teacher forcing doubles the cost of each of ~130 pairs
# and is exercised on real pairs in test_hf_pairs.py.
LOCAL = False


def run_pair(family: str, flax_name: str) -> dict:
    """Compare one pair; the facts the sweep asserts and the table shows."""
    import time

    import xfdiff

    t0 = time.perf_counter()
    with jax_clip_compat(family):
        pt, fx, inputs = make(family, flax_name)
        r = xfdiff.compare(pt, fx, inputs, local=LOCAL)
    fd = r.first_divergence
    n_torch = r.meta["n_param_modules_torch"]
    return {
        "family": family,
        "flax": flax_name,
        "head": head_of(flax_name),
        "coverage": r.meta["n_param_modules_aligned"] / max(n_torch, 1),
        "n_param_modules": n_torch,
        "unaligned": [u.path for u in r.unmatched if u.side == "torch" and u.has_params],
        "first_divergence": fd.label if fd else None,
        "final": r.final.status if r.final else None,
        "findings": [f.pitfall for f in r.findings],
        "layouts": sorted({lyr.layout for lyr in r.layers if lyr.layout != "identity"}),
        "seconds": time.perf_counter() - t0,
        "report": r,
    }
