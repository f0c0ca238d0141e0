"""``xfdiff.compare`` against the bare work it replaces, side by side in one process.

The bare work is what a user would otherwise run: the PyTorch forward, the
jitted Flax forward and a final diff of the logits. Both sides are measured
warm (after one untimed call), interleaved, several times; the result is the
ratio of medians. A profiled run says where compare's time goes.

    python benchmarks/bench_compare.py            # 12-layer d=768 Llama, seq 128
    python benchmarks/bench_compare.py --quick    # 2 layers, for a smoke run

Writes benchmarks/results/compare_llama12.json (or compare_quick.json).
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
import numpy as np  # noqa: E402
from _pairs import environment, hf_pair, llama_config, token_ids, write_result  # noqa: E402

CONFIGS = {
    "local=False, diagnose=False": dict(local=False, diagnose=False),
    "local=False, diagnose=True": dict(local=False, diagnose=True),
    "local=True, diagnose=False": dict(local=True, diagnose=False),
    "local=True, diagnose=True": dict(local=True, diagnose=True),
}
# The same calls with nothing remembered from earlier comparisons (parameter
# fingerprints and pairing), as when the weights are new: e.g. after each training step.
FRESH = {
    "local=False, weights new": dict(local=False, diagnose=True),
    "local=True, weights new": dict(local=True, diagnose=True),
}


def forget_weights() -> None:
    """Drop what xfdiff remembers about parameters between comparisons."""
    from xfdiff import align, trace

    align._MEMO.clear()
    trace._DERIVED.clear()


# (owner, attribute) of the functions whose time makes up a compare() call.
STAGES = {
    "capture torch": ("xfdiff.capture.from_torch", "TorchSide.capture"),
    "capture flax (plain + teacher-forced)": ("xfdiff.capture.from_linen", "LinenSide.capture"),
    "align": ("xfdiff.engine", "_align"),
    "rows (stats + detail)": ("xfdiff.engine", "_plain_pass"),  # the final output's row included
    "teacher forcing (incl. its capture)": ("xfdiff.engine", "localize"),
    "statistics backends (rows, teacher forcing, fingerprints, layout checks)": ("xfdiff.stats.dispatch", "_first"),
    "verdict (rounding floor, boundaries, coverage)": ("xfdiff.engine", "_judge"),
    "diagnose": ("xfdiff.engine", "_diagnose"),
    "environment checks": ("xfdiff.engine", "_environment"),
}


def bare_work(pt, fx_fn, params, ids):
    """PyTorch forward + jitted Flax forward + the diff a user would print."""
    import torch

    with torch.no_grad():
        a = pt(input_ids=torch.from_numpy(ids)).logits.numpy()
    b = np.asarray(fx_fn(params, ids))
    return float(np.max(np.abs(a - b)))


def stage_times(pt, fx, ids, kwargs, repeats: int = 3) -> dict:
    """Seconds spent in each stage of compare(), by wrapping the stage functions with timers."""
    import xfdiff

    return _pairs.stage_times(
        lambda: xfdiff.compare(pt, fx, {"input_ids": ids}, progress=False, **kwargs), repeats, STAGES
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2-layer model, 3 repeats")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import jax

    import xfdiff

    overrides = dict(num_hidden_layers=2) if args.quick else {}
    repeats = 3 if args.quick else args.repeats
    cfg = llama_config(**overrides)
    pt, fx = hf_pair(cfg)
    ids = token_ids(cfg, args.seq)
    fx_fn = jax.jit(lambda p, i: fx(i, params=p).logits)

    cold = {}
    t0 = time.perf_counter()
    bare_work(pt, fx_fn, fx.params, ids)
    cold["bare"] = time.perf_counter() - t0
    for name, kw in CONFIGS.items():
        t0 = time.perf_counter()
        report = xfdiff.compare(pt, fx, {"input_ids": ids}, progress=False, **kw)
        cold[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in ["bare", *CONFIGS, *FRESH]}
    for _ in range(repeats):  # interleaved, so drift from other load hits every column alike
        t0 = time.perf_counter()
        bare_work(pt, fx_fn, fx.params, ids)
        times["bare"].append(time.perf_counter() - t0)
        for name, kw in {**CONFIGS, **FRESH}.items():
            if name in FRESH:
                forget_weights()
            t0 = time.perf_counter()
            xfdiff.compare(pt, fx, {"input_ids": ids}, progress=False, **kw)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "compare_vs_bare",
        "command": "python benchmarks/bench_compare.py" + (" --quick" if args.quick else ""),
        "model": {
            "kind": "LlamaForCausalLM / FlaxLlamaForCausalLM",
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
            "seq": args.seq,
            "batch": 1,
            "dtype": "float32",
        },
        "n_rows": len(report.layers),
        "repeats": repeats,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_to_bare": {k: round(med[k] / med["bare"], 3) for k in [*CONFIGS, *FRESH]},
        "targets": {"local=False": 1.5, "local=True": 2.5},
        "note": "a repeated compare() of unchanged weights reuses their fingerprints and pairing; "
        "'weights new' rows forget both before every call",
        "first_call_s": {k: round(v, 3) for k, v in cold.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "stages_s (local=True, diagnose=True)": stage_times(pt, fx, ids, CONFIGS["local=True, diagnose=True"]),
        "environment": environment(),
    }
    path = write_result("compare_quick.json" if args.quick else "compare_llama12.json", result)
    print(f"bare {med['bare']:.3f}s")
    for k in [*CONFIGS, *FRESH]:
        print(f"{k:30s} {med[k]:.3f}s  x{med[k] / med['bare']:.2f}")
    print("stages:", result["stages_s (local=True, diagnose=True)"])
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
