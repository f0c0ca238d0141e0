"""Run a TensorFlow/Keras scenario script in its own process and read back its JSON result.

TensorFlow takes seconds and hundreds of MB to import, and Keras 3 fixes its
backend (``KERAS_BACKEND``) at its first import; a subprocess per script keeps
both out of the test session's own process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, env: dict[str, str] | None = None, timeout: int = 900) -> dict:
    for mod in ("tensorflow", "keras") + (("tf_keras",) if "hf" in name else ()):
        if importlib.util.find_spec(mod) is None:  # looked up, not imported
            pytest.skip(f"needs {mod} (pip install 'xfdiff[tf]')")
    e = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    p = subprocess.run(
        [sys.executable, str(ROOT / "tests" / name)], capture_output=True, text=True, env=e, timeout=timeout
    )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("XFDIFF_RESULT ")), None)
    assert p.returncode == 0 and line, f"{name} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return json.loads(line.split(" ", 1)[1])
