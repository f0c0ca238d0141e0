"""Hugging Face PyTorch models against their TensorFlow (``TF*``, tf-keras) classes, tiny configs.

The TF model gets the PyTorch weights through
``transformers.modeling_tf_pytorch_utils.load_pytorch_model_in_tf2_model``
(no downloads). ``python tests/tf_hf_pairs.py`` prints one JSON object with
every case's result; tests/test_tf_hf.py runs it in a subprocess so that
TensorFlow is never imported into the test session itself.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (2, 8)).astype(np.int64)
    text = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    pixels = {"pixel_values": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
    return text, pixels


def specs(T):
    text, pixels = _inputs()
    return {
        "bert": (
            T.BertConfig,
            T.BertModel,
            T.TFBertModel,
            dict(vocab_size=100, max_position_embeddings=64, **SMALL),
            text,
        ),
        "gpt2": (
            T.GPT2Config,
            T.GPT2Model,
            T.TFGPT2Model,
            dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4),
            text,
        ),
        "bart": (
            T.BartConfig,
            T.BartModel,
            T.TFBartModel,
            dict(
                vocab_size=100,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=64,
            ),
            {**text, "decoder_input_ids": text["input_ids"]},
        ),
        "vit": (T.ViTConfig, T.ViTModel, T.TFViTModel, dict(image_size=32, patch_size=8, **SMALL), pixels),
        "convnext": (
            T.ConvNextConfig,
            T.ConvNextModel,
            T.TFConvNextModel,
            dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32),
            pixels,
        ),
    }


def make_pair(name: str, tf_overrides: dict | None = None, pt_overrides: dict | None = None):
    """(pt_model, tf_model, inputs); ``*_overrides`` change one side's config (an injected bug)."""
    import torch
    import transformers as T
    from transformers.modeling_tf_pytorch_utils import load_pytorch_model_in_tf2_model

    cfg_cls, pt_cls, tf_cls, kw, inputs = specs(T)[name]
    torch.manual_seed(0)
    pt = pt_cls(cfg_cls(**{**kw, **(pt_overrides or {})})).eval()
    tf_model = tf_cls(cfg_cls(**{**kw, **(tf_overrides or {})}))
    load_pytorch_model_in_tf2_model(tf_model, pt)
    return pt, tf_model, inputs


def summary(r) -> dict:
    fd = r.first_divergence
    m = r.meta
    return {
        "first_divergence": None if fd is None else fd.torch_path,
        "verdict": r.verdict,
        "findings": [[f.pitfall, f.torch_path] for f in r.findings],
        "aligned": [m["n_param_modules_aligned"], m["n_param_modules_torch"]],
        "mode": m["flax_meta"].get("capture_mode"),
        "final_status": r.final.status if r.final is not None else None,
    }


def run(only: list[str] | None = None) -> dict:
    import xfdiff

    out = {}
    for name in ("bert", "gpt2", "bart", "vit", "convnext"):
        if only and name not in only:
            continue
        pt, tf_model, inputs = make_pair(name)
        # BERT runs under tf.function (the default); the rest eagerly, which is faster at this size.
        out[name] = summary(xfdiff.compare(pt, tf_model, inputs, jit=name == "bert"))
        out[name]["left_unchanged"] = not any("__call__" in vars(type(x)) for x in tf_model._flatten_layers())
    # tanh GELU in the TF port's feed-forward layers
    # (wide initial weights: pre-activations of order 1, where the two GELUs differ by ~1e-3)
    wide = {"initializer_range": 0.5}
    pt, tf_model, inputs = make_pair("bert", tf_overrides={"hidden_act": "gelu_new", **wide}, pt_overrides=wide)
    out["bert_tanh_gelu"] = summary(xfdiff.compare(pt, tf_model, inputs, jit=False))
    # the port's LayerNorm epsilon is Keras's default 1e-3 instead of ViT's 1e-12
    pt, tf_model, inputs = make_pair("vit", tf_overrides={"layer_norm_eps": 1e-3})
    out["vit_ln_eps"] = summary(xfdiff.compare(pt, tf_model, inputs, jit=False))
    # a square kernel loaded without its transpose (torch weight (out, in) copied as-is)
    pt, tf_model, inputs = make_pair("bert")
    q = tf_model.bert.encoder.layer[0].attention.self_attention.query
    q.kernel.assign(q.kernel.numpy().T)
    out["bert_transposed_query"] = summary(xfdiff.compare(pt, tf_model, inputs))
    # reverse: the TF model is the reference; the PyTorch port's second-layer LayerNorms use 1e-3
    pt, tf_model, inputs = make_pair("gpt2")
    for block in pt.h[1:]:
        block.ln_2.eps = 1e-3
    out["gpt2_reverse_ln_eps"] = summary(xfdiff.compare(pt, tf_model, inputs, reference="tf", jit=False))
    return out


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    sys.stdout.write("XFDIFF_RESULT " + json.dumps(run()) + "\n")
