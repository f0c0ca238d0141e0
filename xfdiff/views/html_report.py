"""The self-contained HTML report file (``Report.to_html``, ``xfdiff html``).

The file opens offline: plotly.js (the partial bundle with the cartesian trace
types, the one the dashboard serves) and the per-layer plots are stored inside
it, gzip-compressed and base64-encoded, and unpacked by the browser
(``DecompressionStream``); no remote script or stylesheet is referenced. The
verdict, findings and unmatched modules are plain HTML, readable without
JavaScript. Plots come from :mod:`.figures`, text from :mod:`.tables`, the
same functions the dashboard builds its page from, so the file shows what the
dashboard shows.

A large report's plots may not all fit the size cap (6 MB by default): layers
get their plots in order of interest (first divergence, findings, own error,
then execution order) until the cap; every layer keeps its facts and worst
elements. Every string from a model is escaped (server side with
``html.escape``; in the page's script through ``textContent``).
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import math
import os
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..version import __version__
from . import figures as F
from . import tables as T
from .escape import esc
from .static import PLOTLY_BUNDLE, asset_text

if TYPE_CHECKING:
    from ..report import Finding, Report

MAX_BYTES = 6_000_000
_TYPED = {
    "int8": "i1",
    "uint8": "u1",
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "float32": "f4",
    "float64": "f8",
}


# --- JSON for the page ---------------------------------------------------------------------


def _typed(a: np.ndarray):
    """A numpy array as a plotly.js typed-array spec (compact base64), or a list."""
    if a.dtype == np.int64:
        a = a.astype(np.int32)
    elif a.dtype == np.float64:
        a = a.astype(np.float32)
    code = _TYPED.get(a.dtype.name)
    if code is None or a.size == 0:
        return _clean(a.tolist())
    spec = {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")}
    if a.ndim > 1:
        spec["shape"] = ", ".join(str(s) for s in a.shape)
    return spec


def _clean(obj):
    """JSON-safe copy: numpy arrays become typed arrays, NaN/inf floats become null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _typed(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _json(obj) -> str:
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False)


def _script_json(obj) -> str:
    """JSON safe inside ``<script>``: no ``</script>`` or ``<!--`` can form."""
    return _json(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _packed(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


@functools.lru_cache(maxsize=1)
def _plotly_packed() -> str:
    """The partial plotly.js bundle (every trace type xfdiff draws), gzip + base64, once per process."""
    return _packed(asset_text(PLOTLY_BUNDLE))


# --- per-layer payload ---------------------------------------------------------------------


def _finding_json(f: Finding) -> dict:
    return {
        "pitfall": f.pitfall,
        "where": T.finding_where(f),
        "message": f.message,
        "fix": f.fix,
        "evidence": T.evidence_items(f),
    }


def _base_entry(report: Report, lyr) -> dict:
    idx = [report.findings.index(f) for f in T.findings_for(report, lyr)]
    worst = {"propagated": T.worst_elements(lyr, "propagated")}
    if lyr.local_detail:
        worst["local"] = T.worst_elements(lyr, "local")
    return {"facts": T.layer_facts(lyr), "findings": idx, "worst": worst}


def _figures_entry(lyr) -> dict:
    figs = {"propagated": F.detail_figures(lyr, "propagated")}
    if lyr.local_detail:
        figs["local"] = F.detail_figures(lyr, "local")
    return figs


def plot_priority(report: Report) -> list[int]:
    """Layer orders in the order their plots are embedded when space is short."""
    fd = report.first_divergence
    first = [fd.order] if fd is not None else []
    with_findings = [lyr.order for lyr in report.layers if T.findings_for(report, lyr)]
    own_bad = sorted(
        (lyr for lyr in report.layers if lyr.local_status not in (None, "ok")),
        key=lambda lyr: -(lyr.local_max_abs or 0.0),
    )
    seen: dict[int, None] = {}
    for o in first + with_findings + [lyr.order for lyr in own_bad] + [lyr.order for lyr in report.layers]:
        seen.setdefault(o, None)
    return list(seen)


def _layer_blob(report: Report, budget: int) -> tuple[str, int]:
    """Base64 gzip JSON ``{"base": {order: facts...}, "figs": {order: plots}}``.

    Every layer gets its facts; plots are added in :func:`plot_priority` order
    while the packed size stays within ``budget`` bytes. The stream is
    flushed after each layer (``Z_SYNC_FLUSH`` keeps the shared history, so
    repeated layout text costs little) and a layer that would overflow is
    tried on a copy of the compressor and dropped.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container, as DecompressionStream expects
    base = {str(lyr.order): _base_entry(report, lyr) for lyr in report.layers}
    chunks = [comp.compress(('{"base":' + _json(base) + ',"figs":{').encode()), comp.flush(zlib.Z_SYNC_FLUSH)]
    used = sum(map(len, chunks))
    n_plots = 0
    for order in plot_priority(report):
        piece = ("," if n_plots else "") + f'"{order}":' + _json(_figures_entry(report.layers[order]))
        trial = comp.copy()
        out = trial.compress(piece.encode()) + trial.flush(zlib.Z_SYNC_FLUSH)
        if (used + len(out) + 64) * 4 // 3 > budget:
            continue
        comp, used, n_plots = trial, used + len(out), n_plots + 1
        chunks.append(out)
    chunks.append(comp.compress(b"}}") + comp.flush())
    return base64.b64encode(b"".join(chunks)).decode("ascii"), n_plots


# --- the page ------------------------------------------------------------------------------


def _findings_html(report: Report) -> str:
    if not report.findings:
        return ""
    order_of = {}
    for lyr in report.layers:
        for f in T.findings_for(report, lyr):
            order_of.setdefault(id(f), lyr.order)
    cards = []
    for f in report.findings:
        goto = order_of.get(id(f))
        link = f' <button class="xf-link" data-goto="{goto}">show layer</button>' if goto is not None else ""
        ev = "".join(f"<span><i>{esc(k)}</i>{esc(v)}</span>" for k, v in T.evidence_items(f))
        cards.append(
            f'<div class="xf-finding"><div><span class="pid">{esc(f.pitfall)}</span> at '
            f'<span class="where">{esc(T.finding_where(f))}</span>{link}</div><div>{esc(f.message)}</div>'
            + (f'<div class="xf-ev">{ev}</div>' if ev else "")
            + (f'<div class="fix"><b>Fix: </b>{esc(f.fix)}</div>' if f.fix else "")
            + "</div>"
        )
    return f'<div class="xf-card" id="xf-findings"><div class="xf-h">Findings ({len(report.findings)})</div>{"".join(cards)}</div>'


def _summary_html(report: Report) -> str:
    v = T.verdict(report)
    cause = ""
    if v.cause is not None:
        fix = f'<br><b style="color:#2b8a3e">Fix: </b>{esc(v.cause.fix)}' if v.cause.fix else ""
        cause = (
            f'<div class="xf-verdict-detail">Likely cause: <b>{esc(v.cause.pitfall)}</b> — '
            f"{esc(v.cause.message)}{fix}</div>"
        )
    fd = report.first_divergence
    button = f'<button class="xf-btn" data-goto="{fd.order}">Show this layer</button>' if fd is not None else ""
    c = T.counts(report)
    stats = [
        (c["aligned"], "aligned calls"),
        (c["outside"], "outside tolerance (propagated)"),
        (c["own_bad"], "add error on their own"),
        (c["findings"], "findings"),
        (f"{c['torch_only']} / {c['flax_only']}", "unmatched torch / flax"),
    ]
    return (
        f'<div class="xf-card xf-verdict {v.level}" id="xf-verdict"><div style="flex:1">'
        f'<div class="xf-headline">{esc(v.headline)}</div><div class="xf-verdict-detail">{esc(v.detail)}</div>'
        f"{cause}</div>{button}</div>"
        '<div class="xf-stats">'
        + "".join(f'<div class="xf-stat"><b>{esc(n)}</b><span>{esc(label)}</span></div>' for n, label in stats)
        + "</div>"
    )


def _unmatched_html(report: Report) -> str:
    parts = []
    for side, name in (("torch", "PyTorch"), ("flax", "Flax")):
        rows = T.unmatched_rows(report, side)
        body = "".join(
            f"<tr><td>{esc(r['path'])}</td><td>{esc(r['type'])}</td><td>{esc(r['params'])}</td>"
            f"<td>{esc(r['reason'])}</td></tr>"
            for r in rows
        )
        table = (
            f"<table><tr><th>module</th><th>type</th><th>params</th><th>why unpaired</th></tr>{body}</table>"
            if rows
            else '<div class="xf-muted">none</div>'
        )
        parts.append(f'<div><div class="xf-h">Only in {name} ({len(rows)})</div>{table}</div>')
    return f'<div class="xf-card" id="xf-unmatched"><div class="xf-um">{"".join(parts)}</div></div>'


def _header_html(report: Report) -> str:
    tm, fm = T.model_names(report)
    ref = report.reference
    fw = report.meta.get("flax_framework", "flax")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = (
        f"{tm} (PyTorch{', reference' if ref == 'torch' else ''}) vs {fm} (Flax {fw}"
        f"{', reference' if ref == 'flax' else ''}) · {T.tolerance_text(report)} · xfdiff {__version__}, {when}"
    )
    return (
        f'<div class="xf-header"><div class="xf-logo">xf<span>diff</span></div>'
        f'<div class="xf-sub">{esc(sub)}</div></div>'
    )


def _filters_html(report: Report) -> str:
    statuses = sorted(
        {lyr.status for lyr in report.layers},
        key=lambda s: ("ok", "diverged", "nonfinite", "shape_mismatch", "unmatched").index(s),
    )
    boxes = "".join(
        f'<label><input type="checkbox" class="xf-status" value="{esc(s)}" checked> {esc(s)}</label>' for s in statuses
    )
    return (
        f'<div class="xf-filters"><input type="text" id="xf-search" placeholder="search path or type…">'
        f'{boxes}<label><input type="checkbox" id="xf-own-only"> own error only</label>'
        f'<span class="xf-muted" id="xf-row-count"></span></div>'
    )


def _body_html(report: Report, n_plots: int) -> str:
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.meta.get("notes", []))
    left_out = len(report.layers) - n_plots
    no_figs = (
        (
            "Plots for this layer were left out to keep the file small "
            f"({n_plots} of {len(report.layers)} layers have plots). "
            "Open the saved report with `xfdiff serve FILE` to see every layer."
        )
        if left_out
        else "No plots for this layer."
    )
    figs = "".join(
        f'<div class="{"wide" if k in ("scatter", "profile") else ""}"><div id="xf-fig-{k}"></div></div>'
        for k in ("hist", "heatmap", "scatter", "profile")
    )
    variant = "".join(
        f'<label><input type="radio" name="xf-variant" value="{v}"{" checked" if v == "local" else ""}>'
        f" {label} </label>"
        for v, label in (("local", "own error (teacher-forced)"), ("propagated", "propagated error"))
    )
    return (
        '<div class="xf-page">'
        + _header_html(report)
        + _summary_html(report)
        + _findings_html(report)
        + '<div class="xf-msg" id="xf-problem" style="display:none"></div>'
        + '<div class="xf-card"><div id="xf-depth" style="height:340px"></div></div>'
        + '<div class="xf-cols"><div class="xf-card xf-sticky"><div class="xf-h">Modules (aligned calls, execution '
        + "order)</div>"
        + _filters_html(report)
        + '<div class="xf-tablewrap" id="xf-tablewrap"><table class="xf-table"><thead id="xf-thead"></thead><tbody id="xf-tbody">'
        + '</tbody></table></div><div class="xf-muted">Click a row, or a point in the plot above, to see the layer '
        + "in detail. Click a column header to sort.</div></div>"
        + '<div class="xf-card" id="xf-detail"><div class="xf-detail-head"><div id="xf-detail-title" '
        + f'class="xf-detail-title"></div><div class="xf-spacer"></div><div>{variant}</div></div>'
        + '<table id="xf-facts" class="xf-facts"></table><div id="xf-detail-findings"></div>'
        + f'<div class="xf-msg" id="xf-no-figs" style="display:none">{esc(no_figs)}</div>'
        + f'<div class="xf-figs" id="xf-figs">{figs}</div>'
        + '<div class="xf-h">Worst elements</div><div id="xf-worst"></div></div></div>'
        + _unmatched_html(report)
        + (f'<div class="xf-card"><div class="xf-h">Notes</div><ul>{notes}</ul></div>' if notes else "")
        + '<div class="xf-footer">Self-contained xfdiff report: no network access needed. Plots need JavaScript.'
        + "</div></div>"
    )


def _meta_json(report: Report) -> dict:
    fd = report.first_divergence
    first = fd.order if fd is not None else (0 if report.layers else None)
    return {
        "rows": T.layer_rows(report),
        "first": first,
        "depth": F.depth_figure(report),
        "findings": [_finding_json(f) for f in report.findings],
    }


def report_html(report: Report, max_bytes: int = MAX_BYTES) -> str:
    """The self-contained HTML report as a string.

    Args:
        report: the report.
        max_bytes: size cap; plots of less interesting layers are left out to stay under it.

    Returns:
        A complete HTML document.
    """
    fd = report.first_divergence
    title = f"xfdiff · {fd.label}" if fd is not None else "xfdiff · no divergence"
    plotly_packed = _plotly_packed()
    meta = _script_json(_meta_json(report))

    def page(layer_blob: str, n_plots: int) -> str:
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{asset_text('xfdiff.css')}</style></head><body>"
            + _body_html(report, n_plots)
            + f'<script type="application/json" id="xf-meta">{meta}</script>'
            + f'<script type="text/plain" id="xf-plotly">{plotly_packed}</script>'
            + f'<script type="text/plain" id="xf-layers">{layer_blob}</script>'
            + f"<script>{asset_text('report.js')}</script></body></html>"
        )

    fixed = len(page("", len(report.layers)).encode("utf-8")) + 2048
    blob, n_plots = _layer_blob(report, max(0, max_bytes - fixed))
    return page(blob, n_plots)


def write_html(report: Report, path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> str:
    """Write the self-contained HTML report to ``path`` and return the path.

    Args:
        report: the report.
        path: where to write (``.html``); parent folders must exist.
        max_bytes: size cap (see :func:`report_html`).

    Returns:
        ``str(path)``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(report_html(report, max_bytes=max_bytes), encoding="utf-8")
    os.replace(tmp, path)
    return str(path)
