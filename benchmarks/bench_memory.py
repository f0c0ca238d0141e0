"""Peak memory (RSS) of ``compare()`` against the bare work, each in a fresh process.

The bare work is the PyTorch forward, the jitted Flax forward and a final diff
on the 12-layer d=768 Llama pair (seq 128, CPU, fp32). Each variant runs in its
own subprocess; the result is the process's peak RSS (``ru_maxrss``) at the end,
and the part above what the models and one warm bare forward already needed.

    python benchmarks/bench_memory.py

Writes benchmarks/results/memory_llama12.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pairs import environment, hf_pair, llama_config, peak_rss_gib, token_ids, write_result  # noqa: E402

VARIANTS = {
    "bare": None,
    "compare(local=False)": dict(local=False),
    "compare()": dict(),
    "compare(memory='bounded')": dict(memory="bounded"),
}


def worker(name: str, seq: int) -> dict:
    import jax
    import numpy as np
    import torch

    import xfdiff

    warnings.filterwarnings("ignore")
    cfg = llama_config()
    pt, fx = hf_pair(cfg)
    ids = token_ids(cfg, seq)
    fx_fn = jax.jit(lambda p, i: fx(i, params=p).logits)

    def bare():
        with torch.no_grad():
            a = pt(input_ids=torch.from_numpy(ids)).logits.numpy()
        return float(np.max(np.abs(a - np.asarray(fx_fn(fx.params, ids)))))

    bare()
    base = peak_rss_gib()
    if VARIANTS[name] is None:
        bare()
    else:
        xfdiff.compare(pt, fx, {"input_ids": ids}, progress=False, **VARIANTS[name])
    peak = peak_rss_gib()
    return {"variant": name, "peak_rss_gib": peak, "baseline_gib": base, "extra_gib": peak - base}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=list(VARIANTS))
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT" + json.dumps(worker(args.worker, args.seq)))
        return 0
    runs = {}
    for name in VARIANTS:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--seq", str(args.seq)], capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            print(name, "failed:", proc.stderr[-1000:])
            continue
        runs[name] = r = json.loads(line[len("RESULT") :])
        print(
            f"{name:28s} peak {r['peak_rss_gib']:.2f} GiB (models + warm forward {r['baseline_gib']:.2f}, "
            f"extra {r['extra_gib'] * 1024:.0f} MiB)"
        )
    bare = runs["bare"]
    cfg = llama_config()
    path = write_result(
        "memory_llama12.json",
        {
            "benchmark": "peak_rss_vs_bare",
            "command": "python benchmarks/bench_memory.py",
            "model": {
                "kind": "LlamaForCausalLM / FlaxLlamaForCausalLM",
                "layers": cfg.num_hidden_layers,
                "hidden": cfg.hidden_size,
                "seq": args.seq,
                "dtype": "float32",
            },
            "peak_ratio_to_bare": {k: round(r["peak_rss_gib"] / bare["peak_rss_gib"], 3) for k, r in runs.items()},
            "extra_mib": {k: round(r["extra_gib"] * 1024) for k, r in runs.items()},
            "runs": runs,
            "environment": environment(),
        },
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
