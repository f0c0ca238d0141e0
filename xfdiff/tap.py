"""``xfdiff.tap``: mark values and steps in plain JAX code so xfdiff can capture them.

Two forms:

``tap(path, value)``
    Returns ``value``. While xfdiff captures, ``value`` is recorded as the
    output of the call ``path``. Enough to compare a port layer by layer
    (propagated error).
``tap(path, fn, *args, **kwargs)``
    Returns ``fn(*args, **kwargs)``. While xfdiff captures, the step is
    recorded like a module call: its array arguments are its inputs, its
    result its output, and teacher forcing may feed it the reference's inputs,
    so the step's own (local) error is measured. Arrays of the parameter tree
    given to xfdiff (``compare(pt, (fn, params), ...)``) are not inputs.

When nothing is capturing, ``tap`` costs one attribute lookup and changes no
value, so it can stay in production code. It works under ``jax.jit``: values
are recorded while the function is traced and returned from it. This module
imports neither jax nor numpy.
"""

from __future__ import annotations

import threading
from typing import Any

from .errors import XfdiffError

_state = threading.local()


class TapError(XfdiffError, TypeError):
    """``tap`` was called with arguments it cannot use."""


def _active() -> Any:
    return getattr(_state, "recorder", None)


def set_recorder(recorder: Any) -> Any:
    """Install ``recorder`` for this thread and return the previous one (capture modules only)."""
    prev = _active()
    _state.recorder = recorder
    return prev


def tap(path: str, value: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Identity on ``value`` (or call ``value(*args, **kwargs)``), recorded under ``path`` while xfdiff captures.

    Args:
        path: the name of the value, dotted like a module path, e.g.
            ``"encoder.layers.0.fc1"``, kept as written (``ln_1`` stays ``ln_1``).
        value: an array or pytree of arrays; or a function, then run as one
            step on ``*args, **kwargs``.
        *args, **kwargs: the step's arguments (only with a function).

    Returns:
        ``value``, or the step's result.

    Raises:
        TapError: ``path`` is not a string, or arguments were given with a
            value that is not a function.

    >>> tap("encoder.fc1", 3.0)
    3.0
    >>> tap("encoder.add", lambda a, b: a + b, 1, 2)
    3
    """
    if not isinstance(path, str):
        raise TapError(
            f"tap(path, value): path must be a string such as 'encoder.layers.0.fc1', got {type(path).__name__}."
        )
    step = callable(value) and not hasattr(value, "shape")
    if not step and (args or kwargs):
        raise TapError(
            f"tap({path!r}, value, ...): extra arguments are only accepted when value is a function "
            "(tap(path, fn, *args) runs fn(*args) as one recorded step)."
        )
    rec = _active()
    if rec is None:
        return value(*args, **kwargs) if step else value
    if step:
        return rec.tap_call(path, value, args, kwargs)
    return rec.tap_value(path, value)
