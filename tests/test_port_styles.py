"""Fused projections against separate ones, in both directions (see ``port_styles.py`` for the pairs)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import port_styles as ps
import pytest

import xfdiff
from xfdiff.fused import _match_group


@functools.cache
def _report(name: str, bug: bool, reference: str = "torch") -> xfdiff.Report:
    pt, port, x = getattr(ps, name)(bug)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xfdiff.compare(pt, port, x, progress=False, reference=reference)


@pytest.mark.parametrize("reference", ["torch", "flax"])
@pytest.mark.parametrize("name", ["merged_qkv_pair", "kv_fused_pair"])
def test_a_correct_port_with_fused_projections_matches_with_every_module_compared(name, reference):
    r = _report(name, False, reference)
    assert r.verdict == "match" and r.findings == [] and r.first_divergence is None, r.summary()
    assert [u.path for u in r.unmatched if u.has_params] == []
    assert r.coverage["modules"] == 1.0
    k = 3 if name == "merged_qkv_pair" else 2
    assert [len(g["parts"]) for g in r.meta["fused"]] == [k] * ps.LAYERS
    assert all(g["kind"] == "merged" for g in r.meta["fused"])  # torch holds the separate modules


def test_a_missing_attention_scale_is_named_with_a_fused_port_projection():
    r = _report("merged_qkv_pair", True)
    assert (r.first_divergence.torch_path, r.first_divergence.flax_path) == ("layers.1.attn", "block1.attn")
    assert [(f.pitfall, f.torch_path) for f in r.findings] == [("attention_scale", "layers.1.attn")]


def test_a_bug_outside_the_attention_is_found_with_k_and_v_fused():
    r = _report("kv_fused_pair", True)
    assert r.first_divergence.torch_path == "layers.1"
    assert [(f.pitfall, f.torch_path) for f in r.findings] == [("gelu_approximate", "layers.1")]


def test_blocks_are_matched_by_their_values_not_their_shapes():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)  # torch (out, in): three blocks of two rows
    fused = {"weight": w, "bias": rng.standard_normal(6).astype(np.float32)}
    parts = {
        f"p{i}": {"kernel": w[2 * i : 2 * i + 2].T.copy(), "bias": fused["bias"][2 * i : 2 * i + 2].copy()}
        for i in (2, 0, 1)
    }
    assert _match_group(fused, parts) == ["p0", "p1", "p2"]
    parts["p1"]["kernel"] = parts["p1"]["kernel"] + 1e-2  # a different weight: no group
    assert _match_group(fused, parts) is None
