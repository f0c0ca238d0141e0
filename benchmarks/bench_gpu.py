"""``xfdiff.compare`` on a GPU: the 12-layer Llama at seq 128 and the 1.1B at seq 2048, with a stage table.

Runs unchanged on a CUDA machine: the PyTorch model on ``cuda:0``, the Flax
port on JAX's first GPU, both fp32, JAX matmuls at ``highest`` precision (so
the two sides compute the same thing). Each row is the bare work a user would
otherwise run (the torch forward, the jitted Flax forward, the logits' diff,
each waited for) against ``compare(local=False)`` and ``compare(local=True)``,
measured warm and interleaved; a stage table says where compare's time goes.

    python benchmarks/bench_gpu.py                  # both rows; writes benchmarks/results/gpu_*.json
    python benchmarks/bench_gpu.py --only 12        # the 12-layer row
    python benchmarks/bench_gpu.py --cpu-smoke      # no GPU: the same code on a 2-layer model, on the CPU

Without a CUDA torch and a GPU JAX it prints why and exits 0 (``--cpu-smoke``
runs the code path on the CPU instead and writes to a temporary directory).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# torch and JAX share the GPU here: JAX would otherwise reserve 75% of its memory when it starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
from _pairs import LLAMA_1B, environment, flax_params, llama_config, peak_rss_gib, token_ids, torch_llama  # noqa: E402

from xfdiff.capture._common import DEVICE_ENV  # noqa: E402

# stage -> (module, attribute) timed inside compare() (nested stages count in both).
STAGES = {
    "torch capture": ("xfdiff.capture.from_torch", "TorchSide.capture"),
    "port capture (plain + teacher-forced)": ("xfdiff.capture.from_linen", "LinenSide.capture"),
    "align": ("xfdiff.engine", "_align"),
    "rows": ("xfdiff.engine", "_plain_pass"),
    "teacher forcing (incl. its capture)": ("xfdiff.engine", "localize"),
    "report": ("xfdiff.engine", "_report"),
    "diagnose": ("xfdiff.engine", "_diagnose"),
    "environment checks": ("xfdiff.engine", "_environment"),
}


def gpu_ready() -> tuple[bool, str]:
    """Whether torch sees CUDA and JAX's default backend is a GPU; the reason when not."""
    import jax
    import torch

    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    if jax.default_backend() != "gpu":
        return False, f"JAX's default backend is {jax.default_backend()!r}, not a GPU"
    return True, ""


def device_names(dev) -> dict:
    import jax
    import torch

    return {
        "torch_device": str(dev),
        "torch_device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_device_kind": jax.devices()[0].device_kind,
    }


def build_pair(cfg, dev):
    """(torch model on ``dev``, the Flax module, its params on JAX's default device)."""
    import jax

    pt = torch_llama(cfg)
    fx, params = flax_params(pt, cfg)
    params = jax.device_put(params)
    gc.collect()
    return pt.to(dev), fx.module, params


def bare_work(pt, fx_fn, params, ids_t, fx_inputs):
    """torch forward + jitted Flax forward + the logits' max |diff|, each finished before the clock stops."""
    import torch

    with torch.no_grad():
        a = pt(input_ids=ids_t).logits
    b = fx_fn(params, fx_inputs)
    return float(np.max(np.abs(a.float().cpu().numpy() - np.asarray(b))))


def stage_times(run, repeats: int) -> dict:
    from _pairs import stage_times as timed_stages

    return timed_stages(run, repeats, STAGES)


def row(name: str, cfg, seq: int, dev, repeats: int, configs: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    import xfdiff

    pt, module, params = build_pair(cfg, dev)
    ids = token_ids(cfg, seq)
    ids_t = torch.from_numpy(ids).to(dev)
    fx_inputs = {
        "input_ids": jnp.asarray(ids.astype(np.int32)),
        "attention_mask": jnp.ones(ids.shape, jnp.int32),
        "position_ids": jnp.arange(seq, dtype=jnp.int32)[None],
    }
    fx_fn = jax.jit(lambda p, x: module.apply({"params": p}, **x).logits)
    port = (module, {"params": params})
    runs = {
        k: (lambda kw=kw: xfdiff.compare(pt, port, {"input_ids": ids_t}, flax_inputs=fx_inputs, progress=False, **kw))
        for k, kw in configs.items()
    }
    first = {}
    t0 = time.perf_counter()
    bare_work(pt, fx_fn, params, ids_t, fx_inputs)
    first["bare"] = time.perf_counter() - t0
    reports = {}
    for k, fn in runs.items():
        t0 = time.perf_counter()
        reports[k] = fn()
        first[k] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in ["bare", *runs]}
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare_work(pt, fx_fn, params, ids_t, fx_inputs)
        times["bare"].append(time.perf_counter() - t0)
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    last = list(runs)[-1]
    rep = reports[last]
    out = {
        "row": name,
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
            "seq": seq,
            "batch": 1,
            "dtype": "float32",
        },
        "n_rows": len(rep.layers),
        "verdict": {k: _verdict(r) for k, r in reports.items()},
        "repeats": repeats,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_to_bare": {k: round(med[k] / med["bare"], 2) for k in runs},
        "first_call_s": {k: round(v, 3) for k, v in first.items()},
        "stages_s": {k: stage_times(fn, 1 if repeats < 3 else 2) for k, fn in runs.items()},
        "host_moves": {k: host_moves(fn) for k, fn in runs.items()},
        "device_path": device_path(pt, module),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    if dev.type == "cuda":
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return out  # the models go with this frame; main() collects before the next row


def host_moves(run) -> dict:
    """What one comparison copies to host memory (values and bytes) and between devices."""
    from xfdiff.stats import meet

    meet.reset_moves()
    run()
    return meet.moves()


def device_path(pt, module) -> dict:
    """Whether each side's capture keeps its values on the device (statistics reduced there)."""
    from xfdiff.capture import _jax
    from xfdiff.capture.from_torch import device_mode

    return {"torch": device_mode(pt), "jax": _jax.device_mode()}


def _verdict(report) -> dict:
    fd = report.first_divergence
    return {
        "first_divergence": None if fd is None else fd.torch_path,
        "n_out_of_tolerance": sum(1 for lyr in report.layers if lyr.status != "ok"),
        "findings": [f.pitfall for f in report.findings],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["12", "1b"], help="run one row")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU needed: a 2-layer model on the CPU")
    ap.add_argument("--out", help="directory for the JSON files (default: benchmarks/results, or a temporary one)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.cpu_smoke:
        # the smoke run takes the accelerator's code path: values kept as torch tensors / JAX arrays
        os.environ.setdefault(DEVICE_ENV, "1")
    import jax
    import torch

    jax.config.update("jax_default_matmul_precision", "highest")
    ok, why = gpu_ready()
    if not ok and not args.cpu_smoke:
        print(f"bench_gpu: skipped, {why} (run on a CUDA machine, or pass --cpu-smoke to check the code path)")
        return 0
    dev = torch.device("cuda:0") if ok and not args.cpu_smoke else torch.device("cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out_dir = (
        Path(args.out)
        if args.out
        else (
            Path(tempfile.mkdtemp(prefix="xfdiff-gpu-smoke-")) if args.cpu_smoke else Path(__file__).parent / "results"
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    both = {"local=False": dict(local=False, diagnose=True), "local=True": dict(local=True, diagnose=True)}
    rows = []
    if args.only in (None, "12"):
        cfg = llama_config(num_hidden_layers=2) if args.cpu_smoke else llama_config()
        seq = 16 if args.cpu_smoke else 128
        rows.append(("gpu_llama12.json", row("12 layers, d=768, seq 128", cfg, seq, dev, args.repeats, both)))
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.only in (None, "1b"):
        if args.cpu_smoke:
            cfg = llama_config(
                **{
                    **LLAMA_1B,
                    "num_hidden_layers": 1,
                    "hidden_size": 256,
                    "intermediate_size": 512,
                    "num_attention_heads": 8,
                    "num_key_value_heads": 2,
                    "vocab_size": 512,
                }
            )
            seq = 32
        else:
            cfg, seq = llama_config(**LLAMA_1B), 2048
        rows.append(("gpu_llama_1b.json", row("1.1B, seq 2048", cfg, seq, dev, 1, {"local=True": both["local=True"]})))
    import json

    for name, result in rows:
        result.update(
            {
                "benchmark": "gpu_compare_vs_bare",
                "command": "python benchmarks/bench_gpu.py" + (" --cpu-smoke" if args.cpu_smoke else ""),
                "targets": {"12 layers local=False": 3.0, "12 layers local=True": 5.0, "1.1B seconds": 10.0},
                "device": device_names(dev),
                "environment": environment(),
            }
        )
        path = out_dir / name
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{result['row']}: bare {result['median_s']['bare']:.3f}s",
            {k: v for k, v in result["ratio_to_bare"].items()},
        )
        for k, st in result["stages_s"].items():
            print(f"  stages {k}:", st)
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
