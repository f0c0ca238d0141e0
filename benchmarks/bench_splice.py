"""The cost of splice confirmation on the 12-layer benchmark model with a planted bug.

Splices run only when something is out of tolerance: one re-run of the port per
site, one per finding with a recomputation under its fix, and the set runs. The
bug is planted in the reference (layer 5's post-attention RMSNorm epsilon), so
the Flax port diverges at that one layer. Measured warm (after one untimed
call), with splicing on and switched off, interleaved.

    python benchmarks/bench_splice.py            # 12-layer d=768 Llama, seq 128
    python benchmarks/bench_splice.py --quick    # 2 layers

Writes benchmarks/results/splice_llama12.json (or splice_quick.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pairs import environment, hf_pair, llama_config, token_ids, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2-layer model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import xfdiff
    import xfdiff.splice as splice

    cfg = llama_config(**(dict(num_hidden_layers=2) if args.quick else {}))
    pt, fx = hf_pair(cfg)
    layer = min(5, cfg.num_hidden_layers - 1)
    pt.model.layers[layer].post_attention_layernorm.variance_epsilon = 1e-3  # the planted bug
    inputs = {"input_ids": token_ids(cfg, args.seq)}
    real_confirm = splice.confirm

    def run(on: bool):
        splice.confirm = real_confirm if on else (lambda *a, **k: None)
        try:
            t0 = time.perf_counter()
            r = xfdiff.compare(pt, fx, inputs, progress=False)
            return time.perf_counter() - t0, r
        finally:
            splice.confirm = real_confirm

    cold, report = run(True)
    run(False)
    times: dict[str, list[float]] = {"splice on": [], "splice off": []}
    inner = []
    for _ in range(args.repeats):
        for name, on in (("splice on", True), ("splice off", False)):
            t, r = run(on)
            times[name].append(t)
            if on:
                inner.append(r.splice["seconds"])
                report = r
    med = {k: statistics.median(v) for k, v in times.items()}
    sp = report.splice
    result = {
        "benchmark": "splice_cost",
        "command": "python benchmarks/bench_splice.py" + (" --quick" if args.quick else ""),
        "model": {"layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "seq": args.seq},
        "planted_bug": f"reference model.layers.{layer}.post_attention_layernorm eps 1e-3",
        "first_divergence": report.first_divergence.label if report.first_divergence else None,
        "findings": [f.pitfall for f in report.findings],
        "splice": {k: sp[k] for k in ("sites", "first_suffices", "sufficient_set", "runs")},
        "first_divergence_share": report.first_divergence.splice_share if report.first_divergence else None,
        "fix_share": report.findings[0].fix_share if report.findings else None,
        "compare_seconds_median": med,
        "splice_seconds_median": statistics.median(inner),
        "splice_share_of_compare": statistics.median(inner) / med["splice on"],
        "first_call_seconds": cold,
        "environment": environment(),
    }
    path = write_result("splice_quick.json" if args.quick else "splice_llama12.json", result)
    print(report.summary(max_rows=4))
    print({k: result[k] for k in ("splice", "compare_seconds_median", "splice_seconds_median")})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
