"""Tiny Hugging Face pairs whose ports move work across a module boundary (transformers 4.x).

Each is a correct port: the final outputs agree, but one intermediate pair
differs because the Flax code applies a bias or a scale outside the module
(MLM decoders, XGLM's embedding scale) or returns a value without the batch
axis (Blenderbot's positional embeddings).
"""

from __future__ import annotations

from hf_pairs import SEQ2SEQ_SMALL, SMALL, SPECS, _ids, _seq2seq_inputs, _text, make_pair

BOUNDARY_SPECS = {
    "bert_mlm": lambda T: (
        T.BertConfig,
        T.BertForMaskedLM,
        T.FlaxBertForMaskedLM,
        dict(vocab_size=100, max_position_embeddings=64, **SMALL),
        _text(_ids()),
    ),
    "roberta_mlm": lambda T: (
        T.RobertaConfig,
        T.RobertaForMaskedLM,
        T.FlaxRobertaForMaskedLM,
        dict(vocab_size=100, max_position_embeddings=64, pad_token_id=1, **SMALL),
        _text(_ids()),
    ),
    "albert_mlm": lambda T: (
        T.AlbertConfig,
        T.AlbertForMaskedLM,
        T.FlaxAlbertForMaskedLM,
        dict(vocab_size=100, embedding_size=16, max_position_embeddings=64, **SMALL),
        _text(_ids()),
    ),
    "xglm": lambda T: (
        T.XGLMConfig,
        T.XGLMForCausalLM,
        T.FlaxXGLMForCausalLM,
        dict(vocab_size=100, max_position_embeddings=64, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64),
        _text(_ids()),
    ),
    "blenderbot": lambda T: (
        T.BlenderbotConfig,
        T.BlenderbotModel,
        T.FlaxBlenderbotModel,
        dict(SEQ2SEQ_SMALL),
        _seq2seq_inputs(),
    ),
}


def make_boundary_pair(name: str, seed: int = 0):
    """(pt_model, flax_model, inputs) for one of :data:`BOUNDARY_SPECS`."""
    SPECS.update({k: v for k, v in BOUNDARY_SPECS.items() if k not in SPECS})
    return make_pair(name, seed)
