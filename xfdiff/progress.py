"""A one-line progress display on stderr for long comparisons."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``xfdiff: <step> (<elapsed>s)`` on one line when enabled.

    Enabled by default only when stderr is a terminal, so logs and CI output
    stay clean.
    """

    def __init__(self, enabled: bool | None = None):
        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._width = 0

    def step(self, what: str) -> None:
        if not self.enabled:
            return
        msg = f"xfdiff: {what} ({time.perf_counter() - self.t0:.1f}s)"
        sys.stderr.write("\r" + msg.ljust(self._width))
        sys.stderr.flush()
        self._width = len(msg)

    def done(self) -> None:
        if self.enabled:
            self.step("done")
            sys.stderr.write("\n")
            sys.stderr.flush()
