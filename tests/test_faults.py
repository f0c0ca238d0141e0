"""Bad input and faulty models: every case ends in a clear XfdiffError or a correctly
flagged report, and leaves the models exactly as it found them."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from fault_models import (  # noqa: E402
    HOSTILE_NAMES,
    Boom,
    hostile_pair,
    left_as_found,
    pair,
    rewrite_member,
    unrelated_port,
)

import xfdiff  # noqa: E402
from xfdiff.errors import (  # noqa: E402
    AlignmentError,
    CaptureError,
    ConfigError,
    InputError,
    MappingError,
    ModelTypeError,
    ReportFileError,
)
from xfdiff.trace import canonical_path  # noqa: E402


def run(pt, port, x, **kw):
    """compare() with the checks every case shares."""
    kw.setdefault("diagnose", False)
    with left_as_found(pt, port):
        return xfdiff.compare(pt, port, x, **kw)


def raises(err, pt, port, x, match=None, **kw):
    with left_as_found(pt, port), pytest.raises(err, match=match) as info:
        xfdiff.compare(pt, port, x, **kw)
    assert isinstance(info.value, xfdiff.XfdiffError)
    return info.value


# --- wrong types ----------------------------------------------------------------------------


def test_state_dict_instead_of_torch_model_is_refused():
    pt, port, x = pair()
    with left_as_found(pt, port), pytest.raises(ModelTypeError, match="torch.nn.Module"):
        xfdiff.compare(pt.state_dict(), port, x)


@pytest.mark.parametrize("bad", [42, "model.msgpack", {"params": {}}], ids=["int", "str", "bare-variables"])
def test_unsupported_flax_model_is_refused_with_the_supported_kinds(bad):
    pt, _, x = pair()
    with left_as_found(pt), pytest.raises(ModelTypeError) as info:
        xfdiff.compare(pt, bad, x)
    err = str(info.value)
    assert "FlaxPreTrainedModel" in err or "variables" in err


def test_linen_variables_that_are_not_a_dict_are_refused():
    pt, (mod, variables), x = pair()
    with left_as_found(pt), pytest.raises(ModelTypeError, match="module.init"):
        xfdiff.compare(pt, (mod, list(variables.values())), x)


def test_models_passed_in_the_wrong_order_say_so():
    pt, port, x = pair()
    with left_as_found(pt, port), pytest.raises(xfdiff.XfdiffError, match="PyTorch model first"):
        xfdiff.compare(pt, pt, x)


@pytest.mark.parametrize("bad", [[1.0, 2.0], "tokens", None], ids=["list", "str", "none"])
def test_inputs_of_the_wrong_kind_are_refused(bad):
    pt, port, _ = pair()
    e = raises(InputError, pt, port, bad, match="dict")
    assert isinstance(e, ValueError)


def test_unknown_reference_side_is_a_config_error():
    pt, port, x = pair()
    raises(ConfigError, pt, port, x, match="reference", reference="jax")


@pytest.mark.parametrize(
    "tol", [-1e-3, float("nan"), {"atol": 1e-3, "rtl": 1e-3}, "loose"], ids=["negative", "nan", "unknown-key", "str"]
)
def test_bad_tolerance_is_a_config_error(tol):
    pt, port, x = pair()
    raises(ConfigError, pt, port, x, tolerance=tol)


def test_mapping_to_unknown_modules_suggests_close_names():
    pt, port, x = pair()
    e = raises(MappingError, pt, port, x, mapping={"fc1": "fc_one"})
    assert "fc1" in str(e) or "fc_one" in str(e)


# --- inputs that fit neither model ------------------------------------------------------------


def test_inputs_that_fit_neither_model_name_the_shapes_and_the_fix():
    pt, port, x = pair(d=8)
    e = raises(CaptureError, pt, port, x[..., :5])
    msg = str(e)
    assert "(2, 4, 5)" in msg and "inputs" in msg


def test_inputs_that_fit_only_torch_blame_the_flax_side():
    pt, port, x = pair(d=8)
    e = raises(CaptureError, pt, port, x, flax_inputs=x[..., :3])
    assert "Flax" in str(e) and "flax_inputs" in str(e)


def test_missing_required_input_is_a_capture_error():
    pt, port, _ = pair()
    raises(CaptureError, pt, port, {})


# --- non-finite values ------------------------------------------------------------------------


def test_nan_input_is_flagged_nonfinite_from_the_first_layer():
    pt, port, x = pair()
    x[0, 1, 2] = np.nan
    report = run(pt, port, x)
    assert report.final.status == "nonfinite"
    assert report.first_divergence.torch_path == "fc1"
    assert report.first_divergence.status == "nonfinite" and report.first_divergence.n_nonfinite > 0


def test_inf_input_is_flagged_nonfinite():
    pt, port, x = pair()
    x[1, 0, 0] = np.inf
    report = run(pt, port, x)
    assert report.diverged and report.first_divergence.torch_path == "fc1"
    assert report.first_divergence.status == "nonfinite"


def test_nan_produced_by_the_port_only_points_at_the_layer_that_made_it():
    pt, port, x = pair(nan_in="flax")
    report = run(pt, port, 3 * x)
    first = report.first_divergence
    assert first.torch_path == "act" and first.status == "nonfinite" and first.local_status == "nonfinite"
    assert report.layer("fc1").status == "ok"
    # downstream layers inherit the NaN but are fine when fed the reference's values
    assert report.layer("fc2").status == "nonfinite" and report.layer("fc2").local_status == "ok"


def test_nan_made_by_both_sides_is_still_reported_where_it_starts():
    pt, port, x = pair(nan_in="both")
    report = run(pt, port, 3 * x)
    assert report.layer("fc1").status == "ok"
    assert report.first_divergence.torch_path == "act"
    assert report.final.status == "nonfinite"


def test_nonfinite_report_survives_save_and_load(tmp_path):
    pt, port, x = pair(nan_in="flax")
    report = run(pt, port, 3 * x)
    back = xfdiff.load(report.save(tmp_path / "nan.xfd"))
    assert back.first_divergence.torch_path == "act"
    assert [lyr.status for lyr in back.layers] == [lyr.status for lyr in report.layers]


# --- dtypes -----------------------------------------------------------------------------------


class IntHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        logits = self.fc(x)
        return logits, logits.argmax(-1)


class FIntHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        logits = nn.Dense(5, name="fc")(x)
        return logits, logits.argmax(-1)


def test_integer_outputs_are_skipped_and_float_outputs_compared():
    torch.manual_seed(0)
    pt = IntHead().eval()
    variables = {
        "params": {"fc": {"kernel": pt.fc.weight.detach().numpy().T.copy(), "bias": pt.fc.bias.detach().numpy().copy()}}
    }
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    report = run(pt, (FIntHead(), variables), x)
    assert report.final.status == "ok" and report.final.output_key == "out.0"
    assert report.first_divergence is None


def test_model_with_only_integer_outputs_gives_a_report_without_rows():
    class ArgMax(torch.nn.Module):
        def forward(self, x):
            return x.argmax(-1)

    class FArgMax(nn.Module):
        def __call__(self, x):
            return x.argmax(-1)

    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    pt, port = ArgMax().eval(), (FArgMax(), {})
    report = run(pt, port, x, local=False)
    assert report.layers == [] and report.first_divergence is None


def test_bfloat16_models_use_the_bfloat16_tolerance():
    import jax.numpy as jnp

    pt, (mod, variables), x = pair()
    pt = pt.to(torch.bfloat16)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), variables)
    report = run(pt, (mod, variables), x.astype(jnp.bfloat16))
    fc1 = report.layer("fc1")
    assert fc1.torch_dtype == "bfloat16" and fc1.flax_dtype == "bfloat16"
    assert fc1.atol == pytest.approx(1e-2) and fc1.status in ("ok", "diverged")
    assert report.final is not None and np.isfinite(report.final.max_abs)


# --- model state ------------------------------------------------------------------------------


def test_torch_model_in_train_mode_stays_in_train_mode_and_is_reported():
    pt, port, x = pair(dropout=0.5)
    pt.train()
    rng = torch.get_rng_state()
    report = run(pt, port, x, diagnose=True)
    assert pt.training and pt.drop.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert report.meta["torch_meta"]["training"] is True
    assert report.diverged  # dropout makes the reference random; the report must not say "ok"


def test_torch_module_raising_mid_forward_is_a_capture_error_and_removes_hooks():
    pt, port, x = pair(raise_in="torch")
    e = raises(CaptureError, pt, port, x, match="activation exploded")
    assert isinstance(e.__cause__, Boom)


def test_flax_module_raising_mid_forward_is_a_capture_error():
    pt, port, x = pair(raise_in="flax")
    e = raises(CaptureError, pt, port, x, match="Flax")
    assert "activation exploded" in str(e)


def test_keyboard_interrupt_mid_forward_propagates_and_removes_hooks():
    pt, port, x = pair()

    def stop(mod, args):
        raise KeyboardInterrupt

    user_hook = pt.fc2.register_forward_pre_hook(stop)
    try:
        with left_as_found(pt, port), pytest.raises(KeyboardInterrupt):
            xfdiff.compare(pt, port, x)
    finally:
        user_hook.remove()
    assert not pt.fc2._forward_pre_hooks


def test_user_hooks_survive_and_still_run():
    pt, port, x = pair()
    seen = []
    h = pt.fc1.register_forward_hook(lambda m, a, o: seen.append(tuple(o.shape)))
    try:
        report = run(pt, port, x)
    finally:
        h.remove()
    assert report.first_divergence is None and seen and all(s == (2, 4, 16) for s in seen)


def test_no_alignable_modules_is_an_alignment_error_with_the_fix():
    pt, _, x = pair()
    port = unrelated_port()
    e = raises(AlignmentError, pt, port, x)
    assert "mapping" in str(e)


def test_nnx_module_raising_mid_forward_restores_its_classes():
    nnx = pytest.importorskip("flax.nnx")
    pytest.importorskip("xfdiff.capture.from_nnx")

    class Bad(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(8, 16, rngs=rngs)

        def __call__(self, x):
            self.fc1(x)
            raise Boom("nnx layer exploded")

    pt, _, x = pair()
    model = Bad(nnx.Rngs(0))
    e = raises(CaptureError, pt, model, x)
    assert "nnx layer exploded" in str(e)
    assert type(model.fc1).__call__ is nnx.Linear.__dict__["__call__"]


# --- hostile names ----------------------------------------------------------------------------


def test_hostile_module_names_are_kept_as_data(tmp_path):
    pt, port, x = hostile_pair()
    report = run(pt, port, x)
    paths = {lyr.torch_path for lyr in report.layers}
    # "/" separates path components on the Flax side, so names are compared in canonical form
    assert {canonical_path(f"layers.{n}") for n in HOSTILE_NAMES} <= paths
    assert any(len(p) > 3000 for p in paths) and any("<script>" in p for p in paths)
    assert report.first_divergence is None
    text = report.summary()
    assert "\x1b[" not in text and "\x00" not in text  # terminal escapes are not passed through
    back = xfdiff.load(report.save(tmp_path / "hostile.xfd"))
    assert {lyr.torch_path for lyr in back.layers} == paths


def test_hostile_module_names_are_escaped_in_html(tmp_path):
    pytest.importorskip("xfdiff.views.html_report")
    pt, port, x = hostile_pair()
    report = run(pt, port, x)
    html = (tmp_path / "r.html").read_text() if report.to_html(tmp_path / "r.html") else ""
    assert "<script>alert(1)</script>" not in html
    assert "alert(1)" in html


# --- report files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pt, port, x = pair(nan_in="flax")
    path = tmp_path_factory.mktemp("reports") / "good.xfd"
    xfdiff.compare(pt, port, 3 * x, diagnose=False).save(path)
    return path


def load_error(path) -> str:
    with pytest.raises(ReportFileError) as info:
        xfdiff.load(path)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_missing_report_file(tmp_path):
    assert "no such file" in load_error(tmp_path / "nope.xfd")


def test_random_bytes_are_not_a_report(tmp_path):
    p = tmp_path / "junk.xfd"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a valid zip" in load_error(p)


def test_truncated_report(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        p = tmp_path / f"cut{cut}.xfd"
        p.write_bytes(data[:cut])
        assert "truncated" in load_error(p) or "not a valid zip" in load_error(p)


def test_future_version_report_says_upgrade(saved, tmp_path):
    with zipfile.ZipFile(saved) as z:
        doc = json.loads(z.read("report.json"))
    doc["schema_version"] = 999
    p = rewrite_member(saved, tmp_path / "future.xfd", "report.json", json.dumps(doc).encode())
    msg = load_error(p)
    assert "newer xfdiff" in msg and "999" in msg


def test_report_json_with_wrong_types(saved, tmp_path):
    with zipfile.ZipFile(saved) as z:
        doc = json.loads(z.read("report.json"))
    for bad in (
        {"layers": "x"},
        {"layers": [1, 2]},
        {"findings": [{"pitfall": 3}]},
        {"meta": []},
        {"layers": [{"torch_path": "a", "flax_path": "b", "status": "exploded"}]},
    ):
        p = rewrite_member(saved, tmp_path / "bad.xfd", "report.json", json.dumps({**doc, **bad}).encode())
        load_error(p)


class _Payload:
    """Unpickling this would create a marker file: loading must never do that."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_file_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = marker
    for name in ("report.xfd", "report.pkl"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps(_Payload(), protocol=4))
        assert "pickle" in load_error(p)
    assert not marker.exists()


def test_pickle_inside_the_archive_is_not_executed(saved, tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = marker
    p = rewrite_member(saved, tmp_path / "evil.xfd", "report.json", pickle.dumps(_Payload()))
    load_error(p)
    p = rewrite_member(saved, tmp_path / "evil2.xfd", "arrays.safetensors", pickle.dumps(_Payload()))
    load_error(p)
    assert not marker.exists()


def test_archive_without_report_json(saved, tmp_path):
    p = rewrite_member(saved, tmp_path / "empty.xfd", "report.json", None)
    assert "report.json is missing" in load_error(p)


def test_unlisted_array_dtype_is_refused(saved, tmp_path):
    header = json.dumps({"x": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}).encode()
    blob = len(header).to_bytes(8, "little") + header + b"\0" * 8
    p = rewrite_member(saved, tmp_path / "obj.xfd", "arrays.safetensors", blob)
    assert "dtype" in load_error(p)


def test_the_as_found_check_itself_notices_leftovers():
    pt, port, x = pair()
    with pytest.raises(AssertionError, match="torch model"), left_as_found(pt, port):
        pt.fc1.register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError, match="torch model"), left_as_found(pt, port):
        pt.fc2.train()
    with pytest.raises(AssertionError, match="global state"), left_as_found(pt, port):
        torch.rand(1)
    with pytest.raises(AssertionError, match="flax model"), left_as_found(pt, port):
        port[1]["params"]["fc1"]["bias"][0] += 1.0
