"""One orchestration: memory="bounded" and memory="full" give the same report on the same pair.

Bounded mode spills the reference and, for a linen port, compares the port call by
call as it runs eagerly; NNX and tap ports are captured whole with only the reference
spilled; a Flax reference is spilled as it runs. Every row, the first divergence, the
final output and the findings must come out the same as in full mode.
"""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
nnx = pytest.importorskip("flax.nnx")

from fault_models import pair as fault_pair  # noqa: E402
from reach_models import (  # noqa: E402
    NnxLM,
    TorchLM,
    cnn_pair,
    lm_pair,
    lm_params,
    randomize,
    tap_forward,
    token_ids,
    torch_from_nnx,
)
from toy_models import pair as toy_pair  # noqa: E402

import xfdiff  # noqa: E402
import xfdiff.streaming as streaming  # noqa: E402


def linen_bug():
    pt, port, x = toy_pair(tanh_gelu_in=1)
    return (pt, port, x), {}


def linen_cnn_flipped_kernel():
    pt, port, x, x_nhwc = cnn_pair(flip_conv=True)
    return (pt, port, x), {"flax_inputs": x_nhwc}


def linen_nan():
    pt, port, x = fault_pair(nan_in="flax")
    return (pt, port, 3 * x), {}


def nnx_clean():
    return lm_pair(), {}


def nnx_bug():
    return lm_pair(bugs={1: {"eps": 1e-2}}), {}


def taps_bug():
    pt = randomize(TorchLM())
    return (pt, (functools.partial(tap_forward, bug_layer=1), lm_params(pt)), token_ids()), {}


def nnx_reference_torch_port_bug():
    ref = NnxLM(nnx.Rngs(3))
    return (torch_from_nnx(ref, {0: {"approximate": "tanh"}}), ref, token_ids(1)), {"reference": "flax"}


def linen_reference_torch_port_bug():
    pt, port, x = toy_pair(tanh_gelu_in=1)
    return (pt, port, x), {"reference": "flax"}


PAIRS = [
    linen_bug,
    linen_cnn_flipped_kernel,
    linen_nan,
    nnx_clean,
    nnx_bug,
    taps_bug,
    nnx_reference_torch_port_bug,
    linen_reference_torch_port_bug,
]


def _same_layer(a, b) -> None:
    assert (a.torch_path, a.flax_path, a.call_index) == (b.torch_path, b.flax_path, b.call_index)
    assert (a.status, a.local_status, a.layout, a.match) == (b.status, b.local_status, b.layout, b.match), a.label
    # bounded mode may run the port eagerly: float noise differs, errors agree
    for f in ("max_abs", "local_max_abs", "input_max_abs"):
        va, vb = getattr(a, f), getattr(b, f)
        assert (va is None) == (vb is None), (a.label, f)
        if va is not None:
            assert vb == pytest.approx(va, rel=0.05, abs=1e-6), (a.label, f)
    assert (a.blame_order is None) == (b.blame_order is None), a.label
    assert set(a.detail) == set(b.detail), a.label


@pytest.mark.parametrize("make", PAIRS, ids=lambda f: f.__name__)
def test_bounded_and_full_memory_give_the_same_report(make, monkeypatch):
    monkeypatch.setattr(streaming, "SMALL_BYTES", 0)  # spill every array, however small
    (pt, port, x), kw = make()
    full = xfdiff.compare(pt, port, x, **kw)
    bounded = xfdiff.compare(pt, port, x, memory="bounded", **kw)
    assert "memory" not in full.meta and bounded.meta["memory"]["mode"] == "bounded"
    assert bounded.meta["memory"]["reference_bytes_spilled"] > 0
    assert [lyr.label for lyr in bounded.layers] == [lyr.label for lyr in full.layers]
    assert len(full.layers) > 3
    for a, b in zip(full.layers, bounded.layers, strict=True):
        _same_layer(a, b)
    _same_layer(full.final, bounded.final)
    fd_a, fd_b = full.first_divergence, bounded.first_divergence
    assert (fd_a and fd_a.label) == (fd_b and fd_b.label)
    assert full.diverged == bounded.diverged
    assert [(f.pitfall, f.torch_path) for f in bounded.findings] == [(f.pitfall, f.torch_path) for f in full.findings]
    # the models are left as found: no hooks, nothing patched
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in pt.modules())


def test_the_pairs_cover_what_they_claim(monkeypatch):
    """The pairs above differ where they should, so the equality test compares real findings."""
    (pt, port, x), kw = linen_bug()
    assert xfdiff.compare(pt, port, x, memory="bounded", **kw).first_divergence.torch_path == "blocks.1"
    (pt, port, x), kw = nnx_reference_torch_port_bug()
    r = xfdiff.compare(pt, port, x, memory="bounded", **kw)
    assert r.first_divergence.flax_path == "layers.0.ffn.activation"
    assert "held in memory" in " ".join(r.meta["memory"]["notes"])  # an NNX reference cannot be streamed
    (pt, port, x), kw = taps_bug()
    r = xfdiff.compare(pt, port, x, memory="bounded", diagnose=False, **kw)
    assert r.first_divergence.torch_path == "blocks.1.mlp"
    assert "captured whole" in " ".join(r.meta["memory"]["notes"])


def test_compare_shows_its_real_signature():
    params = inspect.signature(xfdiff.compare).parameters
    assert list(params)[:3] == ["pt_model", "flax_model", "inputs"]
    keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"flax_inputs", "reference", "tolerance", "mapping", "local", "diagnose", "jit", "memory"} <= keywords
    assert params["reference"].default == "torch" and params["memory"].default == "full"
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_importing_the_pipeline_loads_no_framework():
    code = (
        "import sys, xfdiff, xfdiff.engine, xfdiff.runs, xfdiff.streaming, xfdiff.localize, xfdiff.rows; "
        "print(sorted(m for m in ('torch','jax','flax','dash','plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
