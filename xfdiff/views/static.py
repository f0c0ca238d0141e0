"""The files the views ship in ``xfdiff/views/assets/`` and how to read them.

- ``xfdiff.css``: the stylesheet of the HTML report, also the dashboard's base stylesheet;
- ``report.js``: the HTML report's script;
- :data:`PLOTLY_BUNDLE`: the partial plotly.js build (with its licence beside it)
  that the HTML report embeds and the dashboard serves.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The plotly.js bundle every view loads: the official "cartesian" partial build
#: (every trace type :mod:`.figures` draws), a third of the full bundle's size,
#: so the browser parses and compiles far less before the first plot.
PLOTLY_BUNDLE = "plotly-cartesian-4.1.1.min.js"


def asset_path(name: str) -> Path:
    """The file ``name`` in the views' assets folder, as a filesystem path (the package is installed unzipped)."""
    return Path(str(resources.files("xfdiff.views") / "assets" / name))


def asset_text(name: str) -> str:
    """The text of the asset ``name`` (UTF-8)."""
    return (resources.files("xfdiff.views") / "assets" / name).read_text(encoding="utf-8")
