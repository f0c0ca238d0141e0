"""The fixed cost of ``xfdiff.compare`` per aligned call, on a deep narrow pair whose forward is cheap.

A 48-layer Hugging Face Llama with d=64, 4 heads, vocab 256, at seq 16: the
bare work (PyTorch forward + jitted Flax forward + a final diff) takes a few
milliseconds, so what ``compare(local=False)`` adds is almost all per-call
bookkeeping: hooks and copies, pairing, one row per aligned call, the report.

    per-call cost = (median compare - median bare) / aligned calls

Both are measured warm, interleaved, several times in one process. A second
set of runs wraps the stage functions with timers (torch capture, port
capture, align, rows, report).

    python benchmarks/bench_deep.py              # writes benchmarks/results/deep_llama48.json
    python benchmarks/bench_deep.py --repeats 3

"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _pairs  # noqa: E402
from _pairs import environment, hf_pair, llama_config, token_ids, write_result  # noqa: E402
from bench_compare import bare_work  # noqa: E402

DEEP = dict(
    num_hidden_layers=48,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=256,
)
SEQ = 16
TARGET_MS = 0.2

# stage -> (module, attribute) whose calls are timed; nested stages count in both.
STAGES = {
    "torch capture": ("xfdiff.capture.from_torch", "TorchSide.capture"),
    "port capture": ("xfdiff.capture.from_linen", "LinenSide.capture"),
    "align": ("xfdiff.engine", "_align"),
    "rows": ("xfdiff.engine", "_plain_pass"),
    "report": ("xfdiff.engine", "_report"),
    "diagnose": ("xfdiff.engine", "_diagnose"),
}


def stage_times(run, repeats: int, stages: dict | None = None) -> dict:
    return _pairs.stage_times(run, repeats, stages or STAGES)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layers", type=int, default=DEEP["num_hidden_layers"])
    ap.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import jax
    import torch

    if args.torch_threads:
        # d=64 ops gain nothing from a second thread, and on a loaded machine torch's thread team
        # waiting on a descheduled worker makes the forward 3-10x slower at random (bare and compare alike).
        torch.set_num_threads(args.torch_threads)

    import xfdiff

    cfg = llama_config(**{**DEEP, "num_hidden_layers": args.layers})
    pt, fx = hf_pair(cfg)
    ids = token_ids(cfg, SEQ)
    fx_fn = jax.jit(lambda p, i: fx(i, params=p).logits)
    kw = dict(local=False, diagnose=False, progress=False)

    def run():
        return xfdiff.compare(pt, fx, {"input_ids": ids}, **kw)

    for _ in range(2):  # warm: jit caches, fingerprints, pairing
        bare_work(pt, fx_fn, fx.params, ids)
        report = run()
    n_calls = len(report.layers)
    times: dict[str, list[float]] = {"bare": [], "compare": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare_work(pt, fx_fn, fx.params, ids)
        times["bare"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run()
        times["compare"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_call_ms = (med["compare"] - med["bare"]) / n_calls * 1e3
    stages = stage_times(run, max(3, args.repeats // 2))
    result = {
        "benchmark": "deep_per_call",
        "command": "python benchmarks/bench_deep.py",
        "model": {
            "kind": "LlamaForCausalLM / FlaxLlamaForCausalLM",
            **DEEP,
            "num_hidden_layers": args.layers,
            "seq": SEQ,
            "batch": 1,
            "dtype": "float32",
        },
        "options": {"local": False, "diagnose": False},
        "torch_threads": torch.get_num_threads(),
        "aligned_calls": n_calls,
        "repeats": args.repeats,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "per_call_ms": round(per_call_ms, 4),
        "target_per_call_ms": TARGET_MS,
        "stages_s": stages,
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "environment": environment(),
    }
    name = "deep_llama48.json" if args.layers == DEEP["num_hidden_layers"] else f"deep_llama{args.layers}.json"
    path = write_result(name, result)
    print(
        f"bare {med['bare'] * 1e3:.1f} ms, compare {med['compare'] * 1e3:.1f} ms, {n_calls} aligned calls: "
        f"{per_call_ms:.3f} ms per call (target {TARGET_MS})"
    )
    print("stages (s):", stages)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
