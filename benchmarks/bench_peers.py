"""PyTorch-side capture: xfdiff against TorchLens and transformers' model-addition debugger.

Every tool records the activations of one forward pass of the same 12-layer
d=768 Llama (seq 128, CPU, fp32). Each tool runs in its own subprocess (TorchLens
wraps torch functions process-wide; peak memory needs a fresh process): the
subprocess times the bare forward, then the tool, warm, several times, and
reports the ratio of medians and the extra peak RSS the tool needed.

Tools:
- ``xfdiff``: ``TorchSide.capture()``, the capture ``compare()`` runs (every
  module call's inputs and outputs copied to numpy).
- ``torchlens``: ``torchlens.trace(model, input_kwargs=...)``, which by
  default saves the output of every tensor operation, not only of module calls.
- ``hf_debugger_full``: ``model_addition_debugger_context(model, debug_path,
  do_prune_layers=False, use_repr=False)``: every module's tensors written
  to safetensors files plus a JSON tree.
- ``hf_debugger_default``: the same with its defaults (tensor reprs, layers
  other than the first and last pruned).

    pip install --no-deps torchlens==2.36.1 && pip install graphviz pillow
    python benchmarks/bench_peers.py

Writes benchmarks/results/peers_llama12.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pairs import environment, llama_config, peak_rss_gib, token_ids, torch_llama, write_result  # noqa: E402

TOOLS = ("xfdiff", "torchlens", "hf_debugger_full", "hf_debugger_default")


def _tool(name: str, pt, ids):
    """A zero-argument function that captures one forward pass with ``name``."""
    import torch

    x = torch.from_numpy(ids)
    if name == "xfdiff":
        from xfdiff.capture.from_torch import TorchSide

        side = TorchSide(pt, {"input_ids": ids})
        return lambda: len(side.capture().records)
    if name == "torchlens":
        import torchlens

        def run():
            with torch.no_grad():
                return len(torchlens.trace(pt, input_kwargs={"input_ids": x}).layer_list)  # default: save all

        return run
    from transformers import model_addition_debugger_context

    full = name == "hf_debugger_full"

    def run_hf():
        with tempfile.TemporaryDirectory() as d:
            with model_addition_debugger_context(pt, debug_path=d, do_prune_layers=not full, use_repr=not full):
                pt(input_ids=x)
            return sum(1 for _ in Path(d).rglob("*"))

    return run_hf


def worker(name: str, repeats: int, seq: int) -> dict:
    import torch

    warnings.filterwarnings("ignore")
    cfg = llama_config()
    pt = torch_llama(cfg)
    ids = token_ids(cfg, seq)
    x = torch.from_numpy(ids)

    def bare():
        with torch.no_grad():
            pt(input_ids=x)

    for _ in range(2):
        bare()
    bare_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare()
        bare_s.append(time.perf_counter() - t0)
    base = peak_rss_gib()
    fn = _tool(name, pt, ids)
    t0 = time.perf_counter()
    recorded = fn()
    cold = time.perf_counter() - t0
    tool_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        tool_s.append(time.perf_counter() - t0)
    return {
        "tool": name,
        "bare_median_s": statistics.median(bare_s),
        "tool_median_s": statistics.median(tool_s),
        "ratio_to_bare": statistics.median(tool_s) / statistics.median(bare_s),
        "first_call_s": cold,
        "extra_peak_rss_mib": (peak_rss_gib() - base) * 1024,
        "recorded": recorded,
        "bare_s": bare_s,
        "tool_s": tool_s,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=TOOLS)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--tools", default=",".join(TOOLS))
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT" + json.dumps(worker(args.worker, args.repeats, args.seq)))
        return 0
    results = {}
    for name in args.tools.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--repeats", str(args.repeats), "--seq", str(args.seq)],
            capture_output=True,
            text=True,
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            results[name] = {"error": proc.stderr[-2000:]}
            print(name, "failed:", proc.stderr[-500:])
            continue
        results[name] = r = json.loads(line[len("RESULT") :])
        print(
            f"{name:22s} bare {r['bare_median_s']:.3f}s  tool {r['tool_median_s']:.3f}s  x{r['ratio_to_bare']:.2f}  "
            f"+{r['extra_peak_rss_mib']:.0f} MiB peak"
        )
    ref = results.get("xfdiff", {})
    summary = {
        name: {
            "ratio_to_bare": round(r["ratio_to_bare"], 2),
            "extra_peak_rss_mib": round(r["extra_peak_rss_mib"]),
            "time_vs_xfdiff": round(r["tool_median_s"] / ref["tool_median_s"], 2) if "tool_median_s" in ref else None,
            "memory_vs_xfdiff": round(r["extra_peak_rss_mib"] / ref["extra_peak_rss_mib"], 2)
            if ref.get("extra_peak_rss_mib")
            else None,
        }
        for name, r in results.items()
        if "error" not in r
    }
    cfg = llama_config()
    path = write_result(
        "peers_llama12.json",
        {
            "benchmark": "torch_capture_vs_peers",
            "command": "python benchmarks/bench_peers.py",
            "model": {
                "kind": "LlamaForCausalLM",
                "layers": cfg.num_hidden_layers,
                "hidden": cfg.hidden_size,
                "seq": args.seq,
                "dtype": "float32",
            },
            "repeats": args.repeats,
            "summary": summary,
            "runs": results,
            "environment": environment(),
        },
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
