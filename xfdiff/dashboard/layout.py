"""The dashboard page: verdict first, then findings, error vs depth, the module table and the detail.

Every name from a model reaches the page as a component's text, never as
markup, so Dash escapes it. Figures come from :mod:`xfdiff.views.figures`, text
from :mod:`xfdiff.views.tables`.
"""

from __future__ import annotations

from importlib import resources

from dash import dcc, html
from dash.development.base_component import Component

from ..report import Finding, LayerDiff, Report
from ..views import figures as F
from ..views import tables as T
from ..views.static import asset_text
from . import ids

GRAPH_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
SMALL_GRAPH_CONFIG = {"displayModeBar": False}


def css() -> str:
    """The page's stylesheet: the one shared with the HTML report, then the dashboard's own."""
    shared = asset_text("xfdiff.css")
    own = (resources.files("xfdiff.dashboard") / "assets" / "dashboard.css").read_text(encoding="utf-8")
    return shared + "\n" + own


def build_layout(report: Report, selected: int | None) -> html.Div:
    """The whole page for ``report`` with layer ``selected`` (an ``order``) open in the detail view."""
    return html.Div(
        className="xf-page",
        children=[
            header(report),
            verdict_banner(report),
            stat_cards(report),
            findings_panel(report),
            html.Div(className="xf-card", children=graph(ids.DEPTH, F.depth_figure(report, selected), GRAPH_CONFIG)),
            html.Div(
                className="xf-cols",
                children=[
                    table_section(report, selected),
                    # The first detail is part of the page, so the first view needs no callback round trip.
                    detail_section(
                        detail_parts(report, report.layers[selected] if selected is not None else None, "local")
                    ),
                ],
            ),
            unmatched_section(report),
            notes_section(report),
            dcc.Store(id=ids.SELECTED, data=selected),
            dcc.Download(id=ids.DOWNLOAD),
        ],
    )


def graph(key: str, figure: dict, config: dict) -> dcc.Graph:
    """A plot that takes its width from the page and its height from ``figure``.

    ``responsive`` makes plotly.js size the first drawing to its box, instead of
    drawing at a default width and again once the page asks for a resize.
    """
    height = figure.get("layout", {}).get("height", 300)
    return dcc.Graph(id=key, figure=figure, config=config, responsive=True, style={"height": f"{height}px"})


def header(report: Report) -> html.Div:
    torch_model, flax_model = T.model_names(report)
    ref = report.reference
    fw = report.meta.get("flax_framework", "flax")
    return html.Div(
        className="xf-header",
        children=[
            html.Div(className="xf-logo", children=["xf", html.Span("diff")]),
            html.Div(
                className="xf-sub",
                children=(
                    f"{torch_model} (PyTorch{', reference' if ref == 'torch' else ''}) vs "
                    f"{flax_model} (Flax {fw}{', reference' if ref == 'flax' else ''}) · {T.tolerance_text(report)}"
                ),
            ),
            html.Div(className="xf-spacer"),
            html.Button("Download .xfd", id=ids.DOWNLOAD_XFD, className="xf-btn"),
            html.Button("Download HTML report", id=ids.DOWNLOAD_HTML, className="xf-btn"),
        ],
    )


def verdict_banner(report: Report) -> html.Div:
    v = T.verdict(report)
    hidden = {} if report.first_divergence is not None else {"display": "none"}
    button = [html.Button("Show this layer", id=ids.GOTO_FIRST, className="xf-btn", style=hidden)]
    return html.Div(
        id=ids.VERDICT,
        className=f"xf-card xf-verdict {v.level}",
        children=[
            html.Div(
                style={"flex": "1"},
                children=[
                    html.Div(v.headline, className="xf-headline"),
                    html.Div(v.detail, className="xf-verdict-detail"),
                    *(
                        [
                            html.Div(
                                className="xf-verdict-detail",
                                children=[
                                    "Likely cause: ",
                                    html.B(v.cause.pitfall),
                                    f" — {v.cause.message}",
                                    *(
                                        [html.Br(), html.B("Fix: ", style={"color": "#2b8a3e"}), v.cause.fix]
                                        if v.cause.fix
                                        else []
                                    ),
                                ],
                            )
                        ]
                        if v.cause is not None
                        else []
                    ),
                ],
            ),
            *button,
        ],
    )


def stat_cards(report: Report) -> html.Div:
    c = T.counts(report)
    items = [
        (c["aligned"], "aligned calls"),
        (c["outside"], "outside tolerance (propagated)"),
        (c["own_bad"], "add error on their own"),
        (c["findings"], "findings"),
        (f"{c['torch_only']} / {c['flax_only']}", "unmatched torch / flax"),
    ]
    return html.Div(
        className="xf-stats",
        children=[html.Div(className="xf-stat", children=[html.B(str(n)), html.Span(label)]) for n, label in items],
    )


def finding_card(f: Finding, goto: int | None = None) -> html.Div:
    """One finding: pitfall id, where, message, evidence and fix."""
    head = [html.Span(f.pitfall, className="pid"), " at ", html.Span(T.finding_where(f), className="where")]
    if f.confidence and f.confidence != "confirmed":
        head.append(html.Span(f" ({f.confidence})", className="xf-muted"))
    if goto is not None:
        head += [" ", html.Button("show layer", id={"type": ids.GOTO, "order": goto}, className="xf-link")]
    body = [html.Div(head), html.Div(f.message)]
    ev = T.evidence_items(f)
    if ev:
        body.append(html.Div(className="xf-ev", children=[html.Span([html.I(k), v]) for k, v in ev]))
    if f.fix:
        body.append(html.Div(className="fix", children=[html.B("Fix: "), f.fix]))
    return html.Div(className="xf-finding", children=body)


def _order_of(report: Report, f: Finding) -> int | None:
    for lyr in report.layers:
        if T.findings_for(report, lyr) and f in T.findings_for(report, lyr):
            return lyr.order
    return None


def findings_panel(report: Report) -> html.Div:
    if not report.findings:
        return html.Div(id=ids.FINDINGS)
    return html.Div(
        id=ids.FINDINGS,
        className="xf-card",
        children=[
            html.Div(f"Findings ({len(report.findings)})", className="xf-h"),
            *[finding_card(f, _order_of(report, f)) for f in report.findings],
        ],
    )


class ModuleTable(Component):
    """The module table: a virtualised table drawn by ``assets/module_table.js``.

    Keyword Args:
        id: component id.
        rows: one dict per aligned call (see :func:`grid_rows`).
        columns: ``{field, header, kind, width | flex + min_width, tooltip, header_tooltip}`` per column;
            ``kind`` is ``"int"``, ``"sci"`` (shown as ``1.23e-04``, sorted largest first),
            ``"status"`` (coloured by ``status_colors``) or ``"text"``.
        row_key: the field that identifies a row.
        selected: id of the highlighted row.
        scroll_to: ``{"rowId": id}``; a new value scrolls that row to the middle.
        sort_by: ``{"field", "dir"}`` (``"asc"`` / ``"desc"``); None keeps the rows' order.
        cell_clicked: ``{"rowId", "colId", "value", "timestamp"}``, set on a click (or an arrow key).
        row_height: pixels per row.
        status_colors: CSS colour per status value.
        style, className: of the table's box (header and scrolling rows).
    """

    _namespace = "xfdiff_dashboard"
    _type = "ModuleTable"
    _children_props: list = []
    _base_nodes = ["children"]
    _prop_names = [
        "id",
        "rows",
        "columns",
        "row_key",
        "selected",
        "scroll_to",
        "sort_by",
        "cell_clicked",
        "row_height",
        "status_colors",
        "style",
        "className",
    ]
    _valid_wildcard_attributes: list = []
    available_properties = _prop_names
    available_wildcard_properties: list = []


COLUMNS = [
    {"field": "order", "header": "#", "width": 54, "kind": "int"},
    {
        "field": "status",
        "header": "status",
        "width": 84,
        "kind": "status",
        "header_tooltip": "propagated error within tolerance?",
    },
    {
        "field": "own",
        "header": "own",
        "width": 84,
        "kind": "status",
        "header_tooltip": "the layer's own (teacher-forced) error within tolerance?",
    },
    {"field": "layer", "header": "layer", "flex": 1, "min_width": 150, "tooltip": True},
    {"field": "types", "header": "torch / flax", "width": 136, "tooltip": True},
    {
        "field": "max_abs",
        "header": "max |err|",
        "width": 86,
        "kind": "sci",
        "header_tooltip": "propagated max |port − ref|",
    },
    {
        "field": "local_max_abs",
        "header": "own |err|",
        "width": 86,
        "kind": "sci",
        "header_tooltip": "own (teacher-forced) max |port − ref|",
    },
    {"field": "shape", "header": "shape", "width": 104, "tooltip": True},
    {"field": "rel_l2", "header": "rel L2", "width": 84, "kind": "sci"},
    {"field": "layout", "header": "layout", "width": 96, "tooltip": True},
]
#: Row fields the table needs: the columns and the row id (searching and filtering happen on the server).
GRID_FIELDS = ("rid", *(c["field"] for c in COLUMNS))


def grid_rows(rows: list[dict]) -> list[dict]:
    """Table rows (from :func:`tables.layer_rows`) cut down to the fields the table shows."""
    return [{k: r[k] for k in GRID_FIELDS} for r in rows]


def table_section(report: Report, selected: int | None) -> html.Div:
    rows = T.layer_rows(report)
    statuses = sorted({r["status"] for r in rows}, key=list(F.STATUS_COLORS).index)
    grid = ModuleTable(
        id=ids.GRID,
        rows=grid_rows(rows),
        columns=COLUMNS,
        row_key="rid",
        row_height=30,
        status_colors=F.STATUS_COLORS,
        sort_by=None,
        selected=str(selected) if selected is not None else None,
        scroll_to={"rowId": str(selected)} if selected is not None else None,
        style={"height": "min(calc(100vh - 150px), 640px)", "minHeight": "420px", "width": "100%"},
    )
    return html.Div(
        className="xf-card xf-sticky",
        children=[
            html.Div("Modules (aligned calls, execution order)", className="xf-h"),
            html.Div(
                className="xf-filters",
                children=[
                    dcc.Input(id=ids.SEARCH, type="text", placeholder="search path or type…", debounce=False, value=""),
                    dcc.Checklist(id=ids.STATUS_FILTER, options=statuses, value=statuses, inline=True),
                    dcc.Checklist(
                        id=ids.OWN_ONLY, options=[{"label": "own error only", "value": "own"}], value=[], inline=True
                    ),
                    html.Span(f"{len(rows)} rows", id=ids.ROW_COUNT, className="xf-muted"),
                ],
            ),
            grid,
            html.Div(
                "Click a row (or use the arrow keys), or a point in the plot above, to see the layer in detail; "
                "click a header to sort.",
                className="xf-muted",
            ),
        ],
    )


def detail_section(parts: dict) -> html.Div:
    """The detail card, filled with ``parts`` (see :func:`detail_parts`)."""

    def _graph(key: str) -> dcc.Graph:
        return graph(key, parts[key], SMALL_GRAPH_CONFIG)

    return html.Div(
        id=ids.DETAIL,
        className="xf-card",
        children=[
            html.Div(
                className="xf-detail-head",
                children=[
                    html.Div(parts[ids.DETAIL_TITLE], id=ids.DETAIL_TITLE, className="xf-detail-title"),
                    html.Div(className="xf-spacer"),
                    dcc.RadioItems(
                        id=ids.VARIANT,
                        value="local",
                        inline=True,
                        options=[
                            {"label": " own error (teacher-forced) ", "value": "local"},
                            {"label": " propagated error ", "value": "propagated"},
                        ],
                    ),
                ],
            ),
            html.Table(parts[ids.FACTS], id=ids.FACTS, className="xf-facts"),
            html.Div(parts[ids.DETAIL_FINDINGS], id=ids.DETAIL_FINDINGS),
            html.Div(
                className="xf-figs",
                children=[
                    _graph(ids.FIG_HIST),
                    _graph(ids.FIG_HEATMAP),
                    html.Div(className="wide", children=_graph(ids.FIG_SCATTER)),
                    html.Div(className="wide", children=_graph(ids.FIG_PROFILE)),
                ],
            ),
            html.Div("Worst elements", className="xf-h"),
            html.Div(parts[ids.WORST], id=ids.WORST),
        ],
    )


def detail_parts(report: Report, lyr: LayerDiff | None, which: str) -> dict:
    """Everything the detail view shows for ``lyr``, keyed by component id."""
    if lyr is None:
        empty = F.empty_figure("Select a layer in the table or the plot.")
        return {
            ids.DETAIL_TITLE: "No layer selected",
            ids.FACTS: [],
            ids.DETAIL_FINDINGS: [],
            ids.WORST: [],
            ids.FIG_HIST: empty,
            ids.FIG_HEATMAP: empty,
            ids.FIG_PROFILE: empty,
            ids.FIG_SCATTER: empty,
        }
    figs = F.detail_figures(lyr, which)
    title = [html.Span(lyr.label), " ", html.Span(lyr.status, className=f"badge st-{lyr.status}")]
    if lyr is report.first_divergence:
        title += [" ", html.Span("first divergence", className="badge st-diverged")]
    return {
        ids.DETAIL_TITLE: title,
        ids.FACTS: [html.Tr([html.Td(k), html.Td(v)]) for k, v in T.layer_facts(lyr)],
        ids.DETAIL_FINDINGS: [finding_card(f) for f in T.findings_for(report, lyr)],
        ids.WORST: worst_table(lyr, which),
        ids.FIG_HIST: figs["hist"],
        ids.FIG_HEATMAP: figs["heatmap"],
        ids.FIG_PROFILE: figs["profile"],
        ids.FIG_SCATTER: figs["scatter"],
    }


def worst_table(lyr: LayerDiff, which: str):
    rows = T.worst_elements(lyr, which)
    if not rows:
        return html.Div("No element-level data recorded.", className="xf-muted")
    head = html.Tr([html.Th(h) for h in ("index", "reference", "port", "port − ref")])
    body = [
        html.Tr(
            [html.Td(r["index"]), html.Td(f"{r['ref']:.7g}"), html.Td(f"{r['port']:.7g}"), html.Td(f"{r['diff']:+.2e}")]
        )
        for r in rows
    ]
    return html.Table(className="xf-worst", children=[head, *body])


def _unmatched_table(rows: list[dict], side: str) -> html.Div:
    title = f"Only in {side} ({len(rows)})"
    if not rows:
        return html.Div([html.Div(title, className="xf-h"), html.Div("none", className="xf-muted")])
    head = html.Tr([html.Th(h) for h in ("module", "type", "params", "why unpaired")])
    body = [html.Tr([html.Td(r["path"]), html.Td(r["type"]), html.Td(r["params"]), html.Td(r["reason"])]) for r in rows]
    return html.Div([html.Div(title, className="xf-h"), html.Table([head, *body])])


def unmatched_section(report: Report) -> html.Div:
    return html.Div(
        id=ids.UNMATCHED,
        className="xf-card",
        children=[
            html.Div(
                className="xf-um",
                children=[
                    _unmatched_table(T.unmatched_rows(report, "torch"), "PyTorch"),
                    _unmatched_table(T.unmatched_rows(report, "flax"), "Flax"),
                ],
            ),
        ],
    )


def notes_section(report: Report) -> html.Div:
    notes = [str(n) for n in report.meta.get("notes", [])]
    if not notes:
        return html.Div()
    return html.Div(
        className="xf-card", children=[html.Div("Notes", className="xf-h"), html.Ul([html.Li(n) for n in notes])]
    )
