"""Splice confirmation and language-model metrics as text (:mod:`xfdiff.splice`, :mod:`xfdiff.lm_metrics`).

Read from the report's fields only, so the text summary, the banner and the detail
views share one wording.
"""

from __future__ import annotations

from typing import Any

from .figures import fmt


def shares(f: Any) -> str:
    """A finding's splice and fix shares in one phrase."""
    return f"the reference's output here removes {_pct(f.splice_share)} of the final error, the fix {_pct(f.fix_share)}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def summary_lines(report: Any) -> list[str]:
    """The splice confirmation in plain text (empty when no splice ran)."""
    sp = report.splice
    if not sp:
        return []
    lines = ["", "SPLICE (the port re-run with one call's output replaced by the reference's)"]
    by_label = {lyr.label: lyr for lyr in report.layers}
    for label in sp.get("sites", []):
        lyr = by_label.get(label)
        if lyr is None:
            continue
        lines.append(
            f"  {label}: final max error {fmt(sp.get('final_before'))} -> {fmt(lyr.splice_final_after)}, "
            f"removes {_pct(lyr.splice_share)} of the final error"
            + (f"; the suggested fix removes {_pct(lyr.fix_share)}" if lyr.fix_share is not None else "")
        )
    lines.append("  " + verdict_line(sp))
    return lines


def verdict_line(sp: dict) -> str:
    """One sentence: whether fixing the first site suffices, or which set does."""
    sites, chosen = sp.get("sites", []), sp.get("sufficient_set")
    if sp.get("first_suffices"):
        return f"fixing {sites[0]} alone brings the final output within tolerance"
    if chosen:
        return f"fixing the first is not enough; fixing {', '.join(chosen)} brings the final output within tolerance"
    return "no set of these sites brings the final output within tolerance: error comes from elsewhere too"


def banner_text(report: Any) -> str:
    """One or two sentences for a verdict banner: the first divergence's share, whether fixing it suffices."""
    sp = report.splice
    parts = []
    fd = report.first_divergence
    if sp and fd is not None and fd.splice_share is not None:
        fix = f" (the suggested fix: {_pct(fd.fix_share)})" if fd.fix_share is not None else ""
        parts.append(f"Replacing {fd.label}'s output with the reference's removes {_pct(fd.splice_share)}{fix}.")
        line = verdict_line(sp)
        parts.append(line[0].upper() + line[1:] + ".")
    lm = lm_line(report)
    if lm:
        parts.append(lm[0].upper() + lm[1:] + ".")
    return " ".join(parts)


def layer_items(lyr: Any) -> list[tuple[str, str]]:
    """(label, value) facts of a spliced row, for detail views."""
    if lyr.splice_share is None:
        return []
    val = f"{_pct(lyr.splice_share)} of the final error (final max |error| -> {fmt(lyr.splice_final_after)})"
    out = [("splice: reference output here removes", val)]
    if lyr.fix_share is not None:
        out.append(("splice: the suggested fix removes", _pct(lyr.fix_share)))
    return out


def finding_items(f: Any) -> list[tuple[str, str]]:
    """(key, value) shares of a finding, for evidence lists."""
    out = []
    if f.splice_share is not None:
        out.append(("splice share", _pct(f.splice_share)))
    if f.fix_share is not None:
        out.append(("fix share", _pct(f.fix_share)))
    return out


def lm_line(report: Any) -> str | None:
    """``language model: KL ..., top-1 ..., top-5 ...`` for the final output, or None."""
    m = report.lm
    if not m:
        return None
    ties = len(m.get("near_ties", []))
    clear = len(m.get("disagreements", []))
    tail = f", {clear} disagreement(s)" + (f", {ties} near tie(s) not counted as disagreements" if ties else "")
    return (
        f"language model ({m['positions']} positions, vocab {m['vocab']}): KL(ref||port) mean {m['kl_mean']:.2e} "
        f"max {m['kl_max']:.2e}, top-1 agreement {m['top1']:.4f}, top-5 overlap {m['top5']:.4f}{tail}"
    )
