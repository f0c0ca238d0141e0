"""Dashboard callbacks: thin wrappers around plain functions that tests call directly."""

from __future__ import annotations

from dash import ALL, Dash, Input, Output, Patch, State, ctx, dcc, no_update

from ..report import Report
from ..storage import report_bytes
from ..views import figures as F
from ..views import tables as T
from ..views.html_report import report_html
from . import ids
from .layout import detail_parts, grid_rows

DETAIL_OUTPUTS = (
    ids.DETAIL_TITLE,
    ids.FACTS,
    ids.DETAIL_FINDINGS,
    ids.WORST,
    ids.FIG_HIST,
    ids.FIG_HEATMAP,
    ids.FIG_PROFILE,
    ids.FIG_SCATTER,
)


def selection_from(report: Report, trigger, cell, click, current):
    """The layer ``order`` a user interaction points at (``current`` when it points nowhere).

    Args:
        report: the report.
        trigger: id of the component that fired (a string, or a dict for finding links).
        cell: the module table's ``cell_clicked`` value.
        click: the depth plot's ``clickData``.
        current: the selection before the interaction.
    """
    order = None
    if trigger == ids.GRID and cell:
        order = cell.get("rowId")
    elif trigger == ids.DEPTH and click and click.get("points"):
        order = click["points"][0].get("customdata", click["points"][0].get("x"))
    elif trigger == ids.GOTO_FIRST and report.first_divergence is not None:
        order = report.first_divergence.order
    elif isinstance(trigger, dict) and trigger.get("type") == ids.GOTO:
        order = trigger.get("order")
    lyr = T.layer_by_order(report, order)
    return lyr.order if lyr is not None else current


def detail_values(report: Report, order, which: str) -> list:
    """The detail view's outputs, in :data:`DETAIL_OUTPUTS` order."""
    parts = detail_parts(report, T.layer_by_order(report, order), which or "local")
    return [parts[k] for k in DETAIL_OUTPUTS]


def table_values(rows: list[dict], statuses, own_only, search) -> tuple[list[dict], str]:
    """Rows to show (cut down to the table's fields) and the count text for the current filters."""
    shown = T.filter_rows(rows, statuses=list(statuses or []), search=search or "", own_only=bool(own_only))
    return grid_rows(shown), f"{len(shown)} of {len(rows)} rows"


def depth_marks(report: Report, order) -> Patch:
    """A partial update of the depth plot: only its marker lines and labels move with the selection."""
    layout = F.depth_figure(report, order)["layout"]
    patch = Patch()
    patch["layout"]["shapes"] = layout.get("shapes", [])
    patch["layout"]["annotations"] = layout.get("annotations", [])
    return patch


def register(app: Dash, report: Report) -> None:
    """Attach every callback of the dashboard for ``report`` to ``app``.

    Selection and detail are one callback, so a click costs one round trip:
    it sets the selection, highlights the table row, moves the depth plot's
    marker (a partial update) and fills the detail view.
    """
    rows = T.layer_rows(report)
    figure_ids = {ids.FIG_HIST, ids.FIG_HEATMAP, ids.FIG_PROFILE, ids.FIG_SCATTER}

    @app.callback(
        Output(ids.SELECTED, "data"),
        Output(ids.GRID, "selected"),
        Output(ids.GRID, "scroll_to"),
        Output(ids.DEPTH, "figure"),
        *[Output(k, "figure" if k in figure_ids else "children") for k in DETAIL_OUTPUTS],
        Input(ids.GRID, "cell_clicked"),
        Input(ids.DEPTH, "clickData"),
        Input(ids.GOTO_FIRST, "n_clicks"),
        Input({"type": ids.GOTO, "order": ALL}, "n_clicks"),
        Input(ids.VARIANT, "value"),
        State(ids.SELECTED, "data"),
        prevent_initial_call=True,  # the page is built with the first detail in place
    )
    def _select(cell, click, _first, _links, which, current):
        trigger = ctx.triggered_id
        unchanged = [no_update] * (4 + len(DETAIL_OUTPUTS))
        if isinstance(trigger, dict) and not any(t.get("value") for t in ctx.triggered):
            return unchanged  # a finding link was rendered, not clicked
        order = selection_from(report, trigger, cell, click, current)
        detail = detail_values(report, order, which)
        if trigger == ids.VARIANT or order == current:
            return [no_update] * 4 + detail
        scroll = no_update if trigger == ids.GRID else {"rowId": str(order)}
        return [order, str(order), scroll, depth_marks(report, order), *detail]

    @app.callback(
        Output(ids.GRID, "rows"),
        Output(ids.ROW_COUNT, "children"),
        Input(ids.STATUS_FILTER, "value"),
        Input(ids.OWN_ONLY, "value"),
        Input(ids.SEARCH, "value"),
        prevent_initial_call=True,
    )
    def _filter(statuses, own_only, search):
        return table_values(rows, statuses, own_only, search)

    @app.callback(
        Output(ids.DOWNLOAD, "data"),
        Input(ids.DOWNLOAD_XFD, "n_clicks"),
        Input(ids.DOWNLOAD_HTML, "n_clicks"),
        prevent_initial_call=True,
    )
    def _download(_xfd, _html):
        return download_payload(report, ctx.triggered_id)


def download_payload(report: Report, which: str):
    """``dcc.Download`` data for the saved report (``.xfd``) or the HTML report."""
    if which == ids.DOWNLOAD_XFD:
        return dcc.send_bytes(report_bytes(report), "report.xfd")
    if which == ids.DOWNLOAD_HTML:
        return dcc.send_string(report_html(report), "report.html")
    return no_update
