"""Plain-text rendering of a report for terminals and logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .figures import fmt
from .splice_text import lm_line, shares, summary_lines

if TYPE_CHECKING:
    from ..report import LayerDiff, Report


def _row(lyr: LayerDiff) -> str:
    local = fmt(lyr.local_max_abs)
    return f"  {lyr.status:<14} {fmt(lyr.max_abs):>9} {local:>9} {fmt(lyr.floor):>9}  {lyr.label}"


def summary_text(report: Report, max_rows: int = 12) -> str:
    """The verdict first, then the findings, then the worst layers."""
    ref = report.reference
    n = len(report.layers)
    n_bad = sum(lyr.status != "ok" for lyr in report.layers)
    lines = [f"xfdiff: {n} aligned calls, {n_bad} outside tolerance (reference: {ref})"]
    tol = report.meta.get("tolerance", {})
    if tol:
        atol = "dtype default" if tol.get("atol") is None else tol["atol"]
        rtol = "dtype default" if tol.get("rtol") is None else tol["rtol"]
        lines[0] += f", atol={atol}, rtol={rtol}"
    if report.final is not None:
        f = report.final
        lines.append(f"final output: {f.status}, max_abs {fmt(f.max_abs)}, rel_l2 {fmt(f.rel_l2)}")
        lines += [lm_line(report)] if lm_line(report) else []
    lines.append(f"VERDICT: {report.verdict.upper()}: {report.verdict_reason}")
    cov = report.coverage
    if cov:
        lines.append(
            f"coverage: {cov.get('n_modules_compared', 0)} of {cov.get('n_modules', 0)} parameterised modules "
            f"({100 * cov.get('modules', 0):.0f}%), {100 * cov.get('parameters', 0):.0f}% of parameters compared"
            + (
                f"; {cov['n_modules_identified']} more identified by their weights only"
                if cov.get("n_modules_identified")
                else ""
            )
        )
    for b in report.boundaries:
        lines.append(f"boundary: {b.get('label')} differs, agrees again at {b.get('agrees_again_at')} ({b.get('why')})")
    fd = report.first_divergence
    if fd is not None:
        lines.append("")
        lines.append(f"FIRST DIVERGENCE: {fd.label}  ({fd.torch_type or '?'} / {fd.flax_type or '?'})")
        lines.append(f"  torch: {fd.torch_path!s}   flax: {fd.flax_path!s}")
        lines.append(
            f"  own (local) max_abs {fmt(fd.local_max_abs)}, propagated max_abs {fmt(fd.max_abs)}, "
            f"rel_l2 {fmt(fd.rel_l2)}, cosine {fd.cosine:.6f}"
        )
        if fd.note:
            lines.append(f"  note: {fd.note}")
    for note in report.meta.get("notes", []):
        lines.append(f"note: {note}")
    if report.findings:
        lines.append("")
        lines.append("FINDINGS")
        for f in report.findings:
            where = f.torch_path if f.torch_path is not None else f.flax_path
            lines.append(f"  [{f.pitfall}] at {where}: {f.message}")
            ev = f.evidence or {}
            facts = [
                f"explains {100 * ev['explained']:.2f}% of the error" if isinstance(ev.get("explained"), float) else ""
            ]
            facts += [
                f"{k} = {v:.4g}"
                for k, v in ev.items()
                if (k.startswith(("port_", "recovered", "reference_")) or k in ("rate", "scale", "offset"))
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ][:4]
            facts = [x for x in facts if x]
            if facts:
                lines.append("      evidence: " + ", ".join(facts))
            if f.fix:
                lines.append(f"      fix: {f.fix}")
            if f.splice_share is not None or f.fix_share is not None:
                lines.append(f"      splice: {shares(f)}")
    lines += summary_lines(report)
    bad = [lyr for lyr in report.layers if lyr.status != "ok"]
    if bad:
        lines.append("")
        lines.append(
            f"  {'status':<14} {'max_abs':>9} {'local':>9} {'floor':>9}  layer (first {min(max_rows, len(bad))} of {len(bad)})"
        )
        lines.extend(_row(lyr) for lyr in bad[:max_rows])
    um = report.unmatched
    if um:
        n_t = sum(u.side == "torch" for u in um)
        n_f = len(um) - n_t
        lines.append("")
        lines.append(f"unmatched modules: {n_t} torch-only, {n_f} flax-only (see Report.unmatched)")
    return "\n".join(lines)
