"""The interactive dashboard (Dash): ``xfdiff.serve(report)`` or ``xfdiff serve FILE``.

Modules: :mod:`.ids` (component ids), :mod:`.layout` (the page),
:mod:`.callbacks`; ``assets/`` holds the dashboard's own stylesheet and the
module table's script. Figures, tables, the stylesheet shared with the HTML
report and the plotly.js bundle come from :mod:`xfdiff.views`, which does not
import this package. Importing this package loads no Dash; :func:`create_app`
(and so :func:`serve`) does.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import warnings
import webbrowser
from typing import Any

from ..errors import ConfigError, ModelTypeError
from ..report import Report
from ..storage import load_report
from ..views.static import PLOTLY_BUNDLE, asset_path

__all__ = ["PLOTLY_BUNDLE", "create_app", "load_any", "port_free", "serve"]

# The page loads the views' partial plotly.js bundle (PLOTLY_BUNDLE), served at
# assets/PLOTLY_BUNDLE beside this package's own assets. dcc.Graph uses
# ``window.Plotly`` when it is defined and only fetches the full bundle otherwise.
_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

# The page. Paths are relative to it, so the app also works behind a proxy's
# path prefix.
# - The layout request starts with the page (a preload the renderer's own
#   request picks up) instead of after every script has run.
# - plotly.js comes after Dash's scripts, which run while it still downloads,
#   and before the renderer, so it is defined before the first plot.
# - Dash's bundled polyfill (core-js 2) replaces String.prototype.trim with a
#   slower regular-expression version in current browsers (it judges their trim
#   by an older Unicode's whitespace); plotly.js trims on every class change, so
#   the browser's own trim is put back once the scripts are loaded.
_INDEX = """<!DOCTYPE html>
<html>
<head>
{%%metas%%}
<title>{%%title%%}</title>
{%%favicon%%}
{%%css%%}
<link rel="preload" href="_dash-layout" as="fetch" crossorigin="anonymous">
<style>%s</style>
</head>
<body>
{%%app_entry%%}
<footer>
{%%config%%}
<script>window.xfdiffNativeTrim = String.prototype.trim;</script>
{%%scripts%%}
<script>String.prototype.trim = window.xfdiffNativeTrim;</script>
<script src="%s"></script>
<script src="assets/module_table.js"></script>
{%%renderer%%}
</footer>
</body>
</html>"""


def load_any(report_or_path: Report | str | os.PathLike) -> Report:
    """A Report as given, or loaded from a saved ``.xfd`` path (ReportFileError if unreadable)."""
    if isinstance(report_or_path, Report):
        return report_or_path
    if isinstance(report_or_path, (str, os.PathLike)):
        return load_report(report_or_path)
    raise ModelTypeError(
        f"serve() needs an xfdiff.Report or the path of a saved .xfd file, got {type(report_or_path).__name__}."
    )


def create_app(report: Report | str | os.PathLike, title: str | None = None):
    """Build the Dash app for a report (not started; use :func:`serve` or ``app.run``).

    Args:
        report: a :class:`~xfdiff.Report` or the path of a saved ``.xfd`` file.
        title: the browser tab title.

    Returns:
        A ``dash.Dash`` application.
    """
    from dash import Dash
    from flask import send_file

    from .callbacks import register
    from .layout import build_layout, css

    report = load_any(report)
    fd = report.first_divergence
    app = Dash(
        __name__,
        title=title or f"xfdiff · {fd.label if fd else 'no divergence'}",
        update_title=None,
        assets_folder=_ASSETS,
        assets_ignore=".*",
    )
    app.index_string = _INDEX % (css(), f"assets/{PLOTLY_BUNDLE}")
    # The bundle lives with the views (the HTML report embeds it); an exact rule
    # outranks the assets folder's catch-all, so it is served at the same URL.
    app.server.add_url_rule(
        f"{app.config.routes_pathname_prefix}assets/{PLOTLY_BUNDLE}",
        "xfdiff_plotly_bundle",
        lambda: send_file(asset_path(PLOTLY_BUNDLE), mimetype="text/javascript"),
    )
    selected = fd.order if fd is not None else (0 if report.layers else None)
    app.layout = build_layout(report, selected)
    register(app, report)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_free(host: str, port: int) -> bool:
    """True when a server could listen on ``host:port`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(
    report_or_path: Report | str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8050,
    open_browser: bool = False,
    debug: bool = False,
    **run_kwargs: Any,
):
    """Serve the dashboard until interrupted (Ctrl-C).

    Args:
        report_or_path: a :class:`~xfdiff.Report` or the path of a saved ``.xfd`` file.
        host: interface to bind; the default keeps the dashboard on this machine.
        port: TCP port.
        open_browser: open the page in the default web browser once it is up.
        debug: Dash debug mode (dev tools, reloader off).
        **run_kwargs: passed to ``app.run`` (e.g. ``jupyter_mode="tab"`` in a notebook).

    Returns:
        Whatever ``app.run`` returns (nothing in a terminal; it blocks).

    Raises:
        ConfigError: the port is out of range, in use, or ``host`` is not an address of this machine.
    """
    if not 0 < int(port) < 65536:
        raise ConfigError(f"port must be between 1 and 65535, got {port}.")
    if not port_free(host, port):
        raise ConfigError(
            f"cannot listen on {host}:{port} (in use, or not an address of this machine). "
            f"Pick another port, e.g. port={port + 1} (--port {port + 1})."
        )
    app = create_app(report_or_path)
    if not _is_loopback(host):
        warnings.warn(
            f"xfdiff: the dashboard binds {host}, so other machines can reach it. "
            "Use host='127.0.0.1' to keep it local.",
            stacklevel=2,
        )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    if not debug:
        # A local viewer: per-request lines and the production-server warning are noise here.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app.logger.setLevel(logging.WARNING)
    return app.run(host=host, port=port, debug=debug, use_reloader=False, **run_kwargs)
