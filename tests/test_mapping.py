"""Explicit ``mapping=`` (dict, regex rules, files) and exporting the alignment found."""

from __future__ import annotations

import json

import pytest
from reach_models import lm_pair

import xfdiff
from xfdiff.errors import MappingError
from xfdiff.mapping import load_mapping, save_mapping

FAST = {"local": False, "diagnose": False}


@pytest.fixture(scope="module")
def lm():
    return lm_pair()


@pytest.fixture(scope="module")
def found(lm):
    pt, port, ids = lm
    return xfdiff.compare(pt, port, ids, **FAST)


def test_dict_and_regex_rules_pin_pairs(lm):
    pt, port, ids = lm
    rules = {r"re:blocks\.(\d+)\.mlp\.fc1": r"layers.\1.ffn.up", "ln_f": "final_norm"}
    r = xfdiff.compare(pt, port, ids, mapping=rules, **FAST)
    pinned = {(lyr.torch_path, lyr.flax_path) for lyr in r.layers if lyr.match == "mapping"}
    assert pinned == {
        ("blocks.0.mlp.fc1", "layers.0.ffn.up"),
        ("blocks.1.mlp.fc1", "layers.1.ffn.up"),
        ("ln_f", "final_norm"),
    }
    assert all(lyr.confidence == 1.0 for lyr in r.layers if lyr.match == "mapping")
    assert r.layer("blocks.0.mlp.fc2").flax_path == "layers.0.ffn.down"  # the rest is still found


def test_mapping_overrides_what_fingerprints_would_pair(lm):
    pt, port, ids = lm
    r = xfdiff.compare(
        pt, port, ids, mapping={"blocks.0.ln1": "layers.0.norm2", "blocks.0.ln2": "layers.0.norm1"}, **FAST
    )
    assert r.layer("blocks.0.ln1").flax_path == "layers.0.norm2"
    assert r.layer("blocks.0.ln1").status == "diverged"  # the user's (wrong) pairing is measured as given


def test_saved_alignment_is_an_editable_file_that_mapping_accepts(found, lm, tmp_path):
    path = found.save_mapping(tmp_path / "port.json")
    doc = json.loads((tmp_path / "port.json").read_text())
    assert doc["pairs"]["blocks.1.attn.q_proj"] == "layers.1.attention.query"
    assert doc["found_by"]["blocks.1.attn.q_proj"].startswith("fingerprint (transpose+reshape), confidence")
    assert "" not in doc["pairs"]
    pt, port, ids = lm
    again = xfdiff.compare(pt, port, ids, mapping=path, **FAST)
    assert {lyr.match for lyr in again.layers} == {"mapping", "root"}
    assert [(a.torch_path, a.flax_path) for a in again.layers] == [(a.torch_path, a.flax_path) for a in found.layers]


def test_save_mapping_accepts_a_plain_dict(tmp_path):
    save_mapping({"fc1": "up"}, tmp_path / "m.json")
    assert load_mapping(tmp_path / "m.json") == {"fc1": "up"}


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"ln_f": "final_nrom"}, "Did you mean 'final_norm'"),
        ({"ln_g": "final_norm"}, "Did you mean 'ln_f'"),
        ({"re:blocks\\.(\\d+": "x"}, "not a valid regular expression"),
        ({r"re:blocks\.(\d+)\.mlp\.fc1": r"layers.\1.mlp.fc1"}, "matched no pair"),
        (["ln_f"], "must be a dict"),
    ],
)
def test_bad_mappings_name_the_problem(lm, mapping, message):
    pt, port, ids = lm
    with pytest.raises(MappingError, match=message):
        xfdiff.compare(pt, port, ids, mapping=mapping, **FAST)


def test_bad_mapping_files_name_the_problem(tmp_path):
    with pytest.raises(MappingError, match="does not exist"):
        load_mapping(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MappingError, match="not valid JSON"):
        load_mapping(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text('{"pairs": ["a", "b"]}')
    with pytest.raises(MappingError, match="torch path -> flax path"):
        load_mapping(tmp_path / "list.json")
