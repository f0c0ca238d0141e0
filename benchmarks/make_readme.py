"""Write benchmarks/README.md from the result files in benchmarks/results/.

    python benchmarks/make_readme.py

Every number in the README comes from a results file; each table names the
command that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _env(d: dict) -> str:
    e = d.get("environment", {})
    return (
        f"{e.get('cpus')} CPUs, torch {e.get('torch')} ({e.get('torch_threads')} threads), jax {e.get('jax')} "
        f"({e.get('jax_backend')}), transformers {e.get('transformers')}, {e.get('date')}"
    )


def compare_section(d: dict) -> list[str]:
    m = d["model"]
    out = [
        "## compare() against the bare work",
        "",
        f"`{d['command']}` — {m['num_hidden_layers']}-layer d={m['hidden_size']} Llama pair (PyTorch reference, "
        f"Hugging Face Flax port, same random weights), seq {m['seq']}, fp32, CPU; {d['n_rows']} aligned rows. "
        "Bare work = PyTorch forward + jitted Flax forward + max |diff| of the logits. Both sides warm "
        f"(one untimed call first), interleaved, median of {d['repeats']}.",
        "",
        "| configuration | median (s) | ratio to bare | target |",
        "|---|---:|---:|---:|",
        f"| bare work | {d['median_s']['bare']:.3f} | 1.00 | |",
    ]
    for k, r in d["ratio_to_bare"].items():
        target = d["targets"]["local=True" if "local=True" in k else "local=False"]
        call, fresh, _ = k.partition(", weights new")
        label = f"`compare({call})`" + (", weights new to xfdiff" if fresh else "")
        # The targets compare warm calls on both sides (the bare work's jit compile is not counted either).
        out.append(f"| {label} | {d['median_s'][k]:.3f} | {r:.2f} | {'(warm only)' if fresh else f'<= {target}'} |")
    stages = next(v for k, v in d.items() if k.startswith("stages"))
    out += [
        "",
        "Where the time goes in `compare(local=True, diagnose=True)` (seconds, median of the timed "
        "runs; statistics run inside rows and teacher forcing; the Flax capture counts both runs):",
        "",
        "| stage | s |",
        "|---|---:|",
    ]
    out += [f"| {k} | {v:.3f} |" for k, v in stages.items()]
    bare = d["median_s"]["bare"]
    fresh = [k for k in d["ratio_to_bare"] if "weights new" in k]
    out += [
        "",
        (
            f"Reading it: the two captures cost about what the two forward passes cost "
            f"({stages['capture torch']:.2f} s and {stages['capture flax (plain + teacher-forced)'] / 2:.2f} s a run "
            f"against a bare {bare:.2f} s for both); every row's statistics and detail come from one "
            f"compiled pass ({stages['rows (stats + detail)']:.3f} s for {d['n_rows']} rows). Alignment "
            f"({stages['align']:.3f} s here) reuses the parameter fingerprints and pairing of an earlier "
            "comparison while no weight has changed (a port's code edited and compared again); "
            + (
                "with nothing remembered ("
                + ", ".join(f"`{k}`: {d['ratio_to_bare'][k]:.2f}x" for k in fresh)
                + ") it fingerprints every weight on both sides, as a first comparison of new weights "
                "does. The targets are for warm calls, as the bare work is measured warm: its own first "
                f"call, jit compile included, takes {d['first_call_s']['bare']:.2f} s."
                if fresh
                else ""
            )
        ),
    ]
    first = d["first_call_s"]
    out += [
        "",
        "First (cold) calls, seconds: " + ", ".join(f"{k}: {v}" for k, v in first.items()) + ".",
        "",
        f"Environment: {_env(d)}.",
        "",
    ]
    return out


def deep_section(d: dict) -> list[str]:
    m = d["model"]
    ok = d["per_call_ms"] <= d["target_per_call_ms"]
    out = [
        "## Fixed cost per aligned call (a deep narrow model)",
        "",
        f"`{d['command']}` — {m['num_hidden_layers']}-layer d={m['hidden_size']} Llama pair, "
        f"{m['num_attention_heads']} heads, vocab {m['vocab_size']}, seq {m['seq']}, fp32, CPU, torch at "
        f"{d.get('torch_threads', '?')} thread(s); `compare(local=False, diagnose=False)`, {d['aligned_calls']} "
        f"aligned calls. The forward is so cheap that nearly all of compare's time is per-call work. "
        f"Warm, interleaved, median of {d['repeats']}.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| bare work (torch forward + jitted Flax forward + diff) | {d['median_s']['bare'] * 1e3:.1f} ms |",
        f"| `compare(local=False)` | {d['median_s']['compare'] * 1e3:.1f} ms |",
        f"| per aligned call: (compare - bare) / calls | **{d['per_call_ms']:.3f} ms** "
        f"(target <= {d['target_per_call_ms']}{'' if ok else ', not met'}) |",
        "",
        "| stage | ms |",
        "|---|---:|",
    ]
    out += [f"| {k} | {v * 1e3:.1f} |" for k, v in d["stages_s"].items()]
    out += ["", f"Environment: {_env(d)}.", ""]
    return out


def ab_section(ds: list[dict]) -> list[str]:
    out = [
        "## This version against an earlier one",
        "",
        "Both versions in one process on the same models, warm, alternating call by call, so the ratio "
        "between them holds while the shared machine's load moves absolute times (torch on one thread).",
        "",
        "| command | configuration | base (s) | new (s) | new / base | base per call (ms) | new per call (ms) | "
        "ratio to bare: base / new |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in ds:
        for k, r in d["new_over_base"].items():
            b, n = f"base {k}", f"new {k}"
            out.append(
                f"| `{d['command']}` | `compare({k})` | {d['median_s'][b]:.3f} | {d['median_s'][n]:.3f} | {r:.2f} | "
                f"{d['per_call_ms'][b]:.3f} | {d['per_call_ms'][n]:.3f} | "
                f"{d['ratio_to_bare'][b]:.2f} / {d['ratio_to_bare'][n]:.2f} |"
            )
    bare = ", ".join(f"{d['pair']}: {d['median_s']['bare']:.3f} s" for d in ds)
    out += ["", f"Bare work (median): {bare}.", ""]
    if ds:
        out += [f"Environment: {_env(ds[-1])}.", ""]
    return out


def gpu_section(ds: list[dict]) -> list[str]:
    out = ["## On a GPU", ""]
    if not ds:
        return out + [
            "`python benchmarks/bench_gpu.py` (the 12-layer pair at seq 128 and the 1.1B at seq 2048 on one CUDA "
            "GPU, writing `results/gpu_*.json`) has not been run on a GPU yet; on a machine without one it "
            "skips (or, with `--cpu-smoke`, runs its code path on a 2-layer model on the CPU, values kept as "
            "torch tensors and JAX arrays as on a GPU). Each result records, per configuration, what one "
            "comparison copied to host memory (`host_moves`: zero values for a clean pair on the device path) "
            "and the stage table.",
            "",
        ]
    for d in ds:
        dev = d.get("device", {})
        out += [
            f"`{d['command']}` — {d['row']}, {dev.get('torch_device_name')} / {dev.get('jax_device_kind')}; "
            f"median of {d['repeats']}.",
            "",
            "| configuration | median (s) | ratio to bare |",
            "|---|---:|---:|",
            f"| bare work | {d['median_s']['bare']:.3f} | 1.00 |",
        ]
        out += [f"| `compare({k})` | {d['median_s'][k]:.3f} | {r:.2f} |" for k, r in d["ratio_to_bare"].items()]
        for k, mv in d.get("host_moves", {}).items():
            out += [f"Host copies in `compare({k})`: {mv['host_values']} values, {mv['host_bytes'] / 2**20:.1f} MiB."]
        for k, st in d["stages_s"].items():
            out += ["", f"Stages of `compare({k})` (s):", "", "| stage | s |", "|---|---:|"]
            out += [f"| {name} | {v:.3f} |" for name, v in st.items()]
        out += ["", f"Environment: {_env(d)}.", ""]
    return out


def peers_section(d: dict) -> list[str]:
    out = [
        "## PyTorch-side capture against peers",
        "",
        f"`{d['command']}` — the same 12-layer Llama, seq {d['model']['seq']}; each tool in its own process, "
        f"warm, median of {d['repeats']}; extra peak RSS over the models and warm bare forwards. "
        "The peers are not project dependencies: `pip install --no-deps torchlens==2.36.1 && pip install graphviz "
        "pillow` (with `--no-deps` so torch stays at the pinned CPU build).",
        "",
        "| tool | what it records | ratio to bare forward | time vs xfdiff | extra peak RSS (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    what = {
        "xfdiff": "inputs + outputs of every module call (numpy)",
        "torchlens": "output of every tensor operation",
        "hf_debugger_full": "every module's tensors to safetensors + JSON",
        "hf_debugger_default": "tensor reprs, first/last layer",
    }
    for name, s in d["summary"].items():
        out.append(
            f"| {name} | {what.get(name, '')} | {s['ratio_to_bare']:.2f} | {s['time_vs_xfdiff']:.2f} | "
            f"{s['extra_peak_rss_mib']} |"
        )
    out += ["", f"Environment: {_env(d)}.", ""]
    return out


def memory_section(d: dict) -> list[str]:
    out = [
        "## Peak memory against the bare work",
        "",
        f"`{d['command']}` — the same pair, each variant in a fresh process; peak RSS (`ru_maxrss`) and the "
        "part above the models plus one warm bare forward.",
        "",
        "| variant | peak RSS (GiB) | ratio to bare | extra (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for k, r in d["runs"].items():
        out.append(f"| `{k}` | {r['peak_rss_gib']:.2f} | {d['peak_ratio_to_bare'][k]:.2f} | {d['extra_mib'][k]} |")
    out += ["", f"Environment: {_env(d)}.", ""]
    return out


def big_section(d: dict) -> list[str]:
    m = d["model"]
    sp = d["spilled"]
    out = [
        "## A 1.1B-parameter Llama in bounded memory",
        "",
        f"`{d['command']}` — {m['parameters'] / 1e9:.2f}B parameters ({m['num_hidden_layers']} layers, "
        f"d={m['hidden_size']}, {m['num_attention_heads']} heads, {m['num_key_value_heads']} key/value heads), "
        f'fp32, seq {m["seq"]}, `compare(..., memory="bounded")` with teacher forcing and diagnosis.',
        "",
        "| measure | value |",
        "|---|---:|",
        f"| peak RSS of the process (models included) | **{d['peak_rss_gib']} GiB** (target <= {d['target_peak_rss_gib']}) |",
        f"| RSS with both models loaded, before compare | {d['rss_gib_models_loaded']} GiB |",
        f"| reference activations (inputs + outputs of every call) | {d['reference_activations_gib']} GiB, spilled |",
        f"| full-mode estimate (models + both sides' activations) | {d['full_mode_estimate_gib']} GiB |",
        f"| port data kept for the detectors (flagged calls) | {sp['port_bytes_spilled'] / 2**30:.1f} GiB on disk |",
        f"| compare() wall time | {d['compare_s']} s |",
        f"| rows / final status | {d['rows']} / {d['final']['status']} (max_abs {d['final']['max_abs']:.1e}) |",
    ]
    stages = next((v for k, v in d.items() if k.startswith("stages")), None)
    if stages:
        out += ["", "| stage starts at (s) | RSS then (GiB) | stage |", "|---:|---:|---|"]
        out += [f"| {t} | {rss} | {name} |" for name, t, rss in stages]
    out += ["", f"Environment: {_env(d)}.", ""]
    return out


def render_section(d: dict) -> list[str]:
    dash, html = d.get("dashboard", {}), d.get("html", {})
    out = [
        "## Rendering a 1,000-call report",
        "",
        "`python benchmarks/bench_render.py` (results in `results/render.json`):",
        "",
        "| view | first view (ms, median) | layer detail (ms, median) |",
        "|---|---:|---:|",
    ]
    for name, v in (("dashboard", dash), ("static HTML", html)):
        if "first_view_ms" in v:
            out.append(
                f"| {name} | {v['first_view_ms']['median']} | {v.get('layer_detail_ms', {}).get('median', '')} |"
            )
    return out + [""]


def main() -> int:
    lines = [
        "# Benchmarks",
        "",
        "Scripts, not tests: each writes a JSON file to `benchmarks/results/`; this page is generated from "
        "those files by `python benchmarks/make_readme.py`. Timings come from a shared 2-core machine and "
        "move by 10-30% between runs; ratios are measured side by side in one process.",
        "",
    ]
    for name, section in (
        ("compare_llama12.json", compare_section),
        ("deep_llama48.json", deep_section),
        ("peers_llama12.json", peers_section),
        ("memory_llama12.json", memory_section),
        ("llama_1b.json", big_section),
        ("render.json", render_section),
    ):
        d = _load(name)
        if d is not None:
            lines += section(d)
    ab = [d for d in (_load(n) for n in ("ab_deep.json", "ab_llama12.json")) if d is not None]
    if ab:
        lines += ab_section(ab)
    lines += gpu_section([d for d in (_load(n) for n in ("gpu_llama12.json", "gpu_llama_1b.json")) if d is not None])
    (HERE / "README.md").write_text("\n".join(lines))
    print("wrote", HERE / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
