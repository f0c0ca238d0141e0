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


def verdict_of(report: Any) -> tuple[str, str]:
    """``(verdict, reason)`` of a report: ``"match"``, ``"diverged"`` or ``"inconclusive"``."""
    return report.verdict, report.verdict_reason


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
