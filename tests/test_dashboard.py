"""Dashboard without a browser: pure figures and tables, callbacks called directly, the app itself."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
from conftest import EVIL
from plotly.utils import PlotlyJSONEncoder

import xfdiff
from xfdiff.dashboard import callbacks as C
from xfdiff.dashboard import ids
from xfdiff.dashboard import layout as L
from xfdiff.report import Finding, LayerDiff, Report
from xfdiff.views import figures as F
from xfdiff.views import tables as T


def _plotly_json(fig: dict) -> str:
    from plotly.io.json import to_json_plotly

    return to_json_plotly(fig)


def test_depth_figure_is_log_scale_with_tolerance_and_first_divergence(demo_report):
    fig = F.depth_figure(demo_report)
    go.Figure(fig)  # plotly accepts it as a valid figure
    assert fig["layout"]["yaxis"]["type"] == "log"
    fd = demo_report.first_divergence
    atol = F.tolerance_of(demo_report)
    assert any(s["y0"] == atol and s["xref"] == "paper" for s in fig["layout"]["shapes"])
    assert any(s["x0"] == fd.order and s["yref"] == "paper" for s in fig["layout"]["shapes"])
    assert any(fd.label in a["text"] and "first divergence" in a["text"] for a in fig["layout"]["annotations"])
    names = [t["name"] for t in fig["data"]]
    assert any("propagated" in n for n in names) and any("own" in n for n in names)
    assert fig["data"][0]["customdata"] == [lyr.order for lyr in demo_report.layers]


def test_depth_figure_puts_exact_zeros_on_a_floor_below_every_error(demo_report):
    fig = F.depth_figure(demo_report)
    own = {
        o: y for t in fig["data"] if t["name"].startswith("own") for o, y in zip(t["customdata"], t["y"], strict=True)
    }
    assert set(own) == {lyr.order for lyr in demo_report.layers if lyr.local_max_abs is not None}
    positive = [lyr.local_max_abs for lyr in demo_report.layers if lyr.local_max_abs]
    floor = min(own.values())
    assert floor < min(positive)
    zeros = [lyr.order for lyr in demo_report.layers if lyr.local_max_abs == 0]
    assert zeros and all(own[o] == floor for o in zeros)


def test_depth_figure_draws_own_error_outside_tolerance_as_its_own_trace(demo_report):
    fig = F.depth_figure(demo_report)
    bad = next(t for t in fig["data"] if t["name"] == "own error outside tolerance")
    assert bad["customdata"] == [lyr.order for lyr in demo_report.layers if lyr.local_status == "diverged"]


def test_depth_figure_marks_a_selected_layer_separately(demo_report):
    fig = F.depth_figure(demo_report, selected=3)
    assert any(s["x0"] == 3 for s in fig["layout"]["shapes"])
    assert any("selected" in a["text"] for a in fig["layout"]["annotations"])


def test_histogram_counts_every_nonzero_error_element(demo_report):
    lyr = demo_report.first_divergence
    fig = F.histogram_figure(lyr, "local")
    d = lyr.local_detail
    n = int(np.prod(d["shape"]))
    assert int(np.sum(fig["data"][0]["y"])) + int(F.scalar(d["n_exact"])) == n
    assert math.log10(lyr.atol) == pytest.approx(fig["layout"]["shapes"][0]["x0"])


def test_heatmap_and_profile_follow_the_layer_shape(demo_report):
    lyr = demo_report.first_divergence
    hm = F.heatmap_figure(lyr)
    z = hm["data"][0]["z"]
    assert z.shape == lyr.local_detail["heatmap"].shape
    assert "128" in hm["layout"]["xaxis"]["title"]["text"]  # channels of the MLP activation
    prof = F.profile_figure(lyr)
    assert len(prof["data"][0]["y"]) == lyr.local_detail["profile"].size
    assert prof["layout"]["yaxis"]["type"] == "log"


def test_scatter_shows_port_against_reference_and_the_tolerance_band(demo_report):
    lyr = demo_report.first_divergence
    fig = F.scatter_figure(lyr, "propagated")
    d = lyr.detail
    first, second = fig["data"][0], fig["data"][1]
    np.testing.assert_allclose(first["x"], d["scatter_ref"], rtol=1e-6)
    np.testing.assert_allclose(second["y"], d["scatter_port"] - d["scatter_ref"], atol=1e-6)
    band = [t for t in fig["data"] if t.get("yaxis") == "y2" and t["mode"] == "lines"]
    assert len(band) == 2 and float(np.max(band[0]["y"])) >= lyr.atol


def test_exact_layer_gets_explanatory_empty_figures(demo_report):
    exact = next(lyr for lyr in demo_report.layers if lyr.local_max_abs == 0 and lyr.local_detail)
    fig = F.histogram_figure(exact, "local")
    assert fig["data"] == [] and "exactly" in fig["layout"]["annotations"][0]["text"]


def test_missing_local_detail_falls_back_to_propagated(demo_report):
    lyr = LayerDiff(torch_path="a", flax_path="a", detail=demo_report.first_divergence.detail)
    arrays, kind = F.detail_arrays(lyr, "local")
    assert kind == "propagated" and arrays is lyr.detail


def test_figures_escape_model_names(evil_report):
    text = _plotly_json(F.depth_figure(evil_report))
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_verdict_names_first_divergence_and_its_finding(demo_report):
    v = T.verdict(demo_report)
    assert v.level == "diverged"
    assert demo_report.first_divergence.label in v.headline
    if demo_report.findings:
        assert v.cause is demo_report.findings[0]


def test_verdict_without_divergence_says_so():
    ok = LayerDiff(torch_path="a", flax_path="a", max_abs=0.0, status="ok")
    v = T.verdict(Report(layers=[ok]))
    assert v.level == "ok" and "Match" in v.headline


def test_filter_rows_by_status_search_and_own_error(demo_report):
    rows = T.layer_rows(demo_report)
    diverged = T.filter_rows(rows, statuses=["diverged"])
    assert diverged and all(r["status"] == "diverged" for r in diverged)
    hits = T.filter_rows(rows, statuses=["ok", "diverged"], search="MLP.ACT")
    assert {r["layer"] for r in hits} == {f"blocks.{i}.mlp.act" for i in range(4)}
    own = T.filter_rows(rows, statuses=["ok", "diverged"], own_only=True)
    assert demo_report.first_divergence.order in [r["order"] for r in own]
    assert all(r["own"] == "diverged" for r in own)


def test_worst_elements_are_valid_indices_sorted_by_error(demo_report):
    lyr = demo_report.first_divergence
    worst = T.worst_elements(lyr, "local")
    shape = tuple(lyr.local_detail["shape"])
    diffs = [abs(w["diff"]) for w in worst]
    assert diffs == sorted(diffs, reverse=True)
    for w in worst:
        idx = eval(w["index"], {})  # "(1, 5, 87)": a tuple literal made by tables.worst_elements
        assert len(idx) == len(shape) and all(0 <= i < s for i, s in zip(idx, shape, strict=True))


def test_layer_facts_cover_paths_types_shapes_dtypes_and_layout(demo_report):
    facts = dict(T.layer_facts(demo_report.first_divergence))
    for key in ("torch path", "flax path", "module types", "output shapes", "dtypes", "layout transform"):
        assert key in facts
    assert "GELU" in facts["module types"] and "float32" in facts["dtypes"]


def test_findings_for_matches_path_and_call_index():
    lyr = LayerDiff(torch_path="m.fc", flax_path="m.fc", call_index=1)
    hit = Finding("gelu_approximate", "m.fc", None, "msg", call_index=1)
    other_call = Finding("gelu_approximate", "m.fc", None, "msg", call_index=0)
    report = Report(layers=[lyr], findings=[hit, other_call])
    assert T.findings_for(report, lyr) == [hit]


def test_selection_follows_grid_plot_button_and_finding_link(demo_report):
    fd = demo_report.first_divergence.order
    assert C.selection_from(demo_report, ids.GRID, {"rowId": "3"}, None, fd) == 3
    assert C.selection_from(demo_report, ids.DEPTH, None, {"points": [{"customdata": 5}]}, fd) == 5
    assert C.selection_from(demo_report, ids.GOTO_FIRST, None, None, 0) == fd
    assert C.selection_from(demo_report, {"type": ids.GOTO, "order": 7}, None, None, fd) == 7
    assert C.selection_from(demo_report, ids.GRID, {"rowId": "9999"}, None, fd) == fd


def test_detail_callback_shows_the_selected_layer(demo_report):
    values = dict(zip(C.DETAIL_OUTPUTS, C.detail_values(demo_report, 3, "local"), strict=True))
    title = json.dumps(values[ids.DETAIL_TITLE], cls=PlotlyJSONEncoder)
    assert demo_report.layers[3].label in title
    assert values[ids.FIG_HIST]["layout"]["title"]["text"].startswith("Error distribution")
    empty = dict(zip(C.DETAIL_OUTPUTS, C.detail_values(demo_report, None, "local"), strict=True))
    assert empty[ids.DETAIL_TITLE] == "No layer selected"


def test_table_callback_filters_and_counts(demo_report):
    rows = T.layer_rows(demo_report)
    shown, text = C.table_values(rows, ["diverged"], [], "")
    assert len(shown) == sum(r["status"] == "diverged" for r in rows)
    assert text == f"{len(shown)} of {len(rows)} rows"
    # The browser gets only what the table shows; searching by path happens here, on the server.
    assert all(set(r) == set(L.GRID_FIELDS) for r in shown)
    shown, _ = C.table_values(rows, ["ok", "diverged"], [], demo_report.layers[5].torch_path)
    assert str(demo_report.layers[5].order) in {r["rid"] for r in shown}


def test_module_table_columns_exist_in_the_rows(demo_report):
    rows = L.grid_rows(T.layer_rows(demo_report))
    assert {c["field"] for c in L.COLUMNS} <= set(rows[0])
    assert all(c.get("kind", "text") in ("int", "sci", "status", "text") for c in L.COLUMNS)
    table = L.table_section(demo_report, 3)
    grid = next(c for c in table.children if getattr(c, "id", None) == ids.GRID)
    assert grid.selected == "3" and grid.scroll_to == {"rowId": "3"} and len(grid.rows) == len(demo_report.layers)


def test_page_loads_the_partial_plotly_bundle_it_needs_and_no_grid_library(demo_report):
    from xfdiff.dashboard import PLOTLY_BUNDLE

    app = xfdiff.dashboard.create_app(demo_report)
    client = app.server.test_client()
    page = client.get("/").get_data(as_text=True)
    assert f'src="assets/{PLOTLY_BUNDLE}"' in page and 'src="assets/module_table.js"' in page
    assert "ag_grid" not in page and "plotly.min.js" not in page
    # The bundle scripts come before the renderer, so window.Plotly exists before the first plot.
    assert page.index(PLOTLY_BUNDLE) < page.index('id="_dash-renderer"')
    bundle = client.get(f"/assets/{PLOTLY_BUNDLE}")
    assert bundle.status_code == 200
    head = bundle.get_data(as_text=True)[:200]
    bundle.close()
    assert "plotly.js (cartesian - minified) v" in head and "MIT license" in head
    assert client.get("/assets/module_table.js").status_code == 200
    # Every trace type the views draw is in the partial bundle.
    cartesian = {
        "bar",
        "box",
        "contour",
        "heatmap",
        "histogram",
        "histogram2d",
        "histogram2dcontour",
        "image",
        "pie",
        "scatter",
        "scatterternary",
        "violin",
    }
    figs = [F.depth_figure(demo_report)] + [f for lyr in demo_report.layers for f in F.detail_figures(lyr).values()]
    used = {t.get("type", "scatter") for f in figs for t in f["data"]}
    assert used and used <= cartesian


def test_download_payloads_are_a_loadable_report_and_html(demo_report, tmp_path):
    import base64

    xfd = C.download_payload(demo_report, ids.DOWNLOAD_XFD)
    path = tmp_path / "d.xfd"
    path.write_bytes(base64.b64decode(xfd["content"]))
    assert xfdiff.load(path).first_divergence.label == demo_report.first_divergence.label
    page = C.download_payload(demo_report, ids.DOWNLOAD_HTML)
    assert page["content"].startswith("<!DOCTYPE html>")


def test_create_app_accepts_a_report_or_a_saved_file(demo_report, demo_file):
    for source in (demo_report, demo_file):
        app = xfdiff.dashboard.create_app(source)
        layout = json.dumps(app.layout, cls=PlotlyJSONEncoder)
        assert demo_report.first_divergence.label in layout
        assert app.config.title if hasattr(app.config, "title") else True


def test_serve_rejects_missing_file_and_wrong_type(tmp_path):
    from xfdiff.errors import ModelTypeError, ReportFileError

    with pytest.raises(ReportFileError, match="no such file"):
        xfdiff.dashboard.create_app(tmp_path / "missing.xfd")
    with pytest.raises(ModelTypeError, match="xfdiff.Report"):
        xfdiff.serve(42)


def test_serve_warns_when_binding_beyond_this_machine(monkeypatch, demo_report):
    import dash

    calls = {}
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: calls.update(kw))
    with pytest.warns(UserWarning, match="other machines"):
        xfdiff.serve(demo_report, host="0.0.0.0", port=8999)
    assert calls["host"] == "0.0.0.0" and calls["port"] == 8999
    calls.clear()
    xfdiff.serve(demo_report)
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8050


def test_dashboard_layout_keeps_hostile_names_as_text(evil_report):
    from dash import dcc

    app = xfdiff.dashboard.create_app(evil_report)
    found = []

    def walk(c):
        assert not isinstance(c, dcc.Markdown)  # Markdown could render model strings as HTML
        assert not getattr(c, "dangerously_allow_html", False)
        for child in _children(c):
            if isinstance(child, str) and EVIL in child:
                found.append(child)
            else:
                walk(child)

    walk(app.layout)
    assert found  # the name is there, as a plain string that React renders as text


def _children(c):
    kids = getattr(c, "children", None)
    if kids is None:
        return []
    return kids if isinstance(kids, (list, tuple)) else [kids]


def test_views_handle_empty_nonfinite_and_mismatched_rows(tmp_path):
    from xfdiff.stats import error_detail
    from xfdiff.views.html_report import report_html

    ref = np.linspace(-2, 2, 64, dtype=np.float32).reshape(4, 16)
    port = ref.copy()
    port[1, 3] = np.inf
    bad = LayerDiff(
        torch_path="a",
        flax_path="a",
        order=0,
        max_abs=float("inf"),
        status="nonfinite",
        local_max_abs=float("nan"),
        atol=1e-5,
        rtol=1e-5,
        detail=error_detail(ref, port),
    )
    mismatch = LayerDiff(
        torch_path="b", flax_path="b", order=1, status="shape_mismatch", torch_shape=(2, 3), flax_shape=(3, 2)
    )
    report = Report(layers=[bad, mismatch], meta={"tolerance": {"atol": None, "rtol": None}})
    for lyr in report.layers:
        for fig in F.detail_figures(lyr, "propagated").values():
            go.Figure(fig)
    assert "→" in T.layer_row(mismatch)["shape"]
    assert T.worst_elements(bad, "propagated")[0]["index"] == "(1, 3)"
    xfdiff.dashboard.create_app(report)
    page = report_html(report)
    assert "NaN" not in page.split('id="xf-meta">')[1].split("</script>")[0]
    empty = json.dumps(xfdiff.dashboard.create_app(Report()).layout, cls=PlotlyJSONEncoder)
    assert "Inconclusive" in empty and "No aligned layers" in empty


def test_serve_refuses_a_busy_port_with_a_clear_error(demo_report):
    import socket

    from xfdiff.errors import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="Pick another port"):
            xfdiff.serve(demo_report, port=s.getsockname()[1])
