"""``assert_port_matches``: a port's numerical check as one line in its test suite.

    from xfdiff.testing import assert_port_matches

    def test_port_matches_reference():
        assert_port_matches(pt_model, (flax_module, variables), {"input_ids": ids})

The assertion passes when the comparison's verdict is ``match``. On
``diverged`` it fails with the report's summary as the message: the first
divergence, the pitfall found there, its fix and how much of the final error
each site accounts for (:mod:`xfdiff.splice`). On ``inconclusive`` it fails
and says why. With ``html=`` (a file or a folder) or the environment variable
``XFDIFF_REPORT_DIR``, a failing check also writes the HTML report there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

ENV_DIR = "XFDIFF_REPORT_DIR"
MIN_COVERAGE = 0.5  # share of the reference's parameterised modules compared, below which nothing is concluded


def verdict_of(report: Any) -> tuple[str, str]:
    """``(verdict, reason)`` of a report: ``"match"``, ``"diverged"`` or ``"inconclusive"``.

    Reads ``Report.verdict`` where the report has one; otherwise derives it
    from the first divergence and the final output.
    """
    v = getattr(report, "verdict", None)
    if v is not None:
        reason = getattr(report, "verdict_reason", None) or getattr(v, "reason", "") or ""
        return str(getattr(v, "value", v)), str(reason)
    fd = report.first_divergence
    if fd is not None:
        return "diverged", f"{fd.label}'s own code adds error (local max_abs {fd.decisive_error:.2e})"
    if report.final is not None and report.final.status != "ok":
        return "diverged", "the final output is out of tolerance though no aligned layer adds error on its own"
    n, aligned = report.meta.get("n_param_modules_torch"), report.meta.get("n_param_modules_aligned")
    if isinstance(n, int) and isinstance(aligned, int) and n > 0 and aligned / n < MIN_COVERAGE:
        return "inconclusive", (
            f"only {aligned} of the reference's {n} modules with parameters were compared; "
            "pass mapping= or mark the port's values with xfdiff.tap()"
        )
    return "match", "every aligned layer and the final output are within tolerance"


def assert_port_matches(
    reference: Any,
    port: Any,
    inputs: Any,
    *,
    html: str | os.PathLike | None = None,
    **compare_kwargs: Any,
) -> Any:
    """Compare ``port`` with ``reference`` and fail unless the verdict is ``match``.

    Args:
        reference: the reference model (a ``torch.nn.Module`` unless
            ``reference="flax"`` is passed on).
        port: the port, as :func:`xfdiff.compare` takes it.
        inputs: the inputs, as :func:`xfdiff.compare` takes them.
        html: where a failing check writes its HTML report: a ``.html`` file,
            or a folder (the file is named after the running test). Defaults to
            the folder in ``$XFDIFF_REPORT_DIR`` when set; nothing is written otherwise.
        **compare_kwargs: passed to :func:`xfdiff.compare` (``tolerance=``,
            ``mapping=``, ``flax_inputs=``, ``reference=`` ...).

    Returns:
        The :class:`xfdiff.Report`, when the verdict is ``match``.

    Raises:
        AssertionError: the verdict is ``diverged`` (the message is the
            report's summary) or ``inconclusive`` (the message says why).
    """
    from .engine import compare

    report = compare(reference, port, inputs, **compare_kwargs)
    verdict, reason = verdict_of(report)
    if verdict == "match":
        return report
    where = _write_html(report, html)
    head = f"xfdiff verdict: {verdict} ({reason})" if reason else f"xfdiff verdict: {verdict}"
    tail = f"\nHTML report: {where}" if where else ""
    raise AssertionError(f"{head}\n{report.summary()}{tail}")


def _write_html(report: Any, html: str | os.PathLike | None) -> str | None:
    target = html if html is not None else os.environ.get(ENV_DIR) or None
    if target is None:
        return None
    path = Path(target)
    if path.suffix.lower() not in (".html", ".htm"):
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{_test_name()}.html"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    return str(report.to_html(path))


def _test_name() -> str:
    """The running pytest test's name as a file name (``xfdiff-report`` outside pytest)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    name = current.split(" ")[0].split("::")[-1] if current else "xfdiff-report"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "xfdiff-report"
