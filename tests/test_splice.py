"""Splice confirmation: each culprit's share of the final error, and whether fixing it suffices."""

from __future__ import annotations

import numpy as np
import pytest
from splice_models import boundary_pair, pair

import xfdiff

TWO_BUGS = {1: {"act": "tanh"}, 3: {"eps": 5e-4}}


@pytest.fixture(scope="module")
def two_bugs():
    pt, fx, x = pair(TWO_BUGS)
    return xfdiff.compare(pt, fx, x)


@pytest.fixture(scope="module")
def second_only():
    pt, fx, x = pair({3: TWO_BUGS[3]})
    return xfdiff.compare(pt, fx, x)


def test_two_independent_bugs_are_both_sites_with_their_shares(two_bugs):
    r = two_bugs
    assert r.splice is not None, r.summary()
    assert r.splice["sites"] == ["blocks.1.act", "blocks.3.ln"]
    act, ln = r.layer("blocks.1.act"), r.layer("blocks.3.ln")
    # each accounts for a real part of the final error, neither for all of it
    assert 0.2 < act.splice_share < 0.8 and 0.4 < ln.splice_share < 0.95
    assert ln.splice_final_after < r.final.max_abs  # max errors need not add up; the shares (squared L2) do
    assert not r.splice["first_suffices"]
    assert r.splice["sufficient_set"] == ["blocks.1.act", "blocks.3.ln"]
    assert r.splice["set_final_after"] < 1e-5
    # the findings carry the shares, and the suggested fixes remove about as much as the splices
    by_id = {f.pitfall: f for f in r.findings}
    assert by_id["gelu_approximate"].splice_share == act.splice_share
    assert by_id["gelu_approximate"].fix_share == pytest.approx(act.splice_share, abs=0.02)
    assert by_id["norm_epsilon"].fix_share == pytest.approx(ln.splice_share, abs=0.05)
    text = r.summary()
    assert "SPLICE" in text and "fixing the first is not enough" in text and "blocks.3.ln" in text


def test_fixing_only_the_first_leaves_the_seconds_error(two_bugs, second_only):
    # Splicing the first site leaves exactly what a port with only the second bug gets wrong.
    act = two_bugs.layer("blocks.1.act")
    assert act.splice_final_after == pytest.approx(second_only.final.max_abs, rel=0.02)
    assert second_only.splice["first_suffices"] and second_only.splice["sites"] == ["blocks.3.ln"]
    assert second_only.layer("blocks.3.ln").splice_share > 0.999
    # and the second's share in the two-bug port is what is left once the first is fixed
    left = 1 - act.splice_share
    assert two_bugs.layer("blocks.3.ln").splice_share == pytest.approx(left, abs=0.15)


def test_single_bug_first_divergence_accounts_for_all_of_it():
    pt, fx, x = pair({1: {"act": "tanh"}})
    r = xfdiff.compare(pt, fx, x)
    assert r.first_divergence.label == "blocks.1.act"
    assert r.splice["first_suffices"] and r.layer("blocks.1.act").splice_share > 0.99
    assert r.findings[0].fix_share > 0.99
    assert "fixing blocks.1.act alone brings the final output within tolerance" in r.summary()


def test_boundary_difference_has_a_share_of_about_zero():
    pt, fx, x = boundary_pair()
    r = xfdiff.compare(pt, fx, x)
    fc1, ln = r.layer("blocks.0.fc1"), r.layer("blocks.3.ln")
    assert fc1.local_max_abs > 1e-2  # the bias is applied by the block, not the Dense
    # a boundary note, never a splice site of its own (or, spliced, a share of about zero)
    assert fc1.splice_share is None or abs(fc1.splice_share) < 0.02
    assert any(b.get("label") == "blocks.0.fc1" for b in r.boundaries)
    assert ln.splice_share > 0.99
    assert r.splice["sufficient_set"] == ["blocks.3.ln"]


def test_no_splice_runs_when_the_final_output_matches():
    pt, fx, x = pair()
    r = xfdiff.compare(pt, fx, x)
    assert r.splice is None and all(lyr.splice_share is None for lyr in r.layers)


def test_torch_port_output_substitution_with_flax_reference():
    # reference="flax": the PyTorch model is the port, spliced through its forward hooks
    pt, fx, x = pair({2: {"eps": 1e-2}})
    r = xfdiff.compare(pt, fx, x, reference="flax")
    assert r.splice is not None and r.splice["sites"] == ["blocks.2.ln"]
    assert r.layer("blocks.2.ln").splice_share > 0.99 and r.splice["first_suffices"]
    assert all(not h for m in pt.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_splice_fields_survive_save_and_load(two_bugs, tmp_path):
    r2 = xfdiff.load(two_bugs.save(tmp_path / "r.xfd"))
    assert r2.splice == two_bugs.splice
    assert r2.layer("blocks.3.ln").splice_share == two_bugs.layer("blocks.3.ln").splice_share
    assert [f.fix_share for f in r2.findings] == [f.fix_share for f in two_bugs.findings]
    df = r2.to_dataframe()
    assert {"splice_share", "splice_final_after", "fix_share"} <= set(df.columns)
    assert np.isclose(
        df.set_index("torch_path").loc["blocks.1.act", "splice_share"], r2.layer("blocks.1.act").splice_share
    )


def test_old_reports_without_splice_fields_still_load(two_bugs, tmp_path):
    import json
    import zipfile

    path = two_bugs.save(tmp_path / "r.xfd")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        blobs = {n: z.read(n) for n in names}
    doc_name = next(n for n in names if n.endswith(".json"))
    doc = json.loads(blobs[doc_name])
    for row in doc["layers"]:
        for k in ("splice_final_after", "splice_share", "fix_share"):
            row.pop(k, None)
    for f in doc["findings"]:
        for k in ("splice_share", "fix_share", "fix_final_after"):
            f.pop(k, None)
    doc["meta"].pop("splice", None)
    blobs[doc_name] = json.dumps(doc).encode()
    old = tmp_path / "old.xfd"
    with zipfile.ZipFile(old, "w") as z:
        for n in names:
            z.writestr(n, blobs[n])
    r = xfdiff.load(old)
    assert r.splice is None and r.layer("blocks.1.act").splice_share is None
    assert r.findings and r.findings[0].fix_share is None
    assert "SPLICE" not in r.summary()


def test_nnx_port_is_spliced_too():
    from reach_models import lm_pair

    pt, port, ids = lm_pair(bugs={0: {"approximate": True}, 1: {"eps": 1e-2}})
    r = xfdiff.compare(pt, port, ids)
    assert r.meta["flax_framework"] == "nnx"
    assert r.splice is not None and r.splice["sites"][:2] == ["blocks.0.mlp.act", "blocks.1.ln1"], r.summary()
    act, ln = r.layer("blocks.0.mlp.act"), r.layer("blocks.1.ln1")
    assert 0 < act.splice_share < 1 and 0 < ln.splice_share < 1
    assert r.splice["sufficient_set"] is not None and {"blocks.0.mlp.act", "blocks.1.ln1"} <= set(
        r.splice["sufficient_set"]
    )
