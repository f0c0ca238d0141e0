"""The ``xfdiff`` command: ``demo``, ``serve``, ``html`` and ``summary``.

Exit status: 0 on success (``summary``: the verdict is "match"), 1 when
``summary``'s verdict is "diverged" (so CI can fail on it), 2 for bad usage or
an unreadable report file, 3 when the verdict is "inconclusive" (too little of
the model was compared, see ``Report.coverage``). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import XfdiffError

EXIT_OK, EXIT_DIVERGED, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050, help="TCP port (default 8050)")
    p.add_argument("--open", action="store_true", help="open the dashboard in the default web browser")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xfdiff`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="xfdiff", description="Layer-by-layer numerical diff of a PyTorch model and its JAX/Flax port."
    )
    parser.add_argument("--version", action="version", version=f"xfdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="compare a built-in model and its Flax port (one planted bug) and serve it",
        description="Builds a tiny PyTorch transformer and a hand-written Flax port whose block 2 "
        "uses the tanh GELU, compares them and serves the dashboard. No downloads.",
    )
    _add_server_options(demo)
    demo.add_argument(
        "--no-browser", action="store_true", help="do not open a web browser (the default; wins over --open)"
    )
    demo.add_argument("--save", metavar="FILE", help="also save the report as a .xfd file")
    demo.add_argument("--html", metavar="FILE", help="also write the self-contained HTML report")
    demo.add_argument("--no-serve", action="store_true", help="print the summary and exit instead of serving")

    serve = sub.add_parser("serve", help="serve the dashboard for a saved report (.xfd)")
    serve.add_argument("file", help="a report saved with Report.save() or `xfdiff demo --save`")
    _add_server_options(serve)

    html = sub.add_parser("html", help="write the self-contained HTML report of a saved report")
    html.add_argument("file", help="a saved report (.xfd)")
    html.add_argument("-o", "--output", required=True, metavar="OUT", help="the HTML file to write")
    html.add_argument("--max-mb", type=float, default=6.0, help="size cap in MB (default 6)")

    summary = sub.add_parser("summary", help="print the text summary; exit status 0 match, 1 diverged, 3 inconclusive")
    summary.add_argument("file", help="a saved report (.xfd)")
    summary.add_argument("--rows", type=int, default=12, help="how many diverged layers to list (default 12)")
    return parser


def _serve(report, host: str, port: int, open_browser: bool) -> int:
    from .dashboard import port_free, serve

    if not 0 < port < 65536:
        raise _UsageError(f"--port must be between 1 and 65535, got {port}.")
    if not port_free(host, port):  # checked before printing the URL; serve() checks again
        raise _UsageError(
            f"cannot listen on {host}:{port} (in use, or not an address of this machine). "
            f"Pick another port with --port, e.g. --port {port + 1}."
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"xfdiff: dashboard at http://{shown}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        serve(report, host=host, port=port, open_browser=open_browser)
    except KeyboardInterrupt:
        pass
    print("xfdiff: stopped.")
    return EXIT_OK


class _UsageError(XfdiffError, ValueError):
    """A command-line value that cannot work (reported without a traceback)."""


def _cmd_demo(args) -> int:
    from .demo import demo_report

    print("xfdiff: building the demo model and its Flax port, comparing…", file=sys.stderr, flush=True)
    report = demo_report(progress=None)
    print(report.summary())
    if args.save:
        print(f"xfdiff: saved {report.save(args.save)}")
    if args.html:
        print(f"xfdiff: wrote {report.to_html(args.html)}")
    if args.no_serve:
        return EXIT_OK
    return _serve(report, args.host, args.port, args.open and not args.no_browser)


def _cmd_serve(args) -> int:
    from .storage import load_report

    return _serve(load_report(args.file), args.host, args.port, args.open)


def _cmd_html(args) -> int:
    from .storage import load_report
    from .views.html_report import write_html

    report = load_report(args.file)
    try:
        out = write_html(report, args.output, max_bytes=int(args.max_mb * 1_000_000))
    except OSError as e:
        raise _UsageError(f"cannot write {args.output}: {e.strerror or e}. Check that its folder exists.") from None
    print(f"xfdiff: wrote {out}")
    return EXIT_OK


def _cmd_summary(args) -> int:
    from .storage import load_report

    report = load_report(args.file)
    print(report.summary(max_rows=args.rows))
    return {"match": EXIT_OK, "diverged": EXIT_DIVERGED}.get(report.verdict, EXIT_INCONCLUSIVE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xfdiff`` command.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status (see the module docstring).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help, --version and usage errors
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else EXIT_ERROR
    handler = {"demo": _cmd_demo, "serve": _cmd_serve, "html": _cmd_html, "summary": _cmd_summary}[args.command]
    try:
        return handler(args)
    except XfdiffError as e:
        print(f"xfdiff: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("xfdiff: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
