"""The notebook view (``Report._repr_html_``): a compact card with an inline SVG depth plot.

A notebook may show many reports; embedding plotly.js (4.8 MB) in each output
would make the notebook heavy, and loading it from a CDN would break offline.
So the card draws the error-vs-depth plot as a small SVG and uses inline
styles only (notebook sanitisers drop ``<style>`` blocks). Every string from a
model is escaped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import figures as F
from . import tables as T
from .escape import esc

if TYPE_CHECKING:
    from ..report import Report

_MONO = "ui-monospace,Menlo,Consolas,monospace"


def _scale_y(lo: float, hi: float, top: float, bottom: float):
    llo, lhi = math.log10(lo), math.log10(hi)
    span = max(lhi - llo, 1e-9)
    return lambda v: bottom - (math.log10(v) - llo) / span * (bottom - top)


def depth_svg(report: Report, width: int = 720, height: int = 200) -> str:
    """Error vs depth as an SVG string (propagated line, own-error diamonds, tolerance, first divergence)."""
    layers = report.layers
    if not layers:
        return ""
    atol = F.tolerance_of(report)
    prop = [lyr.max_abs for lyr in layers]
    own = [lyr.local_max_abs for lyr in layers]
    floor = F.log_floor(prop + own, atol)
    vals = [v for v in F.on_log(prop + own, floor) if v is not None] + [atol, floor]
    hi = 10 ** math.ceil(math.log10(max(vals)))
    left, right, top, bottom = 52, width - 10, 12, height - 26

    def sx(o):
        return left + o / max(len(layers) - 1, 1) * (right - left)

    sy = _scale_y(floor, hi, top, bottom)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'style="font-family:{F.FONT};font-size:10px;background:#fff">'
    ]
    for e in range(int(math.log10(floor)), int(math.log10(hi)) + 1):
        y = sy(10.0**e)
        label = "exact" if e == int(math.log10(floor)) else f"1e{e}"
        parts.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{F.GRID}"/>'
            f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#666">{label}</text>'
        )
    parts.append(_atol_line(sy(atol), left, right, atol))
    line = zip(layers, F.on_log(prop, floor), strict=True)
    pts = " ".join(f"{sx(lyr.order):.1f},{sy(v):.1f}" for lyr, v in line if v)
    parts.append(f'<polyline points="{pts}" fill="none" stroke="{F.PROPAGATED_COLOR}" stroke-width="1.4"/>')
    parts += _own_marks(layers, F.on_log(own, floor), sx, sy)
    fd = report.first_divergence
    if fd is not None:
        x = sx(fd.order)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="{F.STATUS_COLORS["diverged"]}"'
            f' stroke-dasharray="2,3"/><text x="{x + 4:.1f}" y="{top + 9}" fill="'
            f'{F.STATUS_COLORS["diverged"]}">first divergence: {esc(fd.label)}</text>'
        )
    parts.append(
        f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#666">'
        f"call (execution order) · line: propagated max |error| · diamonds: own (teacher-forced)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _atol_line(y: float, left: float, right: float, atol: float) -> str:
    return (
        f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{F.TOL_COLOR}" stroke-dasharray="5,4"/>'
        f'<text x="{left + 4}" y="{y - 3:.1f}" fill="{F.TOL_COLOR}">atol {atol:g}</text>'
    )


def _own_marks(layers, ys, sx, sy) -> list[str]:
    out = []
    for lyr, v in zip(layers, ys, strict=True):
        if v is None:
            continue
        bad = lyr.local_status not in (None, "ok")
        exact = lyr.local_max_abs == 0
        r = 4.5 if bad else (1.5 if exact else 2.5)
        color = F.STATUS_COLORS["diverged"] if bad else ("#c9ccd1" if exact else F.LOCAL_COLOR)
        x, y = sx(lyr.order), sy(v)
        tip = f"<title>{esc(lyr.label)}: own {F.sci(lyr.local_max_abs)}</title>" if bad else ""
        out.append(
            f'<path d="M{x:.1f},{y - r:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r:.1f}L{x - r:.1f},{y:.1f}Z" '
            f'fill="{color}">{tip}</path>'
        )
    return out


def _verdict_block(report: Report) -> str:
    v = T.verdict(report)
    color = {"diverged": F.STATUS_COLORS["diverged"], "outside": "#ef6c00"}.get(v.level, F.STATUS_COLORS["ok"])
    bg = {"diverged": "#fff7f7", "outside": "#fffaf3"}.get(v.level, "#f5fbf6")
    fd = report.first_divergence
    paths = ""
    if fd is not None:
        paths = (
            f'<div style="font-family:{_MONO};font-size:12px;color:#444;margin-top:3px">torch: '
            f"{esc(T.path_text(fd.torch_path))} · flax: {esc(T.path_text(fd.flax_path))}</div>"
        )
    cause = ""
    if v.cause is not None:
        fix = f'<br><b style="color:{F.TOL_COLOR}">Fix:</b> {esc(v.cause.fix)}' if v.cause.fix else ""
        cause = (
            f'<div style="margin-top:5px">Likely cause: <b style="font-family:{_MONO}">{esc(v.cause.pitfall)}'
            f"</b> — {esc(v.cause.message)}{fix}</div>"
        )
    return (
        f'<div style="border-left:5px solid {color};background:{bg};padding:8px 12px;border-radius:4px;'
        f'margin:6px 0"><div style="font-size:15px;font-weight:650">{esc(v.headline)}</div>'
        f'<div style="color:#444">{esc(v.detail)}</div>{paths}{cause}</div>'
    )


def _findings_block(report: Report, limit: int = 5) -> str:
    if not report.findings:
        return ""
    items = []
    for f in report.findings[:limit]:
        fix = f'<br><span style="color:{F.TOL_COLOR}">fix:</span> {esc(f.fix)}' if f.fix else ""
        items.append(
            f'<li><b style="font-family:{_MONO}">{esc(f.pitfall)}</b> at '
            f'<span style="font-family:{_MONO}">{esc(T.finding_where(f))}</span>: {esc(f.message)}{fix}</li>'
        )
    more = f"<li>… and {len(report.findings) - limit} more</li>" if len(report.findings) > limit else ""
    return (
        f'<div style="margin-top:6px"><b>Findings ({len(report.findings)})</b><ul style="margin:4px 0">'
        f"{''.join(items)}{more}</ul></div>"
    )


def _worst_block(report: Report, limit: int = 6) -> str:
    bad = sorted(
        (lyr for lyr in report.layers if lyr.local_status not in (None, "ok")),
        key=lambda lyr: lyr.blame_order if lyr.blame_order is not None else math.inf,
    )[:limit]
    if not bad:
        return ""
    cell = "padding:2px 10px;text-align:left;border-bottom:1px solid #eee"
    rows = "".join(
        f'<tr><td style="{cell};font-family:{_MONO}">{esc(lyr.label)}</td><td style="{cell}">'
        f'{esc(lyr.torch_type or "?")} / {esc(lyr.flax_type or "?")}</td><td style="{cell}">'
        f'{F.sci(lyr.local_max_abs)}</td><td style="{cell}">{F.sci(lyr.max_abs)}</td></tr>'
        for lyr in bad
    )
    head = "".join(f'<th style="{cell};color:#666">{h}</th>' for h in ("layer", "types", "own max", "propagated"))
    return (
        f'<div style="margin-top:6px"><b>Layers that add error on their own</b>'
        f'<table style="border-collapse:collapse;font-size:12px;margin-top:3px"><tr>{head}</tr>{rows}</table></div>'
    )


def notebook_card(report: Report) -> str:
    """The whole notebook card as an HTML fragment."""
    c = T.counts(report)
    head = (
        f'<div style="color:#555"><b style="color:#111">xf<span style="color:{F.LOCAL_COLOR}">diff</span></b> · '
        f"{c['aligned']} aligned calls · {c['outside']} outside tolerance · {c['torch_only']} torch-only / "
        f"{c['flax_only']} flax-only modules · {esc(T.tolerance_text(report))}</div>"
    )
    hint = (
        '<div style="color:#777;font-size:12px;margin-top:6px">Full view: <code>report.to_html("report.html")'
        "</code> or <code>xfdiff.serve(report)</code>; table: <code>report.to_dataframe()</code></div>"
    )
    return (
        f'<div class="xfdiff-report" style="font-family:{F.FONT};font-size:13px;color:#1f2328;max-width:760px">'
        + head
        + _verdict_block(report)
        + depth_svg(report)
        + _findings_block(report)
        + _worst_block(report)
        + hint
        + "</div>"
    )
