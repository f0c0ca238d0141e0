"""Bounded-memory mode: compare(..., memory="bounded") gives the report the full mode
gives, spills to disk, cleans up, and keeps resident memory down."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("flax")

from fault_models import left_as_found  # noqa: E402
from fault_models import pair as fault_pair  # noqa: E402
from toy_models import pair  # noqa: E402

import xfdiff  # noqa: E402
import xfdiff.streaming as streaming  # noqa: E402
from xfdiff.errors import ConfigError  # noqa: E402
from xfdiff.trace import CallRecord  # noqa: E402


@pytest.fixture
def spill_everything(monkeypatch):
    """Spill every array, however small, so the tiny models exercise the disk path."""
    monkeypatch.setattr(streaming, "SMALL_BYTES", 0)


def assert_same_report(full, bounded):
    assert [lyr.label for lyr in bounded.layers] == [lyr.label for lyr in full.layers]
    for a, b in zip(full.layers, bounded.layers, strict=True):
        assert (a.status, a.local_status, a.layout) == (b.status, b.local_status, b.layout), a.label
        # the port runs eagerly in bounded mode: float noise differs, errors agree
        assert b.max_abs == pytest.approx(a.max_abs, rel=0.05, abs=1e-6), a.label
        assert set(b.detail) == set(a.detail)
    fd_a, fd_b = full.first_divergence, bounded.first_divergence
    assert (fd_a and fd_a.label) == (fd_b and fd_b.label)
    assert [f.pitfall for f in bounded.findings] == [f.pitfall for f in full.findings]
    assert bounded.final.status == full.final.status


def test_bounded_report_matches_the_full_report_on_a_buggy_port(spill_everything):
    pt, port, x = pair(tanh_gelu_in=1)
    full = xfdiff.compare(pt, port, x)
    with left_as_found(pt, port):
        bounded = xfdiff.compare(pt, port, x, memory="bounded")
    assert_same_report(full, bounded)
    assert bounded.first_divergence.torch_path == "blocks.1"
    assert [f.pitfall for f in bounded.findings] == ["gelu_approximate"]
    mem = bounded.meta["memory"]
    assert mem["mode"] == "bounded" and mem["reference_bytes_spilled"] > 0 and mem["port_bytes_spilled"] > 0


def test_bounded_report_matches_on_a_clean_port_without_local_attribution(spill_everything):
    pt, port, x = pair()
    full = xfdiff.compare(pt, port, x, local=False)
    bounded = xfdiff.compare(pt, port, x, local=False, memory="bounded")
    assert_same_report(full, bounded)
    assert bounded.first_divergence is None
    assert bounded.meta["memory"]["port_bytes_spilled"] == 0  # nothing flagged, nothing kept


def test_bounded_mode_flags_nan_where_it_starts(spill_everything):
    pt, port, x = fault_pair(nan_in="flax")
    report = xfdiff.compare(pt, port, 3 * x, memory="bounded", diagnose=False)
    assert report.first_divergence.torch_path == "act" and report.first_divergence.status == "nonfinite"


def test_spill_directory_is_removed(tmp_path, spill_everything):
    pt, port, x = pair(tanh_gelu_in=0)
    report = xfdiff.compare(pt, port, x, memory="bounded", spill_dir=str(tmp_path))
    assert report.meta["memory"]["reference_bytes_spilled"] > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.hf
def test_bounded_mode_on_a_hugging_face_llama_pair(spill_everything):
    from hf_pairs import make_pair

    pt, fx, inputs = make_pair("llama")
    full = xfdiff.compare(pt, fx, inputs)
    bounded = xfdiff.compare(pt, fx, inputs, memory="bounded")
    assert_same_report(full, bounded)
    assert len(bounded.layers) > 20 and bounded.final.status == "ok"


def test_bounded_mode_refuses_an_unknown_memory_setting():
    pt, port, x = pair()
    with pytest.raises(ConfigError, match="memory must be"):
        xfdiff.compare(pt, port, x, memory="tiny")


def test_bounded_mode_takes_an_nnx_port_and_says_the_port_was_held_in_memory(spill_everything):
    nnx = pytest.importorskip("flax.nnx")
    pytest.importorskip("xfdiff.capture.from_nnx")
    pt, _, x = fault_pair()
    report = xfdiff.compare(pt, nnx.Linear(8, 3, rngs=nnx.Rngs(0)), x, memory="bounded")
    assert report.meta["flax_framework"] == "nnx"
    assert any("nnx port cannot run call by call" in n for n in report.meta["memory"]["notes"])


def test_spilled_arrays_round_trip_every_dtype(tmp_path, spill_everything):
    import ml_dtypes

    store = streaming.SpillStore(tmp_path)
    rng = np.random.default_rng(0)
    for a in (
        rng.standard_normal((3, 5)).astype(np.float32),
        np.arange(12).reshape(3, 4),
        rng.standard_normal(7).astype(ml_dtypes.bfloat16),
        np.zeros((0, 3), np.float16),
        np.asfortranarray(rng.standard_normal((4, 6))),
    ):
        back = store.put(a)
        assert back.dtype == a.dtype and back.shape == a.shape
        assert np.array_equal(np.asarray(back, np.float64), np.asarray(a, np.float64))
        assert not back.flags.writeable or back.nbytes == 0


def _rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def test_release_gives_back_the_pages_of_a_spilled_array(tmp_path):
    pytest.importorskip("psutil")
    store = streaming.SpillStore(tmp_path)
    rec = CallRecord(path="x", call_index=0, module_type="T")
    rec.outputs["out"] = np.ones((64, 1024, 1024), np.float32)  # 256 MiB
    store.spill_record(rec)
    gc.collect()
    before = _rss()
    assert float(rec.outputs["out"].sum()) == 64 * 1024 * 1024  # touches every page
    touched = _rss()
    streaming.release(rec)
    after = _rss()
    assert touched - before > 200 * 2**20
    assert touched - after > 200 * 2**20
