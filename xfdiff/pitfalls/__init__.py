"""Pitfall diagnosis: evidence-backed findings at the culprit layer.

Each detector is a testable hypothesis (pitfalls catalog §0): recompute the
culprit's own code under the hypothesis, in float64 or in the emulated low
precision the hypothesis names, from the inputs and parameters xfdiff
captured; run the control (the correct formula must reproduce the reference,
otherwise nothing is reported); confirm only when the hypothesis explains the
port's error. Detectors are grouped in families (one module each) and listed
in :data:`REGISTRY`; a family reports at most one pitfall per site.

Two entry points are called by :func:`xfdiff.compare`:

- :func:`environment_checks` before any forward pass (settings of the
  frameworks and modes of the models);
- :func:`diagnose` after the comparison, on the rows whose own error is out
  of tolerance (the first divergence first).
"""

from __future__ import annotations

import warnings
from typing import Any

from ..report import Finding
from .registry import REGISTRY, Detector, register

MAX_ROWS = 24  # rows diagnosed per comparison (first divergences first)

# Importing the families fills the registry (order = evaluation order).
from . import activations, attention, conv, dropout, embedding, linear, norms, precision  # noqa: E402,F401
from .boundary import boundary_findings  # noqa: E402
from .environment import ENV_IDS, TF_ENV_IDS, environment_checks  # noqa: E402

BOUNDARY_ID = "boundary_shift"
GLOBAL_IDS = ("x64_disabled", "dropout_active", "bf16_matmul", "tf32_matmul")  # one setting behind every layer


def pitfall_ids() -> list[str]:
    """Every id xfdiff can report (detectors, environment checks, boundary shifts)."""
    out: list[str] = []
    for d in REGISTRY:
        out += [i for i in d.ids if i not in out]
    out += [i for i in ENV_IDS if i not in out]
    return out + [BOUNDARY_ID]


def diagnose(ev: Any, report: Any) -> list[Finding]:
    """Findings for the rows whose own error is out of tolerance.

    Args:
        ev: the comparison's :class:`xfdiff.evidence.Evidence`.
        report: the :class:`xfdiff.report.Report` being built (its
            ``first_divergence`` is diagnosed first).

    Returns:
        Findings, the first divergence's first. When the final output agrees
        within tolerance while intermediate values differ, one
        ``boundary_shift`` finding instead of per-layer diagnoses.
    """
    rows = candidate_rows(ev)
    if not rows:
        return []
    if ev.final is not None and ev.final.layer.status == "ok" and not _judged(report):
        return boundary_findings(ev, rows)
    findings: list[Finding] = []
    for row in rows:
        f = _diagnose_row(ev, row)
        if f is None:
            continue
        first = next((g for g in findings if g.pitfall == f.pitfall), None)
        if first is not None and f.pitfall in GLOBAL_IDS:
            # one setting, many layers: report it once, at the first layer it shows
            first.evidence.setdefault("also_at", []).append(row.layer.label)
            continue
        findings.append(f)
    return findings


def _judged(report: Any) -> bool:
    """True when :func:`xfdiff.verdict.judge` ran: boundary rows are notes there, never findings."""
    return report is not None and "boundaries" in getattr(report, "meta", {})


def candidate_rows(ev: Any) -> list[Any]:
    """The rows diagnosis looks at: blamed rows in blame order (only the first when no local error was measured)."""
    blamed = [r for r in ev.rows if r.layer.blame_order is not None]
    measured = any(r.layer.local_status is not None for r in ev.rows)
    blamed.sort(key=lambda r: r.layer.blame_order)
    if not measured:  # propagated error only: later rows inherit; diagnose the first
        blamed = blamed[:1]
    return blamed[:MAX_ROWS]


def _diagnose_row(ev: Any, row: Any) -> Finding | None:
    from .sites import build_sites

    try:
        sites = build_sites(ev, row)
    except Exception as e:  # a malformed record must not stop the other rows
        _warn(f"could not prepare {row.layer.label} for diagnosis ({type(e).__name__}: {e})")
        return None
    best = None
    for site in sites:
        for det in REGISTRY:
            if site.kind not in det.kinds:
                continue
            try:
                f = det.run(site)
            except Exception as e:  # a detector bug must not hide the others
                _warn(f"detector {det.name} failed on {row.layer.label} ({type(e).__name__}: {e})")
                continue
            if f is not None:
                key = (_unexplained(f), det.stage)
                if best is None or key < best[0]:
                    best = (key, f)
    return None if best is None else best[1]


def _unexplained(f: Finding) -> float:
    e0, eh = f.evidence.get("e0"), f.evidence.get("eh")
    try:
        return float(eh) / float(e0) if e0 else 1.0
    except (TypeError, ValueError):
        return 1.0


def _warn(msg: str) -> None:
    warnings.warn(f"xfdiff: {msg}", stacklevel=3)


__all__ = ["REGISTRY", "TF_ENV_IDS", "Detector", "diagnose", "environment_checks", "pitfall_ids", "register"]
