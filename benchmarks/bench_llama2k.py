"""Verdict on a clean fp32 Llama at d=2048 and 2,048 tokens (2 layers, CPU, bounded memory).

fp32 rounding over d=2048 and 2,048 keys exceeds the plain atol=1e-5 at many rows; the
verdict must still be "match" (each row's own error within its rounding floor). Modes:

    python benchmarks/bench_llama2k.py            # clean port: match
    python benchmarks/bench_llama2k.py bf16       # the whole port in bf16: judged by the bf16 floor
    python benchmarks/bench_llama2k.py eps        # RMSNorm eps 1e-6 vs 1e-5: found as norm_epsilon

Writes benchmarks/results/llama2k_<mode>.json.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _pairs import environment, hf_pair, llama_config, token_ids, write_result  # noqa: E402

SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=2,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    vocab_size=1024,
)


def main(argv=None) -> int:
    import jax
    import jax.numpy as jnp

    import xfdiff

    argv = sys.argv[1:] if argv is None else argv
    mode = argv[0] if argv else "clean"
    seq = int(argv[1]) if len(argv) > 1 else 2048
    warnings.simplefilter("ignore")
    cfg = llama_config(**SHAPE)
    pt, fx = hf_pair(cfg)
    if mode == "bf16":
        fx.params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), fx.params)
    if mode == "eps":  # reference eps 1e-5, port 1e-6
        for m in pt.modules():
            if type(m).__name__ == "LlamaRMSNorm":
                m.variance_epsilon = 1e-5
        from transformers import FlaxLlamaForCausalLM

        port = FlaxLlamaForCausalLM(llama_config(**SHAPE, rms_norm_eps=1e-6), _do_init=True)
        port.params = fx.params
        fx = port
    ids = token_ids(cfg, seq)
    t0 = time.perf_counter()
    r = xfdiff.compare(pt, fx, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, memory="bounded")
    result = {
        "benchmark": "llama2k_verdict",
        "command": f"python benchmarks/bench_llama2k.py {mode} {seq}",
        "mode": mode,
        "seq": seq,
        "compare_s": round(time.perf_counter() - t0, 1),
        "verdict": r.verdict,
        "verdict_reason": r.verdict_reason,
        "first_divergence": r.first_divergence and r.first_divergence.label,
        "findings": [[f.pitfall, f.torch_path] for f in r.findings],
        "rows_outside_plain_tolerance": sum(lyr.status != "ok" for lyr in r.layers),
        "final_max_abs": r.final.max_abs if r.final else None,
        "environment": environment(),
    }
    print(write_result(f"llama2k_{mode}.json", result))
    print({k: result[k] for k in ("verdict", "verdict_reason", "first_divergence", "findings", "compare_s")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
