"""Pure functions from a report (or one of its layers) to plotly figures.

The dashboard, the static HTML report and the notebook build their plots from
these functions, so every view shows the same pictures. Each function returns
a plotly figure *dict* (``{"data": [...], "layout": {...}}``): Dash and
plotly.js take it as is, ``plotly.graph_objects.Figure(d)`` makes an object of
it. Dicts rather than ``Figure`` objects because validating thousands of
traces for a large report's HTML file would take minutes; the styling is
spelled out here instead of using a named template, which plotly.js alone
would not know.

Plotly renders a few HTML tags inside text, so every name that comes from a
model is escaped before it reaches a title, label or hover text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .escape import esc

if TYPE_CHECKING:
    from ..report import LayerDiff, Report

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
STATUS_COLORS = {
    "ok": "#2e7d32",
    "diverged": "#c62828",
    "nonfinite": "#6a1b9a",
    "shape_mismatch": "#ef6c00",
    "unmatched": "#757575",
}
PROPAGATED_COLOR = "#7b8fb8"
LOCAL_COLOR = "#e8590c"
TOL_COLOR = "#2b8a3e"
SELECT_COLOR = "#1c7ed6"
GRID = "#eceff4"
# Matplotlib's "inferno" at ten stops (plotly.js knows no colour scale by that name).
INFERNO = [
    [i / 9, c]
    for i, c in enumerate(
        ("#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06", "#f7d13d", "#fcffa4")
    )
]
AXIS = {
    "gridcolor": GRID,
    "linecolor": "#ced4da",
    "zerolinecolor": "#dee2e6",
    "ticks": "outside",
    "tickcolor": "#ced4da",
    "automargin": True,
    "title": {"font": {"size": 12}},
}


def fmt(x: float | None) -> str:
    """Compact number: ``3.2e-04``; ``—`` for missing."""
    if x is None or x != x:
        return "—"
    if x == 0:
        return "0"
    return f"{x:.1e}"


def sci(x: float | None) -> str:
    """Compact number for labels: ``3.2e-04``; ``—`` when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        return "0"
    return f"{x:.2e}"


def scalar(a, default: float = 0.0) -> float:
    """A number stored as a 0-d or 1-element array (or missing)."""
    if a is None:
        return default
    flat = np.asarray(a).ravel()
    return float(flat[0]) if flat.size else default


def detail_arrays(lyr: LayerDiff, which: str = "local") -> tuple[dict, str]:
    """The detail arrays to draw and which kind they are.

    Args:
        lyr: the layer.
        which: ``"local"`` (the layer's own error under teacher forcing) or
            ``"propagated"``; local falls back to propagated when not measured.

    Returns:
        ``(arrays, kind)`` where ``kind`` is ``"local"`` or ``"propagated"``.
    """
    if which == "local" and lyr.local_detail:
        return lyr.local_detail, "local"
    return lyr.detail, "propagated"


def _axis(**kw) -> dict:
    out = {**AXIS, **kw}
    if isinstance(out.get("title"), str):
        out["title"] = {"text": out["title"], "font": {"size": 12}}
    return out


# Margins wide enough for the usual tick labels and axis titles. Axes keep
# ``automargin`` for unusual labels, but when the margins already fit, plotly.js
# draws each plot once instead of drawing it again with pushed-out margins.
MARGIN = {"l": 60, "r": 20, "t": 44, "b": 48}
LOG_Y_MARGIN = {**MARGIN, "l": 74}  # "10⁻¹²" tick labels and a title


def _layout(title: str, height: int = 300, **kw) -> dict:
    return {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        "font": {"family": FONT, "size": 12, "color": "#222"},
        "height": height,
        "margin": dict(MARGIN),
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "hoverlabel": {"font": {"family": FONT}},
        "showlegend": False,
        **kw,
    }


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def empty_figure(message: str, height: int = 300) -> dict:
    """A blank figure that says why there is nothing to draw."""
    return {
        "data": [],
        "layout": _layout(
            "",
            height,
            xaxis={"visible": False},
            yaxis={"visible": False},
            annotations=[
                {
                    "text": esc(message),
                    "showarrow": False,
                    "x": 0.5,
                    "y": 0.5,
                    "xref": "paper",
                    "yref": "paper",
                    "font": {"color": "#777", "size": 13},
                }
            ],
        ),
    }


def tolerance_of(report: Report) -> float:
    """The absolute tolerance to draw: the report's, else the layers' (dtype default)."""
    atol = report.meta.get("tolerance", {}).get("atol")
    if atol is not None:
        return float(atol)
    vals = [lyr.atol for lyr in report.layers if lyr.atol == lyr.atol]
    return float(np.median(vals)) if vals else 1e-5


def log_floor(values: list[float | None], atol: float) -> float:
    """Where exact zeros sit on a log axis: a decade below the smallest error shown."""
    pos = [v for v in values if v is not None and v == v and 0 < v < math.inf]
    lo = min(pos + [atol])
    return 10 ** (math.floor(math.log10(lo)) - 1)


def on_log(values: list[float | None], floor: float) -> list[float | None]:
    """Values ready for a log axis: zeros and negatives at ``floor``, NaN and infinity left out (None)."""
    return [None if v is None or v != v else (floor if v <= 0 else (v if v < math.inf else None)) for v in values]


def _hline(y: float, color: str, xref: str = "paper", yref: str = "y", dash: str = "dash") -> dict:
    return {
        "type": "line",
        "xref": xref,
        "x0": 0,
        "x1": 1,
        "yref": yref,
        "y0": y,
        "y1": y,
        "line": {"color": color, "dash": dash, "width": 1.2},
    }


def _vline(x: float, color: str, dash: str = "dot") -> dict:
    return {
        "type": "line",
        "xref": "x",
        "x0": x,
        "x1": x,
        "yref": "paper",
        "y0": 0,
        "y1": 1,
        "line": {"color": color, "dash": dash, "width": 1.5},
    }


def _note(text: str, color: str, **pos) -> dict:
    return {
        "text": text,
        "showarrow": False,
        "font": {"color": color, "size": 11},
        "bgcolor": "rgba(255,255,255,0.85)",
        **pos,
    }


def depth_figure(report: Report, selected: int | None = None, height: int = 340) -> dict:
    """Error against depth: propagated and own (teacher-forced) max |error| per call, log scale.

    Exact zeros sit on a floor a decade below the smallest error, labelled
    "exact (0)"; the tolerance is a dashed line; the first divergence and the
    selected layer are marked.

    Args:
        report: the report.
        selected: ``order`` of a layer to highlight.
        height: figure height in pixels.

    Returns:
        A figure dict whose points carry the layer's ``order`` as ``customdata``.
    """
    layers = report.layers
    if not layers:
        return empty_figure("No aligned layers to plot.", height)
    atol = tolerance_of(report)
    prop = [lyr.max_abs for lyr in layers]
    local = [lyr.local_max_abs for lyr in layers]
    floor = log_floor(prop + local, atol)
    x = [lyr.order for lyr in layers]
    hover = [
        f"<b>{esc(lyr.label)}</b><br>{esc(lyr.torch_type or '?')} / {esc(lyr.flax_type or '?')}"
        f"<br>propagated {sci(lyr.max_abs)} · own {sci(lyr.local_max_abs)}<br>status: {esc(lyr.status)}"
        for lyr in layers
    ]
    data = [
        {
            # Markers on the line only while they can be told apart; hover and click still
            # work on the line's vertices, and a thousand fewer SVG paths draw faster.
            "type": "scatter",
            "x": x,
            "y": on_log(prop, floor),
            "mode": "lines+markers" if len(x) <= 300 else "lines",
            "name": "propagated (whole model up to here)",
            "line": {"color": PROPAGATED_COLOR, "width": 1.5},
            "marker": {"size": 5},
            "customdata": x,
            "hovertext": hover,
            "hoverinfo": "text",
        }
    ]
    data += _own_traces(layers, floor, x, hover)
    shapes, notes = _depth_marks(report, selected, atol, floor)
    layout = _layout(
        "Error vs depth",
        height,
        showlegend=True,
        hovermode="closest",
        shapes=shapes,
        annotations=notes,
        margin=dict(LOG_Y_MARGIN),
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        xaxis=_axis(title="call (execution order)", zeroline=False),
        yaxis=_axis(title="max |port − ref|", type="log", exponentformat="power", dtick=1),
    )
    return {"data": data, "layout": layout}


def _depth_marks(report: Report, selected: int | None, atol: float, floor: float) -> tuple[list, list]:
    """Shapes and labels of the depth plot: tolerance, exact floor, first divergence, selection."""
    layers = report.layers
    shapes = [_hline(atol, TOL_COLOR)]
    notes = [
        _note(
            f"tolerance atol {atol:g}",
            TOL_COLOR,
            x=0,
            xref="paper",
            xanchor="left",
            y=math.log10(atol),
            yanchor="bottom",
        ),
        _note("exact (0)", "#999", x=1, xref="paper", xanchor="right", y=math.log10(floor), yanchor="bottom"),
    ]
    marks = [(report.first_divergence, "first divergence", STATUS_COLORS["diverged"])]
    if selected is not None and 0 <= selected < len(layers) and layers[selected] is not report.first_divergence:
        marks.append((layers[selected], "selected", SELECT_COLOR))
    for k, (lyr, what, color) in enumerate(marks):
        if lyr is not None:
            shapes.append(_vline(lyr.order, color))
            notes.append(
                _note(
                    f"{what}: <b>{esc(lyr.label)}</b>",
                    color,
                    x=lyr.order,
                    y=0.98 - 0.1 * k,
                    yref="paper",
                    yanchor="top",
                    xanchor="left",
                    xshift=4,
                )
            )
    return shapes, notes


def _own_traces(layers: list[LayerDiff], floor: float, x: list[int], hover: list[str]) -> list[dict]:
    """Own (teacher-forced) error as three uniformly styled traces: within tolerance, exact, outside.

    Uniform styles per trace draw much faster than per-point colours on a 1,000-call report.
    """
    groups: dict[str, list[int]] = {"own": [], "exact": [], "bad": []}
    for i, lyr in enumerate(layers):
        if lyr.local_max_abs is None or lyr.local_max_abs != lyr.local_max_abs:
            continue
        key = "bad" if lyr.local_status not in (None, "ok") else ("exact" if lyr.local_max_abs == 0 else "own")
        groups[key].append(i)
    styles = {
        "own": ("own (teacher-forced)", LOCAL_COLOR, 7),
        "exact": ("own: exact", "#c9ccd1", 4),
        "bad": ("own error outside tolerance", STATUS_COLORS["diverged"], 12),
    }
    out = []
    for key, idx in groups.items():
        if not idx:
            continue
        name, color, size = styles[key]
        out.append(
            {
                "type": "scatter",
                "x": [x[i] for i in idx],
                "mode": "markers",
                "name": name,
                "y": [floor if layers[i].local_max_abs <= 0 else layers[i].local_max_abs for i in idx],
                "marker": {"color": color, "size": size, "symbol": "diamond", "line": {"width": 0.5, "color": "white"}},
                "customdata": [x[i] for i in idx],
                "hovertext": [hover[i] for i in idx],
                "hoverinfo": "text",
                "showlegend": key != "exact",
            }
        )
    return out


def _decade_ticks(lo: float, hi: float, most: int = 8) -> dict:
    vals = list(range(int(math.floor(lo)), int(math.ceil(hi)) + 1))
    vals = vals[:: max(1, math.ceil(len(vals) / most))]
    return {"tickvals": vals, "ticktext": [f"1e{v}" for v in vals]}


def histogram_figure(lyr: LayerDiff, which: str = "local", height: int = 280) -> dict:
    """Histogram of log10 |error| over every element of the layer's output, with the tolerance."""
    d, kind = detail_arrays(lyr, which)
    n_exact = int(scalar(d.get("n_exact")))
    if "hist_counts" not in d:
        msg = f"every element matches exactly ({n_exact} elements)" if n_exact else "no error histogram recorded"
        return empty_figure(msg, height)
    edges = np.asarray(d["hist_edges"], dtype=float)
    bar = {
        "type": "bar",
        "x": _f32((edges[:-1] + edges[1:]) / 2),
        "y": np.asarray(d["hist_counts"], dtype=np.int32),
        "width": float(edges[1] - edges[0]),
        "marker": {"color": LOCAL_COLOR if kind == "local" else PROPAGATED_COLOR},
        "customdata": _f32(np.stack([10 ** edges[:-1], 10 ** edges[1:]], axis=1)),
        "hovertemplate": "|error| %{customdata[0]:.1e} – %{customdata[1]:.1e}<br>%{y} elements<extra></extra>",
    }
    shapes, notes = [], []
    if lyr.atol == lyr.atol and lyr.atol > 0:
        shapes.append(_vline(math.log10(lyr.atol), TOL_COLOR, dash="dash"))
        notes.append(_note("atol", TOL_COLOR, x=math.log10(lyr.atol), y=1, yref="paper", yanchor="bottom"))
    extra = f", {n_exact} exact" if n_exact else ""
    layout = _layout(
        f"Error distribution ({kind}{extra})",
        height,
        bargap=0.05,
        shapes=shapes,
        annotations=notes,
        margin={**MARGIN, "l": 70, "r": 30},  # counts up to "100k"; the last decade's label
        xaxis=_axis(
            title="|port − ref| (log10 bins)", **_decade_ticks(edges[0], edges[-1], most=5), tickangle=0
        ),  # at most five labels, upright: they fit a narrow plot
        yaxis=_axis(title="elements"),
    )
    return {"data": [bar], "layout": layout}


def _log_grid(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    a = np.asarray(a, dtype=float)
    ok = np.isfinite(a) & (a > 0)
    lo = math.floor(math.log10(a[ok].min())) if ok.any() else -12
    z = np.log10(np.where(ok, a, 10.0**lo))
    z = np.where(np.isfinite(a), z, np.nan)
    hi = max(float(np.nanmax(z)) if np.isfinite(z).any() else lo + 1, lo + 1)
    return z, float(lo), hi


def heatmap_figure(lyr: LayerDiff, which: str = "local", height: int = 300) -> dict:
    """Max |error| over positions x channels (leading axes flattened, max-pooled), log colour scale."""
    d, kind = detail_arrays(lyr, which)
    if "heatmap" not in d:
        return empty_figure("no heatmap recorded for this layer", height)
    hm = np.asarray(d["heatmap"], dtype=float)
    shape = tuple(int(s) for s in np.asarray(d.get("shape", hm.shape)).ravel())
    z, lo, hi = _log_grid(hm)
    n_pos = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    n_ch = shape[-1] if shape else hm.shape[1]
    trace = {
        "type": "heatmap",
        "z": _f32(z),
        "zmin": lo,
        "zmax": hi,
        "colorscale": INFERNO,
        "colorbar": {"title": {"text": "|err|", "side": "right"}, "thickness": 12, "xpad": 4, **_decade_ticks(lo, hi)},
        "hovertemplate": "position bin %{y}, channel bin %{x}<br>log10 max |error| %{z:.2f}<extra></extra>",
    }
    pooled = " (max-pooled)" if hm.shape != (n_pos, n_ch) else ""
    layout = _layout(
        f"Where the error is ({kind}, shape {shape})",
        height,
        margin={**MARGIN, "r": 92},  # the colour bar, with labels down to "1e-10"
        xaxis=_axis(title=f"channels: last axis, {n_ch}{pooled}", showgrid=False),
        yaxis=_axis(title=f"positions: {n_pos}", autorange="reversed", showgrid=False),
    )
    return {"data": [trace], "layout": layout}


def profile_figure(lyr: LayerDiff, which: str = "local", height: int = 250) -> dict:
    """Per-channel max |error| (last axis), log scale, with the tolerance line."""
    d, kind = detail_arrays(lyr, which)
    if "profile" not in d:
        return empty_figure("no per-channel profile recorded", height)
    prof = np.asarray(d["profile"], dtype=float)
    atol = lyr.atol if lyr.atol == lyr.atol else 1e-5
    floor = log_floor(prof.tolist(), atol)
    y = np.where(np.isfinite(prof), np.maximum(prof, floor), np.nan)
    trace = {
        "type": "scatter",
        "y": _f32(y),
        "mode": "lines",  # x defaults to the channel index
        "fill": "tozeroy",
        "line": {"color": LOCAL_COLOR if kind == "local" else PROPAGATED_COLOR, "width": 1.2},
        "hovertemplate": "channel %{x}<br>max |error| %{y:.2e}<extra></extra>",
    }
    pooled = " (max-pooled)" if prof.size == 256 else ""
    layout = _layout(
        f"Per-channel max error ({kind})",
        height,
        shapes=[_hline(atol, TOL_COLOR)],
        margin=dict(LOG_Y_MARGIN),
        xaxis=_axis(title="channel (last axis)" + pooled),
        yaxis=_axis(title="max |error|", type="log", exponentformat="power", dtick=1),
    )
    return {"data": [trace], "layout": layout}


def scatter_figure(lyr: LayerDiff, which: str = "local", height: int = 300) -> dict:
    """Sampled elements: port against reference, and port − reference against reference with the tolerance band."""
    d, kind = detail_arrays(lyr, which)
    if "scatter_ref" not in d:
        return empty_figure("no sample recorded for this layer", height)
    r = np.asarray(d["scatter_ref"], dtype=float)
    p = np.asarray(d["scatter_port"], dtype=float)
    marker = {"size": 4, "color": LOCAL_COLOR if kind == "local" else PROPAGATED_COLOR, "opacity": 0.75}
    data = [
        {
            "type": "scatter",
            "x": _f32(r),
            "y": _f32(p),
            "mode": "markers",
            "marker": marker,
            "hovertemplate": "ref %{x:.5g}<br>port %{y:.5g}<extra></extra>",
        },
        {
            "type": "scatter",
            "x": _f32(r),
            "y": _f32(p - r),
            "mode": "markers",
            "marker": marker,
            "xaxis": "x2",
            "yaxis": "y2",
            "hovertemplate": "ref %{x:.5g}<br>port − ref %{y:.2e}<extra></extra>",
        },
    ]
    finite = np.isfinite(r)
    if finite.any():
        lo, hi = float(r[finite].min()), float(r[finite].max())
        data.append(
            {
                "type": "scatter",
                "x": [lo, hi],
                "y": [lo, hi],
                "mode": "lines",
                "hoverinfo": "skip",
                "line": {"color": "#adb5bd", "dash": "dot", "width": 1},
            }
        )
        grid = np.linspace(lo, hi, 41)
        atol = lyr.atol if lyr.atol == lyr.atol else 0.0
        band = atol + (lyr.rtol if lyr.rtol == lyr.rtol else 0.0) * np.abs(grid)
        for sign in (1, -1):
            data.append(
                {
                    "type": "scatter",
                    "x": _f32(grid),
                    "y": _f32(sign * band),
                    "mode": "lines",
                    "xaxis": "x2",
                    "yaxis": "y2",
                    "hoverinfo": "skip",
                    "line": {"color": TOL_COLOR, "dash": "dash", "width": 1},
                }
            )
    heads = [
        {
            "text": t,
            "x": x,
            "xref": "paper",
            "y": 1.0,
            "yref": "paper",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 12},
        }
        for t, x in (("port vs reference", 0.2), ("port − reference vs reference", 0.8))
    ]
    layout = _layout(
        f"Sampled elements ({kind}, {r.size} points; tolerance band dashed)",
        height,
        annotations=heads,
        margin={"l": 60, "r": 20, "t": 60, "b": 48},
        xaxis=_axis(title="reference value", domain=[0, 0.42]),
        yaxis=_axis(title="port value"),
        xaxis2=_axis(title="reference value", domain=[0.58, 1], anchor="y2"),
        yaxis2=_axis(title="port − ref", anchor="x2", exponentformat="power"),
    )
    return {"data": data, "layout": layout}


def detail_figures(lyr: LayerDiff, which: str = "local") -> dict[str, dict]:
    """All figures of a layer's detail view, keyed ``hist``, ``heatmap``, ``profile``, ``scatter``."""
    return {
        "hist": histogram_figure(lyr, which),
        "heatmap": heatmap_figure(lyr, which),
        "profile": profile_figure(lyr, which),
        "scatter": scatter_figure(lyr, which),
    }
