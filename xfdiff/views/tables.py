"""Pure functions from a report to the rows and facts every view shows.

The dashboard, the static HTML report and the notebook view all read their
text from here, so the three agree word for word. Values are plain Python
(strings, numbers, None); escaping is the job of whoever writes them into
HTML (Dash and the report's JavaScript set text, never markup).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .figures import detail_arrays, sci
from .splice_text import banner_text, finding_items, layer_items

if TYPE_CHECKING:
    from ..report import Finding, LayerDiff, Report


@dataclass
class Verdict:
    """The one-line answer shown at the top of every view."""

    level: str  # "ok" | "diverged" | "outside"  (outside: error without a culprit among aligned layers)
    headline: str
    detail: str
    cause: Finding | None = None  # the finding at the first divergence, if any


def verdict(report: Report) -> Verdict:
    """What the report says, in one headline and one sentence."""
    fd = report.first_divergence
    final = report.final
    final_txt = (
        f"Final output: {final.status}, max |error| {sci(final.max_abs)}, rel L2 {sci(final.rel_l2)}."
        if final is not None
        else ""
    )
    final_txt = f"{final_txt} {banner_text(report)}".strip()
    if fd is not None:
        own = fd.local_max_abs if fd.local_max_abs is not None else fd.max_abs
        kind = "own (teacher-forced)" if fd.local_max_abs is not None else "propagated"
        at_fd = findings_for(report, fd)
        return Verdict(
            "diverged",
            f"First divergence: {fd.label}",
            f"{fd.torch_type or '?'} / {fd.flax_type or '?'} adds {sci(own)} {kind} max |error| "
            f"by itself. {final_txt}".strip(),
            at_fd[0] if at_fd else None,
        )
    if report.verdict != "match":
        return Verdict("outside", "Inconclusive", f"{report.verdict_reason}. {final_txt}".strip())
    return Verdict("ok", "Match", f"{report.verdict_reason}. {final_txt}".strip())


def counts(report: Report) -> dict[str, int]:
    """Aligned calls, calls outside tolerance, own-error culprits, unmatched modules per side."""
    return {
        "aligned": len(report.layers),
        "outside": sum(lyr.status != "ok" for lyr in report.layers),
        "own_bad": sum(lyr.local_status not in (None, "ok") for lyr in report.layers),
        "findings": len(report.findings),
        "torch_only": sum(u.side == "torch" for u in report.unmatched),
        "flax_only": sum(u.side != "torch" for u in report.unmatched),
    }


def tolerance_text(report: Report) -> str:
    """``atol=1e-05, rtol=1e-05`` (``dtype default`` where not set)."""
    tol = report.meta.get("tolerance", {})
    vals = []
    for k in ("atol", "rtol"):
        v = tol.get(k)
        if v is None:
            seen = [getattr(lyr, k) for lyr in report.layers if getattr(lyr, k) == getattr(lyr, k)]
            v = f"{seen[0]:g} (dtype default)" if seen else "dtype default"
        vals.append(f"{k}={v}")
    return ", ".join(vals)


def shape_text(lyr: LayerDiff) -> str:
    """``(2, 8, 32)``, or ``(2, 8, 32) → (2, 32, 8)`` when the sides differ."""
    t = tuple(lyr.torch_shape) if lyr.torch_shape is not None else None
    f = tuple(lyr.flax_shape) if lyr.flax_shape is not None else None
    if t == f:
        return str(t) if t is not None else "—"
    return f"{t} → {f}"


def _num(x: float | None) -> float | None:
    """JSON-safe number (NaN becomes None; infinities stay floats for sorting)."""
    if x is None or x != x:
        return None
    return float(x)


def layer_row(lyr: LayerDiff) -> dict:
    """One row of the module table."""
    return {
        "order": lyr.order,
        "rid": str(lyr.order),
        "status": lyr.status,
        "own": lyr.local_status or "—",
        "layer": lyr.label,
        "torch_path": lyr.torch_path,
        "flax_path": lyr.flax_path,
        "types": f"{lyr.torch_type or '?'} / {lyr.flax_type or '?'}",
        "torch_type": lyr.torch_type or "?",
        "flax_type": lyr.flax_type or "?",
        "max_abs": _num(lyr.max_abs),
        "local_max_abs": _num(lyr.local_max_abs),
        "rel_l2": _num(lyr.rel_l2),
        "cosine": _num(lyr.cosine),
        "shape": shape_text(lyr),
        "layout": lyr.layout,
        "match": lyr.match,
        "depth": lyr.depth,
    }


def layer_rows(report: Report) -> list[dict]:
    """Every aligned call as a table row, in execution order."""
    return [layer_row(lyr) for lyr in report.layers]


def filter_rows(
    rows: list[dict], statuses: list[str] | None = None, search: str = "", own_only: bool = False
) -> list[dict]:
    """Rows whose status is in ``statuses`` and whose names contain ``search`` (case-insensitive)."""
    q = search.strip().lower()
    out = []
    for r in rows:
        if statuses is not None and r["status"] not in statuses:
            continue
        if own_only and r["own"] in ("ok", "—"):
            continue
        if q and not any(
            q in str(r[k] or "").lower() for k in ("layer", "torch_path", "flax_path", "torch_type", "flax_type")
        ):
            continue
        out.append(r)
    return out


def layer_facts(lyr: LayerDiff) -> list[tuple[str, str]]:
    """(label, value) pairs describing one aligned call, for the detail view."""
    conf = f" (confidence {lyr.confidence:.2f})" if lyr.match else ""
    facts = [
        ("torch path", path_text(lyr.torch_path)),
        ("flax path", path_text(lyr.flax_path)),
        ("module types", f"{lyr.torch_type or '?'} / {lyr.flax_type or '?'}"),
        ("call index", str(lyr.call_index)),
        ("output shapes", f"{_shape(lyr.torch_shape)} (torch) / {_shape(lyr.flax_shape)} (flax)"),
        ("dtypes", f"{lyr.torch_dtype or '?'} (torch) / {lyr.flax_dtype or '?'} (flax)"),
        ("layout transform", lyr.layout + (f" on output {lyr.output_key}" if lyr.output_key else "")),
        ("paired by", (lyr.match or "—") + conf),
        ("status", f"{lyr.status} (propagated) / {lyr.local_status or 'not measured'} (own)"),
        ("max |error|", f"{sci(lyr.max_abs)} propagated / {sci(lyr.local_max_abs)} own"),
        ("mean |error|", f"{sci(lyr.mean_abs)} propagated / {sci(lyr.local_mean_abs)} own"),
        ("rel L2 · cosine", f"{sci(lyr.rel_l2)} · {lyr.cosine:.8f}" if lyr.cosine == lyr.cosine else sci(lyr.rel_l2)),
        (
            "atol needed to pass",
            f"{sci(lyr.tol_needed)} propagated / {sci(lyr.local_tol_needed)} own (rtol {lyr.rtol:g})"
            if lyr.rtol == lyr.rtol
            else sci(lyr.tol_needed),
        ),
        ("elements outside", f"{lyr.frac_outside:.2%}" if lyr.frac_outside == lyr.frac_outside else "—"),
        ("input error (forced run)", sci(lyr.input_max_abs)),
    ]
    if lyr.n_nonfinite:
        facts.append(("non-finite elements (port)", str(lyr.n_nonfinite)))
    if lyr.note:
        facts.append(("note", lyr.note))
    return facts + layer_items(lyr)


def path_text(p: str | None) -> str:
    """A module path as shown: ``(root)`` for the model itself, a dash for a missing side."""
    if p is None:
        return "— (unmatched)"
    return p if p else "(root)"


def _shape(s) -> str:
    return str(tuple(s)) if s is not None else "?"


def worst_elements(lyr: LayerDiff, which: str = "local") -> list[dict]:
    """The elements with the largest |error|: index (unravelled), reference, port, difference."""
    d, _ = detail_arrays(lyr, which)
    if "worst_index" not in d:
        return []
    shape = tuple(int(s) for s in d.get("shape", ()))
    out = []
    triples = zip(np.asarray(d["worst_index"]), np.asarray(d["worst_ref"]), np.asarray(d["worst_port"]), strict=True)
    for flat, r, p in triples:
        idx = tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else (int(flat),)
        out.append({"index": str(idx), "ref": float(r), "port": float(p), "diff": float(p - r)})
    return out


def findings_for(report: Report, lyr: LayerDiff | None) -> list[Finding]:
    """Findings that name this layer (by either path and call index)."""
    if lyr is None:
        return []
    return [
        f
        for f in report.findings
        if f.call_index == lyr.call_index
        and (
            (f.torch_path is not None and f.torch_path == lyr.torch_path)
            or (f.flax_path is not None and f.flax_path == lyr.flax_path)
        )
    ]


def finding_where(f: Finding) -> str:
    """The path a finding names (torch side first)."""
    p = f.torch_path if f.torch_path is not None else f.flax_path
    if p is None:
        return "environment"
    return p if p else "(root)"


def evidence_items(f: Finding) -> list[tuple[str, str]]:
    """A finding's evidence as (key, value) text pairs; numbers compact."""
    out = []
    for k, v in (f.evidence or {}).items():
        if isinstance(v, float):
            v = sci(v) if (abs(v) < 1e-3 or abs(v) >= 1e4) and v != 0 else f"{v:.6g}"
        out.append((str(k), str(v)))
    return out + finding_items(f)


def layer_by_order(report: Report, order: int | None) -> LayerDiff | None:
    """The layer at position ``order`` (None when out of range)."""
    if order is None:
        return None
    try:
        order = int(order)
    except (TypeError, ValueError):
        return None
    return report.layers[order] if 0 <= order < len(report.layers) else None


def unmatched_rows(report: Report, side: str) -> list[dict]:
    """Modules present on ``side`` only (``"torch"`` or ``"flax"``), with the reason."""
    return [
        {
            "path": u.path or "(root)",
            "type": u.module_type,
            "params": "yes" if u.has_params else "no",
            "reason": u.reason,
        }
        for u in report.unmatched
        if (u.side == "torch") == (side == "torch")
    ]


def model_names(report: Report) -> tuple[str, str]:
    """(reference model, port model) descriptions from the report's meta."""
    return str(report.meta.get("torch_model", "PyTorch model")), str(report.meta.get("flax_model", "Flax model"))
