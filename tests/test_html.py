"""The self-contained HTML report and the notebook view, read as files and strings."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest
from conftest import EVIL, EVIL_IMG

from xfdiff.demo import large_report
from xfdiff.views import html_report


def _embedded(page: str, script_id: str) -> str:
    m = re.search(rf'<script type="[^"]+" id="{script_id}">(.*?)</script>', page, re.S)
    assert m, script_id
    return m.group(1)


def _unpacked(page: str, script_id: str) -> str:
    return gzip.decompress(base64.b64decode(_embedded(page, script_id))).decode("utf-8")


@pytest.fixture(scope="module")
def demo_page(demo_report, tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "demo.html"
    assert demo_report.to_html(path) == str(path)
    return path.read_text(encoding="utf-8")


def test_report_file_references_nothing_remote(demo_page):
    for pattern in (
        r"<script[^>]+\bsrc=",
        r"<link\b",
        r"@import",
        r"url\(\s*['\"]?(https?:)?//",
        r"\b(src|href)=['\"]?(https?:)?//",
    ):
        assert not re.search(pattern, demo_page, re.I), pattern


def test_report_file_carries_the_dashboards_plotly_bundle_inline(demo_page):
    from importlib import resources

    from xfdiff.views.static import PLOTLY_BUNDLE

    bundle = (resources.files("xfdiff") / "views" / "assets" / PLOTLY_BUNDLE).read_text(encoding="utf-8")
    inline = _unpacked(demo_page, "xf-plotly")
    assert inline == bundle
    assert "plotly.js" in inline[:300] and "MIT" in inline[:300]  # the bundle's licence header travels with it


def test_report_file_states_first_divergence_without_javascript(demo_report, demo_page):
    fd = demo_report.first_divergence
    verdict = re.search(r'id="xf-verdict">(.*?)</div></div>', demo_page, re.S).group(1)
    assert f"First divergence: {fd.label}" in verdict
    meta = json.loads(_embedded(demo_page, "xf-meta"))
    assert meta["first"] == fd.order
    assert [r["layer"] for r in meta["rows"]] == [lyr.label for lyr in demo_report.layers]


def test_report_file_has_every_layers_facts_and_the_dashboard_figures(demo_report, demo_page):
    from xfdiff.views import figures as F

    blob = json.loads(_unpacked(demo_page, "xf-layers"))
    assert set(blob["base"]) == {str(lyr.order) for lyr in demo_report.layers}
    fd = demo_report.first_divergence
    figs = blob["figs"][str(fd.order)]["local"]
    expected = F.detail_figures(fd, "local")
    assert figs.keys() == expected.keys()
    for key in figs:
        assert figs[key]["layout"]["title"] == expected[key]["layout"]["title"]
    assert dict(blob["base"][str(fd.order)]["facts"])["torch path"] == fd.torch_path


def test_unmatched_modules_are_listed_per_side(demo_report, demo_page):
    section = re.search(r'id="xf-unmatched">(.*?)</div></div></div>', demo_page, re.S).group(1)
    assert "Only in PyTorch (4)" in section and "Only in Flax (0)" in section
    for u in demo_report.unmatched:
        assert u.path in section


def test_hostile_names_are_escaped_everywhere(evil_report, tmp_path):
    page = evil_report.to_html(tmp_path / "evil.html")
    text = open(page, encoding="utf-8").read()
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;" in text  # the name is shown, as text
    assert "alert(1)" in _unpacked(text, "xf-layers")  # and kept intact in the data the script reads
    card = evil_report._repr_html_()
    assert "<script" not in card and "<img" not in card
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in card or EVIL_IMG not in card


@pytest.mark.slow
def test_thousand_call_report_stays_under_six_megabytes(tmp_path):
    report = large_report(1000, positions=32, channels=256)
    path = html_report.write_html(report, tmp_path / "big.html")
    size = (tmp_path / "big.html").stat().st_size
    assert size <= html_report.MAX_BYTES
    page = open(path, encoding="utf-8").read()
    blob = json.loads(_unpacked(page, "xf-layers"))
    assert len(blob["base"]) == 1000
    assert str(report.first_divergence.order) in blob["figs"]  # the culprit's plots are always kept


def test_plots_are_dropped_by_interest_when_space_is_short(demo_report):
    full = len(html_report.report_html(demo_report).encode("utf-8"))
    page = html_report.report_html(demo_report, max_bytes=full - 60_000)
    assert len(page.encode("utf-8")) <= full - 60_000
    blob = json.loads(_unpacked(page, "xf-layers"))
    kept = [int(k) for k in blob["figs"]]
    assert 0 < len(kept) < len(demo_report.layers)
    assert kept[0] == demo_report.first_divergence.order
    assert kept == [o for o in html_report.plot_priority(demo_report) if o in set(kept)]
    assert f"{len(kept)} of {len(demo_report.layers)} layers have plots" in page


def test_plot_priority_starts_with_first_divergence_then_own_error(demo_report):
    order = html_report.plot_priority(demo_report)
    assert order[0] == demo_report.first_divergence.order
    own_bad = {lyr.order for lyr in demo_report.layers if lyr.local_status == "diverged"}
    assert set(order[: len(own_bad)]) == own_bad
    assert sorted(order) == list(range(len(demo_report.layers)))


def test_notebook_card_is_compact_and_shows_verdict_findings_and_plot(demo_report):
    card = demo_report._repr_html_()
    fd = demo_report.first_divergence
    assert f"First divergence: {fd.label}" in card
    assert "<svg" in card and "first divergence: " in card
    assert "<script" not in card and len(card) < 100_000
    for f in demo_report.findings:
        assert f.pitfall in card


def test_notebook_card_for_a_report_without_layers():
    from xfdiff.report import Report

    card = Report()._repr_html_()
    assert "Inconclusive" in card and "<svg" not in card


def test_evidence_and_fix_of_findings_appear_in_the_report(evil_report, tmp_path):
    text = open(evil_report.to_html(tmp_path / "e.html"), encoding="utf-8").read()
    findings = re.search(r'id="xf-findings">(.*?)</div></div>', text, re.S).group(1)
    assert "gelu_approximate" in findings and "explained" in findings and "0.99" in findings
    assert f"use approximate=False in {EVIL}".replace("<", "&lt;").replace(">", "&gt;") in text
