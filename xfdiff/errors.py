"""Exceptions raised by xfdiff.

Every error derives from :class:`XfdiffError` *and* the builtin that matches
its meaning, so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XfdiffError(Exception):
    """Base class of every error xfdiff raises on purpose."""


class ModelTypeError(XfdiffError, TypeError):
    """A model argument is not of a supported kind."""


class InputError(XfdiffError, ValueError):
    """The inputs do not fit one of the models."""


class CaptureError(XfdiffError, RuntimeError):
    """A model's forward pass raised while xfdiff was recording it."""


class InternalError(CaptureError):
    """xfdiff itself failed while recording a model; the model is not at fault (please report it)."""


class AlignmentError(XfdiffError, ValueError):
    """The two models could not be paired module by module."""


class MappingError(XfdiffError, ValueError):
    """A user-supplied ``mapping=`` rule is malformed or names unknown modules."""


class ReportFileError(XfdiffError, ValueError):
    """A saved report is missing, truncated, corrupted or from a newer xfdiff."""


class LayerNotFound(XfdiffError, KeyError):
    """A report has no row with the requested path."""


class ConfigError(XfdiffError, ValueError):
    """An option passed to xfdiff is out of range."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
