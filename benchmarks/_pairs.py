"""Model pairs and measuring helpers shared by the benchmark scripts.

A pair is a Hugging Face ``LlamaForCausalLM`` (PyTorch, the reference) and its
``FlaxLlamaForCausalLM`` port with the same random weights converted by
``transformers.modeling_flax_pytorch_utils.convert_pytorch_state_dict_to_flax``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
import types
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

LLAMA_12L = dict(
    vocab_size=1024,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    max_position_embeddings=512,
)
LLAMA_1B = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)


def llama_config(**overrides):
    from transformers import LlamaConfig

    cfg = LlamaConfig(**{**LLAMA_12L, **overrides})
    cfg._attn_implementation = "sdpa"
    return cfg


def torch_llama(cfg, seed: int = 0):
    """A random-weight PyTorch Llama in eval mode; cheap normal init (std 0.02)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        model.model.rotary_emb.__init__(config=cfg)  # buffers were left empty by to_empty
    return model.eval()


def flax_params(pt_model, cfg):
    """Flax parameters of ``pt_model`` without initialising a random Flax model first."""
    import jax
    from transformers import FlaxLlamaForCausalLM
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    fx = FlaxLlamaForCausalLM(cfg, _do_init=False)
    one = np.zeros((1, 1), "i4")
    shapes = jax.eval_shape(lambda: fx.module.init(jax.random.PRNGKey(0), one, one + 1, one))
    stub = types.SimpleNamespace(base_model_prefix=fx.base_model_prefix, params=shapes["params"])
    state = {k: v for k, v in pt_model.state_dict().items() if "rotary_emb" not in k}
    return fx, convert_pytorch_state_dict_to_flax(state, stub)


def hf_pair(cfg, seed: int = 0):
    """(torch model, FlaxLlamaForCausalLM holding the same weights)."""
    from transformers import FlaxLlamaForCausalLM

    pt = torch_llama(cfg, seed)
    _, params = flax_params(pt, cfg)
    fx = FlaxLlamaForCausalLM(cfg, _do_init=True, seed=seed)
    fx.params = params
    return pt, fx


def token_ids(cfg, seq: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq)).astype(np.int64)


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def environment() -> dict:
    import jax
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def stage_times(run, repeats: int, stages: dict) -> dict:
    """Median seconds per stage of ``run()``: ``stages`` maps a name to ``(module, "func" or "Class.method")``,
    each wrapped with a timer while ``run`` repeats (nested stages count in both)."""
    import importlib

    acc: dict[str, list[float]] = {name: [] for name in stages}
    originals = []
    for name, (module, attr) in stages.items():
        owner = importlib.import_module(module)
        cls, _, fn_name = attr.rpartition(".")
        target = getattr(owner, cls) if cls else owner
        fn = getattr(target, fn_name)
        originals.append((target, fn_name, fn))

        def timed_fn(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                acc[_name][-1] += time.perf_counter() - t0

        setattr(target, fn_name, timed_fn)
    totals = []
    try:
        for _ in range(repeats):
            for v in acc.values():
                v.append(0.0)
            t0 = time.perf_counter()
            run()
            totals.append(time.perf_counter() - t0)
    finally:
        for target, fn_name, fn in originals:
            setattr(target, fn_name, fn)
    out = {name: round(statistics.median(v), 4) for name, v in acc.items()}
    out["total"] = round(statistics.median(totals), 4)
    return out
