"""Pure core: paths, metrics, tolerance, storage round trip, public surface."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import xfdiff
from xfdiff.report import Finding, LayerDiff, Report, Unmatched
from xfdiff.stats import Tolerance, compare_arrays, error_detail
from xfdiff.storage import load_report, save_report
from xfdiff.trace import canonical_path

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def test_public_names_are_pinned():
    assert sorted(xfdiff.__all__) == sorted(
        ["Finding", "LayerDiff", "Report", "Tolerance", "XfdiffError", "compare", "load", "serve", "tap"]
    )


def test_import_is_light():
    heavy = "('torch','jax','flax','dash','pandas','plotly','tensorflow','keras','tf_keras')"
    code = f"import sys, xfdiff; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "parts,expected",
    [
        (("encoder", "layers_3", "fc1"), "encoder.layers.3.fc1"),
        ("encoder/layers/3/fc1", "encoder.layers.3.fc1"),
        (("Dense_0",), "Dense_0"),
        ((), ""),
    ],
)
def test_canonical_path_normalises_flax_names(parts, expected):
    assert canonical_path(parts) == expected


def test_method_other_than_call_is_written_as_suffix():
    assert canonical_path(("embed",), "attend") == "embed.attend"


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6), elements=finite))
def test_metrics_are_zero_on_equal_inputs(a):
    s = compare_arrays(a, a.copy(), 1e-5, 1e-5)
    assert s.max_abs == 0 and s.mean_abs == 0 and s.rel_l2 == 0 and s.frac_outside == 0
    assert s.tol_needed == 0


@given(
    hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=8), elements=st.floats(-10, 10)), st.floats(1e-3, 1.0)
)
def test_tol_needed_is_the_smallest_passing_atol(a, shift):
    b = a + shift
    s = compare_arrays(a, b, 0.0, 1e-5)
    assert compare_arrays(a, b, s.tol_needed * (1 + 1e-9) + 1e-15, 1e-5).frac_outside == 0
    assert compare_arrays(a, b, s.tol_needed * 0.9, 1e-5).frac_outside > 0


def test_nan_at_same_place_is_agreement_but_new_nan_is_not():
    a = np.array([1.0, np.nan, 3.0])
    assert compare_arrays(a, a.copy(), 1e-5, 1e-5).nonfinite_mismatch == 0
    b = np.array([1.0, 2.0, np.nan])
    s = compare_arrays(np.array([1.0, 2.0, 3.0]), b, 1e-5, 1e-5)
    assert s.nonfinite_mismatch == 1 and s.n_nonfinite == 1 and s.tol_needed == math.inf


def test_tolerance_picks_dtype_profiles_and_rejects_negative():
    assert Tolerance().resolve("bfloat16") == (1e-2, 1e-2)
    assert Tolerance(rtol=0.0).resolve("float32") == (1e-5, 0.0)
    with pytest.raises(xfdiff.XfdiffError, match="atol"):
        Tolerance(atol=-1)


def test_error_detail_finds_the_worst_element():
    ref = np.zeros((4, 8), np.float32)
    port = ref.copy()
    port[2, 5] = 1.0
    d = error_detail(ref, port)
    assert int(d["worst_index"][0]) == 2 * 8 + 5
    assert d["heatmap"].shape == (4, 8) and float(d["heatmap"].max()) == 1.0


# --- storage ----------------------------------------------------------------------------

paths = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
nums = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def reports(draw):
    layers = []
    for i in range(draw(st.integers(0, 4))):
        lyr = LayerDiff(
            torch_path=draw(paths),
            flax_path=draw(st.none() | paths),
            call_index=draw(st.integers(0, 3)),
            max_abs=draw(nums),
            mean_abs=draw(nums),
            rel_l2=draw(nums),
            cosine=draw(nums),
            local_max_abs=draw(st.none() | nums),
            status=draw(st.sampled_from(["ok", "diverged", "nonfinite"])),
            torch_shape=tuple(draw(st.lists(st.integers(0, 9), max_size=3))),
            order=i,
            note=draw(paths),
        )
        lyr.detail = {"heatmap": draw(hnp.arrays(np.float32, (2, 3), elements=finite))}
        layers.append(lyr)
    findings = [
        Finding(
            draw(st.sampled_from(["rsqrt", "gelu_approximate"])),
            draw(paths),
            None,
            draw(paths),
            {"explained": draw(st.floats(0, 1))},
            draw(paths),
        )
    ]
    unmatched = [Unmatched("torch", draw(paths), "GELU", "why", False)]
    return Report(layers=layers, findings=findings, unmatched=unmatched, meta={"reference": "torch", "n": 3})


def _same(a: Report, b: Report) -> bool:
    for x, y in zip(a.layers, b.layers, strict=True):
        dx, dy = x.scalar_dict(), y.scalar_dict()
        for k in dx:
            vx, vy = dx[k], dy[k]
            if isinstance(vx, float) and math.isnan(vx):
                assert isinstance(vy, float) and math.isnan(vy), k
            else:
                assert (list(vx) if isinstance(vx, tuple) else vx) == (list(vy) if isinstance(vy, tuple) else vy), k
        np.testing.assert_array_equal(x.detail["heatmap"], y.detail["heatmap"])
    assert [f.to_dict() for f in a.findings] == [f.to_dict() for f in b.findings]
    assert [u.to_dict() for u in a.unmatched] == [u.to_dict() for u in b.unmatched]
    return a.meta == b.meta and len(a.layers) == len(b.layers)


@settings(max_examples=40, deadline=None)
@given(reports())
def test_save_then_load_gives_an_equal_report(tmp_path_factory, report):
    path = tmp_path_factory.mktemp("r") / "r.xfd"
    save_report(report, path)
    assert _same(report, load_report(path))


def test_future_schema_version_is_refused_with_upgrade_hint(tmp_path):
    import json
    import zipfile

    path = tmp_path / "future.xfd"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("report.json", json.dumps({"format": "xfdiff-report", "schema_version": 99, "layers": []}))
    with pytest.raises(xfdiff.XfdiffError, match="newer xfdiff"):
        xfdiff.load(path)


def test_truncated_file_gives_a_clear_error(tmp_path):
    good = tmp_path / "good.xfd"
    save_report(Report(layers=[LayerDiff("a", "a")]), good)
    bad = tmp_path / "bad.xfd"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(xfdiff.XfdiffError, match="truncated|not a valid zip"):
        xfdiff.load(bad)
