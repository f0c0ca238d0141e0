"""The detector registry: families of pitfall hypotheses and the ids they report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..report import Finding


@dataclass(frozen=True)
class Detector:
    """One family of hypotheses.

    Attributes:
        name: family name (``"norms"``, ``"linear"`` ...).
        ids: pitfall ids (pitfalls.md) the family can report.
        kinds: site kinds it looks at (``"call"``, ``"segment"``).
        stage: 0 structural, 1 constant mismatch, 2 precision (pitfalls.md §0
            order of evaluation); breaks ties between families at one site.
        run: ``run(site) -> Finding | None``.
    """

    name: str
    ids: tuple[str, ...]
    kinds: tuple[str, ...]
    stage: int
    run: Callable[[Any], Finding | None]


REGISTRY: list[Detector] = []


def register(name: str, ids: tuple[str, ...], kinds: tuple[str, ...] = ("call",), stage: int = 1):
    """Decorator adding a family's ``run(site)`` to :data:`REGISTRY`."""

    def deco(fn):
        REGISTRY.append(Detector(name, tuple(ids), tuple(kinds), stage, fn))
        return fn

    return deco
