"""xfdiff at an earlier commit against the working tree, in one process, interleaved.

The earlier commit's package is extracted with ``git archive`` into a temporary
directory as ``xfdiff_base`` (its absolute module names rewritten), so both
versions run on the same models, warm, alternating call by call: the ratio
between them holds even on a loaded machine where absolute times drift.

    python benchmarks/bench_ab.py --base eed8b87 --pair deep      # 48-layer d=64 Llama, seq 16
    python benchmarks/bench_ab.py --base eed8b87 --pair llama12   # 12-layer d=768 Llama, seq 128

Writes benchmarks/results/ab_<pair>.json. torch runs on one thread (see bench_deep.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _pairs import environment, hf_pair, llama_config, token_ids, write_result  # noqa: E402
from bench_compare import bare_work  # noqa: E402
from bench_deep import DEEP, SEQ  # noqa: E402


def extract_base(commit: str) -> str:
    """The package at ``commit`` as ``xfdiff_base`` in a temporary directory (added to ``sys.path``)."""
    root = Path(tempfile.mkdtemp(prefix="xfdiff-ab-"))
    repo = HERE.parent
    tar = subprocess.run(["git", "-C", str(repo), "archive", commit, "xfdiff"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=tar, check=True)
    (root / "xfdiff").rename(root / "xfdiff_base")
    for py in (root / "xfdiff_base").rglob("*.py"):
        text = py.read_text()
        new = text.replace('"xfdiff.capture.', '"xfdiff_base.capture.').replace('"xfdiff.views"', '"xfdiff_base.views"')
        if new != text:
            py.write_text(new)
    sys.path.append(str(root))
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", commit], check=True, capture_output=True, text=True
    ).stdout.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the earlier commit")
    ap.add_argument("--pair", choices=["deep", "llama12"], default="deep")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    base = extract_base(args.base)
    import jax
    import torch
    import xfdiff_base

    import xfdiff

    torch.set_num_threads(1)
    if args.pair == "deep":
        cfg, seq = llama_config(**DEEP), SEQ
        configs = {"local=False": dict(local=False, diagnose=False)}
    else:
        cfg, seq = llama_config(), 128
        configs = {
            "local=False": dict(local=False, diagnose=False),
            "local=True": dict(local=True, diagnose=False),
            "local=True, diagnose=True": dict(local=True, diagnose=True),
        }
    pt, fx = hf_pair(cfg)
    ids = token_ids(cfg, seq)
    fx_fn = jax.jit(lambda p, i: fx(i, params=p).logits)
    versions = {"base": xfdiff_base, "new": xfdiff}
    for _ in range(2):
        bare_work(pt, fx_fn, fx.params, ids)
        for kw in configs.values():
            for mod in versions.values():
                report = mod.compare(pt, fx, {"input_ids": ids}, progress=False, **kw)
    times: dict[str, list[float]] = {"bare": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare_work(pt, fx_fn, fx.params, ids)
        times["bare"].append(time.perf_counter() - t0)
        for name, kw in configs.items():
            for v, mod in versions.items():
                t0 = time.perf_counter()
                mod.compare(pt, fx, {"input_ids": ids}, progress=False, **kw)
                times.setdefault(f"{v} {name}", []).append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(report.layers)
    result = {
        "benchmark": "ab_versions",
        "command": f"python benchmarks/bench_ab.py --base {args.base} --pair {args.pair}",
        "base_commit": base,
        "pair": args.pair,
        "aligned_calls": n,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_to_bare": {k: round(v / med["bare"], 3) for k, v in med.items() if k != "bare"},
        "new_over_base": {k: round(med[f"new {k}"] / med[f"base {k}"], 3) for k in configs},
        "per_call_ms": {k: round((v - med["bare"]) / n * 1e3, 4) for k, v in med.items() if k != "bare"},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "environment": environment(),
    }
    path = write_result(f"ab_{args.pair}.json", result)
    for k, v in result["ratio_to_bare"].items():
        print(f"{k:40s} {med[k]:.3f}s  x{v:.2f} bare")
    print("new / base:", result["new_over_base"])
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
