"""Sharded JAX activations are reduced where they live, never gathered into one host array.

JAX fixes its device count when it starts, so the checks run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and report back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("flax")

SCRIPT = textwrap.dedent(
    r'''
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import jax, numpy as np, torch
    import flax.linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jax._src.array import ArrayImpl

    import xfdiff
    from xfdiff import fastmetrics
    from xfdiff.metrics import compare_arrays, error_detail

    out = {"devices": len(jax.devices())}
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    act = NamedSharding(mesh, P("data", None, "model"))

    # 1. the fused statistics of a sharded array equal the numpy reference
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 16, 64)).astype(np.float32)
    port_host = ref + rng.standard_normal(ref.shape).astype(np.float32) * 1e-4
    port_host[3, 2, 1] = np.nan
    port = jax.device_put(port_host, act)
    s, det = fastmetrics.compare_fast(ref, port, 1e-5, 1e-5)
    s0, det0 = compare_arrays(ref, port_host, 1e-5, 1e-5), error_detail(ref, port_host)
    out["stats"] = [[getattr(s, k), getattr(s0, k)] for k in ("max_abs", "mean_abs", "rel_l2", "frac_outside",
                                                             "n_nonfinite", "nonfinite_mismatch")]
    out["worst_same"] = sorted(det["worst_index"].tolist()) == sorted(det0["worst_index"].tolist())
    out["detail_keys_same"] = set(det) == set(det0)

    # 2. what XLA compiled for the statistics: per-shard inputs, an all-reduce, no all-gather
    kernel = fastmetrics._kernels()[0]
    hlo = kernel.lower(ref, port, np.float32(1e-5), np.float32(1e-5), detail=False).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    out["param_shapes"] = sorted({l.split("=")[1].split("{")[0].strip() for l in entry.splitlines() if " parameter(" in l})
    out["all_reduce"], out["all_gather"] = "all-reduce" in hlo, "all-gather" in hlo

    # 3. bounded compare of a sharded linen port against a PyTorch reference
    class TMlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)

        def forward(self, x):
            return self.down(torch.nn.functional.gelu(self.up(x)))

    class FMlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(64, name="down")(nn.gelu(nn.Dense(128, name="up")(x), approximate=False))

    torch.manual_seed(0)
    pt = TMlp().eval()
    lin = lambda m: {"kernel": m.weight.detach().numpy().T.copy(), "bias": m.bias.detach().numpy().copy()}
    params = {"params": {"up": lin(pt.up), "down": lin(pt.down)}}
    specs = {"params": {"up": {"kernel": P(None, "model"), "bias": P("model")},
                        "down": {"kernel": P("model", None), "bias": P()}}}
    sharded = jax.tree_util.tree_map(lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec)), params, specs)
    x = rng.standard_normal((8, 16, 64)).astype(np.float32)
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data", None, None)))

    gathered = []
    orig = ArrayImpl.__array__

    def spy(self, *a, **k):
        if len(self.sharding.device_set) > 1 and self.ndim == 3:
            gathered.append(list(self.shape))
        return orig(self, *a, **k)

    ArrayImpl.__array__ = spy
    try:
        report = xfdiff.compare(pt, (FMlp(), sharded), x, flax_inputs=x_sharded, memory="bounded")
    finally:
        ArrayImpl.__array__ = orig
    out["clean"] = {"statuses": [l.status for l in report.layers], "final": report.final.status,
                    "first": report.first_divergence and report.first_divergence.label,
                    "sharded_values": report.meta["memory"]["sharded_values"], "gathered": list(gathered)}
    full = xfdiff.compare(pt, (FMlp(), params), x)
    out["clean"]["same_as_unsharded"] = [l.label for l in full.layers] == [l.label for l in report.layers] and all(
        abs(a.max_abs - b.max_abs) <= 1e-6 for a, b in zip(full.layers, report.layers))

    # 4. a bug in the sharded port is found where it is
    broken = jax.tree_util.tree_map(lambda a: a, sharded)
    broken["params"]["down"]["bias"] = broken["params"]["down"]["bias"] + 0.1
    gathered.clear()
    ArrayImpl.__array__ = spy
    try:
        report = xfdiff.compare(pt, (FMlp(), broken), x, flax_inputs=x_sharded, memory="bounded", diagnose=False)
    finally:
        ArrayImpl.__array__ = orig
    out["broken_first"] = report.first_divergence and report.first_divergence.label
    out["broken_gathered"] = len(gathered)  # flagged rows are kept for the detectors: the spy sees them
    print("RESULT" + json.dumps(out))
    '''
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    script = Path(tmp_path_factory.mktemp("sharded")) / "sharded.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).parent)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, proc.stderr[-4000:]
    return json.loads(line[len("RESULT"):])


def test_the_subprocess_sees_eight_devices(result):
    assert result["devices"] == 8


def test_statistics_of_a_sharded_array_match_numpy(result):
    for ours, reference in result["stats"]:
        assert ours == pytest.approx(reference, rel=1e-4, abs=1e-9)
    assert result["worst_same"] and result["detail_keys_same"]


def test_statistics_are_reduced_per_shard_and_combined_by_an_all_reduce(result):
    # (8, 16, 64) split 2 ways on rows and 4 ways on channels: each device holds (4, 16, 16)
    assert "f32[4,16,16]" in result["param_shapes"] and "f32[8,16,64]" not in result["param_shapes"]
    assert result["all_reduce"] and not result["all_gather"]


def test_bounded_compare_of_a_sharded_port_never_gathers_an_activation(result):
    clean = result["clean"]
    assert clean["final"] == "ok" and clean["first"] is None
    assert set(clean["statuses"]) == {"ok"}
    assert clean["sharded_values"] > 0
    assert clean["gathered"] == []
    assert clean["same_as_unsharded"]


def test_a_bug_in_a_sharded_port_is_found_at_its_layer(result):
    assert result["broken_first"] == "down"
    assert result["broken_gathered"] > 0  # only flagged rows are brought to the host
