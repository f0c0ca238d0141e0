"""benchmarks/bench_gpu.py without a GPU: ``--cpu-smoke`` runs the accelerator's code path (values
kept as torch tensors and JAX arrays) on a 2-layer Hugging Face Llama pair and writes its JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_cpu_smoke_writes_a_clean_verdict_with_nothing_copied_to_the_host(tmp_path, monkeypatch):
    from xfdiff.capture._common import DEVICE_ENV

    monkeypatch.setenv(DEVICE_ENV, "1")  # what --cpu-smoke sets; set here so the test process gets it back
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu
    import jax

    precision = jax.config.jax_default_matmul_precision  # the benchmark sets "highest" for its process
    try:
        assert bench_gpu.main(["--cpu-smoke", "--only", "12", "--repeats", "1", "--out", str(tmp_path)]) == 0
    finally:
        jax.config.update("jax_default_matmul_precision", precision)
        sys.modules.pop("bench_gpu", None)
    d = json.loads((tmp_path / "gpu_llama12.json").read_text())
    assert d["device_path"] == {"torch": True, "jax": True}
    assert d["device"]["torch_device"] == "cpu"
    for k in ("local=False", "local=True"):
        assert d["verdict"][k] == {"first_divergence": None, "n_out_of_tolerance": 0, "findings": []}
        assert d["host_moves"][k]["host_values"] == 0, d["host_moves"]
        assert d["ratio_to_bare"][k] > 0 and d["stages_s"][k]["total"] > 0
    assert set(d["stages_s"]["local=True"]) >= {"torch capture", "rows", "teacher forcing (incl. its capture)"}
