"""``xfdiff.testing.assert_port_matches`` in its three outcomes."""

from __future__ import annotations

import warnings

import pytest
from splice_models import pair

from xfdiff.testing import assert_port_matches, verdict_of


def test_matching_port_passes_and_returns_the_report():
    pt, fx, x = pair()
    report = assert_port_matches(pt, fx, x)
    assert verdict_of(report)[0] == "match" and report.first_divergence is None


def test_diverged_port_fails_naming_the_culprit_the_fix_and_its_share(tmp_path):
    pt, fx, x = pair({1: {"act": "tanh"}})
    with pytest.raises(AssertionError) as e:
        assert_port_matches(pt, fx, x, html=tmp_path)
    msg = str(e.value)
    assert msg.startswith("xfdiff verdict: diverged")
    assert "blocks.1.act" in msg and "gelu_approximate" in msg
    assert "nn.gelu(x, approximate=False)" in msg  # the fix
    assert "fixing blocks.1.act alone brings the final output within tolerance" in msg
    written = list(tmp_path.glob("*.html"))
    assert len(written) == 1 and written[0].name.startswith("test_diverged_port_fails")
    assert f"HTML report: {written[0]}" in msg


def test_report_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XFDIFF_REPORT_DIR", str(tmp_path / "reports"))
    pt, fx, x = pair({3: {"eps": 1e-2}})
    with pytest.raises(AssertionError, match="norm_epsilon"):
        assert_port_matches(pt, fx, x)
    assert len(list((tmp_path / "reports").glob("*.html"))) == 1


def test_port_compared_too_little_is_inconclusive_and_fails_saying_why():
    pt, (module, variables), x = pair()

    def forward(inp):  # no xfdiff.tap inside: only the final output can be compared
        return module.apply(variables, inp)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AssertionError) as e:
            assert_port_matches(pt, forward, x)
    msg = str(e.value)
    assert msg.startswith("xfdiff verdict: inconclusive")
    assert "modules with parameters were compared" in msg or "coverage" in msg.lower()


def test_compare_kwargs_are_passed_on():
    pt, fx, x = pair({1: {"act": "tanh"}})  # tanh GELU: ~2e-4 off, within a loose tolerance
    report = assert_port_matches(pt, fx, x, tolerance=1e-2)
    assert report.meta["tolerance"]["atol"] == 1e-2
