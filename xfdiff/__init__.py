"""xfdiff: a layer-by-layer numerical diff debugger for PyTorch <-> JAX/Flax ports.

>>> import xfdiff
>>> report = xfdiff.compare(pt_model, flax_model, {"input_ids": ids})  # doctest: +SKIP
>>> report.first_divergence  # doctest: +SKIP

Importing xfdiff loads neither torch, jax nor dash; each is imported when the
first call needs it.
"""

from __future__ import annotations

from typing import Any

from .engine import compare
from .errors import XfdiffError
from .report import Finding, LayerDiff, Report
from .stats import Tolerance
from .tap import tap
from .version import __version__ as __version__

__all__ = [
    "Finding",
    "LayerDiff",
    "Report",
    "Tolerance",
    "XfdiffError",
    "compare",
    "load",
    "serve",
    "tap",
]


def load(path) -> Report:
    """Load a report saved with :meth:`Report.save`."""
    from .storage import load_report

    return load_report(path)


def serve(report: Report | str, host: str = "127.0.0.1", port: int = 8050, **kwargs: Any):
    """Serve the interactive dashboard for ``report`` (a Report or a saved file)."""
    from .dashboard import serve as _serve

    return _serve(report, host=host, port=port, **kwargs)
