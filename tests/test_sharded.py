"""Sharded JAX activations are reduced where they live, never gathered into one host array.

JAX fixes its device count when it starts, so the checks run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and report back as JSON.
"""

from __future__ import annotations

import dataclasses
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
    r"""
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import jax, numpy as np, torch
    import flax.linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jax._src.array import ArrayImpl

    import xfdiff
    from xfdiff.stats import Stats, _jax, compare_arrays, error_detail, stats_and_detail

    out = {"devices": len(jax.devices())}
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    act = NamedSharding(mesh, P("data", None, "model"))

    # 1. the fused statistics of a sharded array equal the numpy reference
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 16, 64)).astype(np.float32)
    port_host = ref + rng.standard_normal(ref.shape).astype(np.float32) * 1e-4
    port_host[3, 2, 1] = np.nan
    port = jax.device_put(port_host, act)
    s, det = stats_and_detail(ref, port, 1e-5, 1e-5, detail=True)
    s0, det0 = compare_arrays(ref, port_host, 1e-5, 1e-5), error_detail(ref, port_host)
    out["stats"] = [[getattr(s, k), getattr(s0, k)] for k in ("max_abs", "mean_abs", "rel_l2", "frac_outside",
                                                             "n_nonfinite", "nonfinite_mismatch")]
    out["worst_same"] = sorted(det["worst_index"].tolist()) == sorted(det0["worst_index"].tolist())
    out["detail_keys_same"] = set(det) == set(det0)

    # 2. what XLA compiled for the statistics: per-shard inputs, an all-reduce, no all-gather
    kernel = _jax._kernels()[0]
    r2, p2 = ref.reshape(128, 64), port.reshape(128, 64)  # (rows, channels), as the JAX backend views them
    row_bins = (np.arange(128) // 4).astype(np.int32)
    hlo = kernel.lower(r2, p2, np.float32(1e-5), np.float32(1e-5), row_bins, detail=False,
                       n_row_bins=32).compile().as_text()
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
    """
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    script = Path(tmp_path_factory.mktemp("sharded")) / "sharded.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parent
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, proc.stderr[-4000:]
    return json.loads(line[len("RESULT") :])


def test_the_subprocess_sees_eight_devices(result):
    assert result["devices"] == 8


def test_statistics_of_a_sharded_array_match_numpy(result):
    for ours, reference in result["stats"]:
        assert ours == pytest.approx(reference, rel=1e-4, abs=1e-9)
    assert result["worst_same"] and result["detail_keys_same"]


def test_statistics_are_reduced_per_shard_and_combined_by_an_all_reduce(result):
    # (8 * 16, 64) split 2 ways on rows and 4 ways on channels: each device holds (64, 16)
    assert "f32[64,16]" in result["param_shapes"] and "f32[128,64]" not in result["param_shapes"]
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


@pytest.mark.parametrize("shape", [(3, 70, 50), (4000,), (40, 33), (2, 1, 9000)])
def test_fused_statistics_in_row_blocks_equal_the_numpy_reference(shape, monkeypatch):
    """The fused path, cut into blocks of rows, gives stats.compare_arrays / error_detail's numbers."""
    import numpy as np

    from xfdiff.stats import _jax, common, compare_arrays, error_detail

    monkeypatch.setattr(common, "BLOCK", 1000)
    rng = np.random.default_rng(3)
    r = rng.standard_normal(shape).astype(np.float32)
    scale = 10.0 ** rng.integers(-8, -2, shape)
    p = (r + rng.standard_normal(shape) * scale).astype(np.float32)
    p.flat[11], p.flat[20], r.flat[30], p.flat[30] = r.flat[11], np.nan, np.inf, np.inf
    ours, det = _jax.compare_fused(r, p, 1e-5, 1e-5)
    ref, ref_det = compare_arrays(r, p, 1e-5, 1e-5), error_detail(r, p)
    for k in (f.name for f in dataclasses.fields(common.Stats)):
        assert getattr(ours, k) == pytest.approx(getattr(ref, k), rel=1e-5), k
    assert set(det) == set(ref_det)
    for k, want in ref_det.items():
        got = det[k]
        if k.startswith("worst"):  # ties among non-finite errors may come in another order
            got, want = np.sort(got), np.sort(want)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=k)
    n, s1, s2, lo, hi = _jax.fingerprint_fused(np.nan_to_num(r, posinf=0.0))
    finite = np.nan_to_num(r, posinf=0.0).astype(np.float64)
    assert (n, lo, hi) == (r.size, finite.min(), finite.max())
    assert s1 == pytest.approx(finite.sum(), rel=1e-5, abs=1e-3) and s2 == pytest.approx((finite**2).sum(), rel=1e-5)
