"""Pure functions from a report (or one of its layers) to plotly figures.

The dashboard, the static HTML report and the notebook build their plots from
these functions, so every view shows the same pictures. Nothing here touches
Dash or a browser; each function returns a ``plotly.graph_objects.Figure``.

Plotly renders a few HTML tags inside text, so every name that comes from a
model is escaped before it reaches a title, label or hover text.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
GRID = "#eceff4"


def esc(text: object) -> str:
    """HTML-escape anything shown in a plot (plotly interprets some tags)."""
    return html.escape(str(text), quote=True)


def sci(x: float | None) -> str:
    """Compact number for labels: ``3.2e-04``; ``—`` when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        return "0"
    return f"{x:.2e}"


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


def scalar(a, default: float = 0.0) -> float:
    """A number stored as a 0-d or 1-element array (or missing)."""
    if a is None:
        return default
    flat = np.asarray(a).ravel()
    return float(flat[0]) if flat.size else default


def _layout(fig: go.Figure, title: str, height: int = 300, **kw) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        font={"family": FONT, "size": 12, "color": "#222"},
        height=height,
        margin={"l": 60, "r": 20, "t": 44, "b": 48},
        showlegend=kw.pop("showlegend", False),
        **kw,
    )
    return fig


def empty_figure(message: str, height: int = 300) -> go.Figure:
    """A blank figure that says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=esc(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"color": "#777", "size": 13})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height=height)


def _tolerance(report: Report) -> float:
    atol = report.meta.get("tolerance", {}).get("atol")
    if atol is not None:
        return float(atol)
    vals = [lyr.atol for lyr in report.layers if lyr.atol == lyr.atol]
    return float(np.median(vals)) if vals else 1e-5


def _floor(values: list[float | None], atol: float) -> float:
    """Where exact zeros sit on a log axis: a decade below the smallest error shown."""
    pos = [v for v in values if v is not None and v == v and 0 < v < math.inf]
    lo = min(pos + [atol])
    return 10 ** (math.floor(math.log10(lo)) - 1)


def _on_log(values: list[float | None], floor: float) -> list[float | None]:
    return [None if v is None or v != v else (floor if v <= 0 else v) for v in values]


def depth_figure(report: Report, selected: int | None = None, height: int = 340) -> go.Figure:
    """Error against depth: propagated and local max |error| per call, log scale.

    Exact zeros sit on a floor a decade below the smallest error, labelled
    "exact".

    Args:
        report: the report.
        selected: ``order`` of a layer to highlight.
        height: figure height in pixels.

    Returns:
        A figure whose points carry the layer's ``order`` as ``customdata``.
    """
    layers = report.layers
    if not layers:
        return empty_figure("No aligned layers to plot.", height)
    atol = _tolerance(report)
    prop = [lyr.max_abs for lyr in layers]
    local = [lyr.local_max_abs for lyr in layers]
    floor = _floor(prop + local, atol)
    x = [lyr.order for lyr in layers]
    hover = [
        f"<b>{esc(lyr.label)}</b><br>{esc(lyr.torch_type or '?')} / {esc(lyr.flax_type or '?')}"
        f"<br>propagated {sci(lyr.max_abs)} · own {sci(lyr.local_max_abs)}<br>status: {esc(lyr.status)}"
        for lyr in layers
    ]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=x, y=_on_log(prop, floor), mode="lines+markers", name="propagated (whole model up to here)",
        line={"color": PROPAGATED_COLOR, "width": 1.5}, marker={"size": 5}, customdata=x,
        hovertext=hover, hoverinfo="text",
    ))
    if any(v is not None for v in local):
        fig.add_trace(_own_trace(layers, floor, x, hover))
    fig.add_hline(y=atol, line={"color": TOL_COLOR, "dash": "dash", "width": 1.2})
    fig.add_annotation(x=0, xref="paper", xanchor="left", y=math.log10(atol), yanchor="bottom", showarrow=False,
                       text=f"tolerance atol {atol:g}", font={"color": TOL_COLOR, "size": 11})
    fig.add_annotation(x=0, xref="paper", xanchor="left", y=math.log10(floor), yanchor="middle", showarrow=False,
                       text="exact (0)", font={"color": "#999", "size": 10}, bgcolor="rgba(255,255,255,0.8)")
    _mark_layer(fig, report.first_divergence, "first divergence", STATUS_COLORS["diverged"])
    if selected is not None and 0 <= selected < len(layers) and layers[selected] is not report.first_divergence:
        _mark_layer(fig, layers[selected], "selected", "#1c7ed6")
    fig.update_yaxes(type="log", title="max |port − ref|", exponentformat="power", dtick=1, gridcolor=GRID)
    fig.update_xaxes(title="call (execution order)", gridcolor=GRID, zeroline=False)
    return _layout(fig, "Error vs depth", height=height, showlegend=True, hovermode="closest",
                   legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"})


def _own_trace(layers: list[LayerDiff], floor: float, x: list[int], hover: list[str]) -> go.Scatter:
    """Own (teacher-forced) error: red where it is outside tolerance, small grey where exact."""
    local = [lyr.local_max_abs for lyr in layers]
    bad = [lyr.local_status not in (None, "ok") for lyr in layers]
    zero = [v is not None and v == 0 for v in local]
    color = [STATUS_COLORS["diverged"] if b else ("#c9ccd1" if z else LOCAL_COLOR) for b, z in zip(bad, zero)]
    size = [11 if b else (4 if z else 7) for b, z in zip(bad, zero)]
    return go.Scatter(
        x=x, y=_on_log(local, floor), mode="markers", name="own (teacher-forced)",
        marker={"color": color, "size": size, "symbol": "diamond", "line": {"width": 0.5, "color": "white"}},
        customdata=x, hovertext=hover, hoverinfo="text",
    )


def _mark_layer(fig: go.Figure, lyr: LayerDiff | None, what: str, color: str) -> None:
    if lyr is None:
        return
    fig.add_vline(x=lyr.order, line={"color": color, "width": 1.5, "dash": "dot"})
    fig.add_annotation(x=lyr.order, y=0.98, yref="paper", yanchor="top", xanchor="left", xshift=4,
                       showarrow=False, text=f"{what}: <b>{esc(lyr.label)}</b>", font={"color": color, "size": 11},
                       bgcolor="rgba(255,255,255,0.85)")


def _decade_ticks(lo: float, hi: float) -> dict:
    vals = list(range(int(math.floor(lo)), int(math.ceil(hi)) + 1))
    step = max(1, len(vals) // 8)
    vals = vals[::step]
    return {"tickvals": vals, "ticktext": [f"1e{v}" for v in vals]}


def histogram_figure(lyr: LayerDiff, which: str = "local", height: int = 280) -> go.Figure:
    """Histogram of log10 |error| over every element of the layer's output."""
    d, kind = detail_arrays(lyr, which)
    if "hist_counts" not in d:
        n_exact = int(scalar(d.get("n_exact")))
        msg = f"every element matches exactly ({n_exact} elements)" if n_exact else "no error histogram recorded"
        return empty_figure(msg, height)
    edges = np.asarray(d["hist_edges"], dtype=float)
    counts = np.asarray(d["hist_counts"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(
        x=centres, y=counts, width=float(edges[1] - edges[0]), marker={"color": LOCAL_COLOR if kind == "local"
                                                                       else PROPAGATED_COLOR},
        customdata=np.stack([10 ** edges[:-1], 10 ** edges[1:]], axis=1),
        hovertemplate="|error| %{customdata[0]:.1e} – %{customdata[1]:.1e}<br>%{y} elements<extra></extra>",
    ))
    if lyr.atol == lyr.atol and lyr.atol > 0:
        fig.add_vline(x=math.log10(lyr.atol), line={"color": TOL_COLOR, "dash": "dash"},
                      annotation_text="atol", annotation_font={"color": TOL_COLOR, "size": 11})
    n_exact = int(scalar(d.get("n_exact")))
    fig.update_xaxes(title="|port − ref| (log10 bins)", **_decade_ticks(edges[0], edges[-1]), gridcolor=GRID)
    fig.update_yaxes(title="elements", gridcolor=GRID)
    extra = f", {n_exact} exact" if n_exact else ""
    return _layout(fig, f"Error distribution ({kind}{extra})", height=height, bargap=0.05)


def _log_grid(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    a = np.asarray(a, dtype=float)
    finite = a[np.isfinite(a) & (a > 0)]
    lo = math.floor(math.log10(finite.min())) if finite.size else -12
    z = np.log10(np.where(np.isfinite(a) & (a > 0), a, 10.0**lo))
    z = np.where(np.isfinite(a), z, np.nan)
    hi = max(float(np.nanmax(z)) if np.isfinite(z).any() else lo + 1, lo + 1)
    return z, float(lo), hi


def heatmap_figure(lyr: LayerDiff, which: str = "local", height: int = 300) -> go.Figure:
    """Max |error| over positions x channels (leading axes flattened, max-pooled)."""
    d, kind = detail_arrays(lyr, which)
    if "heatmap" not in d:
        return empty_figure("no heatmap recorded for this layer", height)
    hm = np.asarray(d["heatmap"], dtype=float)
    shape = tuple(int(s) for s in d.get("shape", ()))
    z, lo, hi = _log_grid(hm)
    n_pos = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    n_ch = shape[-1] if shape else hm.shape[1]
    fig = go.Figure(go.Heatmap(
        z=z.astype(np.float32), zmin=lo, zmax=hi, colorscale="Inferno", reversescale=False,
        colorbar={"title": {"text": "|err|", "side": "right"}, "thickness": 12, **_decade_ticks(lo, hi)},
        hovertemplate="position bin %{y}, channel bin %{x}<br>log10 max |error| %{z:.2f}<extra></extra>",
    ))
    pooled = " (max-pooled)" if hm.shape != (n_pos, n_ch) else ""
    fig.update_xaxes(title=f"channels: last axis, {n_ch}{pooled}", showgrid=False)
    fig.update_yaxes(title=f"positions: {n_pos}", autorange="reversed", showgrid=False)
    return _layout(fig, f"Where the error is ({kind}, shape {shape})", height=height)


def profile_figure(lyr: LayerDiff, which: str = "local", height: int = 260) -> go.Figure:
    """Per-channel max |error| (last axis), log scale, with the tolerance line."""
    d, kind = detail_arrays(lyr, which)
    if "profile" not in d:
        return empty_figure("no per-channel profile recorded", height)
    prof = np.asarray(d["profile"], dtype=float)
    floor = _floor(prof.tolist(), lyr.atol if lyr.atol == lyr.atol else 1e-5)
    y = np.where(np.isfinite(prof), np.maximum(prof, floor), np.nan)
    fig = go.Figure(go.Scatter(
        x=np.arange(prof.size), y=y.astype(np.float32), mode="lines", fill="tozeroy",
        line={"color": LOCAL_COLOR if kind == "local" else PROPAGATED_COLOR, "width": 1.2},
        hovertemplate="channel %{x}<br>max |error| %{y:.2e}<extra></extra>",
    ))
    if lyr.atol == lyr.atol and lyr.atol > 0:
        fig.add_hline(y=lyr.atol, line={"color": TOL_COLOR, "dash": "dash", "width": 1})
    fig.update_yaxes(type="log", title="max |error|", exponentformat="power", dtick=1, gridcolor=GRID)
    fig.update_xaxes(title="channel" + (" (max-pooled)" if prof.size == 256 else ""), gridcolor=GRID)
    return _layout(fig, f"Per-channel max error ({kind})", height=height)


def scatter_figure(lyr: LayerDiff, which: str = "local", height: int = 300) -> go.Figure:
    """Sampled elements: port against reference, and the difference against reference."""
    d, kind = detail_arrays(lyr, which)
    if "scatter_ref" not in d:
        return empty_figure("no sample recorded for this layer", height)
    r = np.asarray(d["scatter_ref"], dtype=float)
    p = np.asarray(d["scatter_port"], dtype=float)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14,
                        subplot_titles=("port vs reference", "port − reference vs reference"))
    color = LOCAL_COLOR if kind == "local" else PROPAGATED_COLOR
    marker = {"size": 4, "color": color, "opacity": 0.75}
    fig.add_trace(go.Scatter(x=r.astype(np.float32), y=p.astype(np.float32), mode="markers", marker=marker,
                             hovertemplate="ref %{x:.5g}<br>port %{y:.5g}<extra></extra>"), 1, 1)
    finite = np.isfinite(r)
    if finite.any():
        lo, hi = float(r[finite].min()), float(r[finite].max())
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", hoverinfo="skip",
                                 line={"color": "#adb5bd", "dash": "dot", "width": 1}), 1, 1)
        grid = np.linspace(lo, hi, 41)
        band = (lyr.atol if lyr.atol == lyr.atol else 0.0) + (lyr.rtol if lyr.rtol == lyr.rtol else 0.0) * np.abs(grid)
        for sign in (1, -1):
            fig.add_trace(go.Scatter(x=grid.astype(np.float32), y=(sign * band).astype(np.float32), mode="lines",
                                     hoverinfo="skip", line={"color": TOL_COLOR, "dash": "dash", "width": 1}), 1, 2)
    fig.add_trace(go.Scatter(x=r.astype(np.float32), y=(p - r).astype(np.float32), mode="markers", marker=marker,
                             hovertemplate="ref %{x:.5g}<br>port − ref %{y:.2e}<extra></extra>"), 1, 2)
    fig.update_xaxes(title="reference value", gridcolor=GRID)
    fig.update_yaxes(gridcolor=GRID)
    fig.update_yaxes(title="port value", row=1, col=1)
    fig.update_yaxes(title="port − ref", exponentformat="power", row=1, col=2)
    for a in fig.layout.annotations:
        a.font = {"size": 12}
    return _layout(fig, f"Sampled elements ({kind}, {r.size} points; tolerance band dashed)", height=height)


def detail_figures(lyr: LayerDiff, which: str = "local") -> dict[str, go.Figure]:
    """All figures of a layer's detail view, keyed ``hist``, ``heatmap``, ``profile``, ``scatter``."""
    return {
        "hist": histogram_figure(lyr, which),
        "heatmap": heatmap_figure(lyr, which),
        "profile": profile_figure(lyr, which),
        "scatter": scatter_figure(lyr, which),
    }
