"""``xfdiff.tap``: mark a value in plain JAX code so xfdiff can capture it.

``tap(path, value)`` returns ``value`` unchanged. When nothing is capturing it
costs one dictionary lookup; inside :func:`xfdiff.compare` (or
:func:`tapping`) it records the value under ``path`` and may replace it with a
reference value (teacher forcing). It works under ``jax.jit``: values are
recorded at trace time and returned from the traced function.
"""

from __future__ import annotations

import threading
from typing import Any

_state = threading.local()


def _active():
    return getattr(_state, "recorder", None)


def tap(path: str, value: Any, *inputs: Any) -> Any:
    """Identity on ``value``; records it as the output of ``path`` while xfdiff captures.

    Args:
        path: the name of the value, e.g. ``"encoder.layers.0.fc1"``.
        value: an array or pytree of arrays.
        *inputs: optionally, the inputs of the step that produced ``value``;
            recording them lets teacher forcing measure this step's own error.
    """
    rec = _active()
    if rec is None:
        return value
    return rec(path, value, inputs)
