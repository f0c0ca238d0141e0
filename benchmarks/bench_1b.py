"""A 1.1B-parameter Llama at 2,048 tokens, compared in bounded-memory mode (fp32, CPU).

Configuration of TinyLlama-1.1B (22 layers, d=2048, intermediate 5632, 32
heads, 4 key/value heads, vocabulary 32000), random weights. The PyTorch model
is the reference; the port is ``FlaxLlamaForCausalLMModule`` with the weights
converted by transformers. Peak resident memory is the process's
``ru_maxrss`` (models included) and a 0.2 s psutil sampler during compare().

    python benchmarks/bench_1b.py                    # the full run (needs ~18 GiB free)
    python benchmarks/bench_1b.py --layers 2 --seq 256   # a quick check of the pipeline

Writes benchmarks/results/llama_1b.json (or llama_1b_small.json for reduced runs).
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _pairs import LLAMA_1B, environment, flax_params, llama_config, peak_rss_gib, token_ids, torch_llama, write_result  # noqa: E402


class Sampler:
    """Samples this process's RSS every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.2):
        import psutil

        self.proc, self.period, self.peak, self.samples = psutil.Process(), period, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.samples += 1
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def record_stages() -> list:
    """Log (stage, seconds since start, RSS GiB) each time compare() reports progress."""
    import psutil

    from xfdiff.progress import Progress

    log: list = []
    orig = Progress.step
    t0 = time.perf_counter()

    def step(self, what: str) -> None:
        log.append([what, round(time.perf_counter() - t0, 1), round(psutil.Process().memory_info().rss / 2**30, 2)])
        orig(self, what)

    Progress.step = step
    return log


def free_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=LLAMA_1B["num_hidden_layers"])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--no-local", action="store_true", help="skip teacher forcing")
    ap.add_argument("--min-free", type=float, default=18.0, help="GiB that must be available to start")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    full_size = args.layers == LLAMA_1B["num_hidden_layers"] and args.seq == 2048
    if full_size and free_gib() < args.min_free:
        print(f"only {free_gib():.1f} GiB available, {args.min_free} needed; try again later")
        return 2
    import torch

    import xfdiff

    cfg = llama_config(**{**LLAMA_1B, "num_hidden_layers": args.layers})
    t0 = time.perf_counter()
    pt = torch_llama(cfg)
    fx, params = flax_params(pt, cfg)
    n_params = sum(p.numel() for p in pt.parameters())
    build_s = time.perf_counter() - t0
    gc.collect()
    ids = token_ids(cfg, args.seq)
    flax_inputs = {
        "input_ids": ids.astype("i4"),
        "attention_mask": np.ones_like(ids, "i4"),
        "position_ids": np.arange(args.seq, dtype="i4")[None],
    }
    import psutil

    rss_models = psutil.Process().memory_info().rss / 2**30
    peak_before = peak_rss_gib()
    stages = record_stages()
    t0 = time.perf_counter()
    with Sampler() as sampler:
        report = xfdiff.compare(
            pt,
            (fx.module, {"params": params}),
            {"input_ids": torch.from_numpy(ids)},
            flax_inputs=flax_inputs,
            memory="bounded",
            local=not args.no_local,
            progress=True,
        )
    compare_s = time.perf_counter() - t0
    mem = report.meta["memory"]
    per_side = mem["reference_bytes_spilled"] / 2**30
    result = {
        "benchmark": "llama_1b_bounded",
        "command": "python benchmarks/bench_1b.py" + ("" if full_size else f" --layers {args.layers} --seq {args.seq}"),
        "model": {
            **{
                k: getattr(cfg, k)
                for k in (
                    "num_hidden_layers",
                    "hidden_size",
                    "intermediate_size",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "vocab_size",
                )
            },
            "parameters": n_params,
            "dtype": "float32",
            "seq": args.seq,
            "batch": 1,
        },
        "compare": {"memory": "bounded", "local": not args.no_local, "diagnose": True},
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "peak_rss_gib_during_compare_sampled": round(sampler.peak / 2**30, 2),
        "rss_gib_models_loaded": round(rss_models, 2),
        "peak_rss_gib_before_compare": round(peak_before, 2),
        "target_peak_rss_gib": 16,
        "compare_s": round(compare_s, 1),
        "stages (start s, RSS GiB at start)": stages,
        "build_s": round(build_s, 1),
        "spilled": {k: v for k, v in mem.items() if k != "mode"},
        "reference_activations_gib": round(per_side, 2),
        "full_mode_estimate_gib": round(rss_models + 2 * per_side, 1),
        "rows": len(report.layers),
        "final": {"status": report.final.status, "max_abs": report.final.max_abs, "rel_l2": report.final.rel_l2},
        "verdict": report.verdict,
        "verdict_reason": report.verdict_reason,
        "first_divergence": report.first_divergence and report.first_divergence.label,
        "statuses": {
            s: sum(1 for lyr in report.layers if lyr.status == s) for s in sorted({lyr.status for lyr in report.layers})
        },
        "environment": environment(),
    }
    name = "llama_1b.json" if full_size else "llama_1b_small.json"
    path = write_result(name, result)
    print(report.summary(max_rows=5))
    print(
        {
            k: result[k]
            for k in (
                "peak_rss_gib",
                "peak_rss_gib_during_compare_sampled",
                "rss_gib_models_loaded",
                "compare_s",
                "reference_activations_gib",
                "full_mode_estimate_gib",
            )
        }
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
