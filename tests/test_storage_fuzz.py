"""Fuzzing ``xfdiff.load``: whatever the bytes, it returns a usable report or raises
ReportFileError, and it never runs code stored in the file.

Bounded in time: a few hundred examples per property, each with a deadline.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import marshal
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xfdiff
from xfdiff.errors import ReportFileError
from xfdiff.report import Finding, LayerDiff, Report, Unmatched
from xfdiff.stats import error_detail

FUZZ = settings(
    max_examples=200,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _valid_report() -> Report:
    rng = np.random.default_rng(0)
    r = rng.standard_normal((4, 6)).astype(np.float32)
    layers = []
    for i, (path, status) in enumerate([("embed", "ok"), ("layers.0.fc", "diverged"), ("layers.0", "nonfinite")]):
        lyr = LayerDiff(
            torch_path=path,
            flax_path=path,
            max_abs=1e-3 * i,
            mean_abs=1e-4,
            rel_l2=1e-3,
            cosine=0.99,
            local_max_abs=1e-4 * i,
            status=status,
            blame_order=float(i) if i else None,
            order=i,
            torch_shape=(4, 6),
            flax_shape=(4, 6),
        )
        lyr.detail = error_detail(r, r + 1e-3 * i)
        layers.append(lyr)
    final = LayerDiff(torch_path="", flax_path="", max_abs=1e-3)
    return Report(
        layers=layers,
        final=final,
        findings=[Finding("gelu_approximate", "layers.0", "layers.0", "tanh GELU", {"max_abs": 1e-3}, "fix")],
        unmatched=[Unmatched("torch", "drop", "Dropout", "parameter-free")],
        meta={"reference": "torch", "tolerance": {"atol": 1e-5, "rtol": 1e-5}},
    )


VALID = Path(tempfile.mkdtemp(prefix="xfdiff-fuzz-")) / "valid.xfd"
_valid_report().save(VALID)
VALID_BYTES = VALID.read_bytes()
with zipfile.ZipFile(VALID) as _z:
    VALID_DOC = json.loads(_z.read("report.json"))
    VALID_ARRAYS = _z.read("arrays.safetensors")


def _forbidden(*a, **k):
    raise AssertionError("xfdiff.load tried to execute or unpickle file content")


@contextlib.contextmanager
def nothing_executes():
    """Fail if loading reaches any way of turning bytes into running code."""
    targets = (
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (marshal, "loads"),
        (builtins, "eval"),
        (builtins, "exec"),
        (builtins, "compile"),
    )
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]
    for mod, name, _ in saved:
        setattr(mod, name, _forbidden)
    try:
        yield
    finally:
        for mod, name, orig in saved:
            setattr(mod, name, orig)


def load_bytes(data: bytes) -> Report | None:
    """Load ``data`` from a file; a report must then be usable, anything else a ReportFileError."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.xfd"
        p.write_bytes(data)
        try:
            with nothing_executes():
                report = xfdiff.load(p)
        except ReportFileError:
            return None
    # What loaded must hold up in the views' basic entry points.
    assert report.first_divergence is None or report.first_divergence in report.layers
    report.summary()
    report.to_dataframe()
    return report


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(doc, prefix=()):
    """Every (container path) inside a JSON document, to aim a mutation at."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(VALID_DOC) if p]


def _set(doc, path, value):
    doc = json.loads(json.dumps(doc))
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


def test_the_unmutated_file_loads():
    report = load_bytes(VALID_BYTES)
    assert report is not None and [lyr.status for lyr in report.layers] == ["ok", "diverged", "nonfinite"]


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    load_bytes(data)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(VALID_BYTES)),
)
def test_valid_file_with_flipped_bytes_and_truncation(flips, cut):
    data = bytearray(VALID_BYTES)
    for pos, val in flips:
        data[pos] = val
    load_bytes(bytes(data[:cut]) if cut > 10 else bytes(data))


@FUZZ
@given(st.permutations(["report.json", "arrays.safetensors", "extra.bin"]), st.booleans())
def test_zip_members_swapped_renamed_or_duplicated(names, duplicate):
    contents = [json.dumps(VALID_DOC).encode(), VALID_ARRAYS, b"\x80\x04junk"]
    members = dict(zip(names, contents, strict=True))
    data = zipped(members)
    if duplicate:  # a second report.json after the first
        buf = io.BytesIO(data)
        with zipfile.ZipFile(buf, "a") as z, pytest.warns(UserWarning):
            z.writestr("report.json", b"{}")
        data = buf.getvalue()
    load_bytes(data)


@FUZZ
@given(st.sampled_from(ALL_PATHS), json_values)
def test_json_fields_with_wrong_types(path, value):
    doc = _set(VALID_DOC, path, value)
    text = json.dumps(doc, allow_nan=True).encode()
    load_bytes(zipped({"report.json": text, "arrays.safetensors": VALID_ARRAYS}))


@FUZZ
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=4), st.binary(max_size=64))
def test_arbitrary_safetensors_headers(header, body):
    raw = json.dumps(header).encode()
    blob = len(raw).to_bytes(8, "little") + raw + body
    load_bytes(zipped({"report.json": json.dumps(VALID_DOC).encode(), "arrays.safetensors": blob}))


def test_a_pickle_payload_anywhere_is_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Payload(), protocol=2)
    for members in (
        {"report.json": payload},
        {"report.json": json.dumps(VALID_DOC).encode(), "arrays.safetensors": payload},
    ):
        assert load_bytes(zipped(members)) is None
    assert load_bytes(payload) is None
    assert not marker.exists()
