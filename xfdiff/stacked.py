"""Layer stacks: per-layer modules on one side, one scanned module with stacked parameters on the other.

``nn.scan`` over a block (maxtext, t5x, big-vision) keeps every layer's
parameters in one array with a leading layer axis, ``(L, ...)``, and runs the
block's submodules once per step: ``layers.Dense_0`` is called ``L`` times.
A PyTorch ``ModuleList`` holds ``layers.0.fc1`` ... ``layers.{L-1}.fc1``. Slice
``s`` of the stacked parameters is layer ``s``'s, value for value, so
fingerprints of the slices pair each torch module with the scanned module's
call ``s`` (``Alignment.offset``), and each torch layer with the scan body's
call ``s`` when its parameterised children all sit in slice ``s``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stats.meet import numel, to_host
from .trace import Trace, parent_path


def _slices(params: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]] | None:
    """The per-step parameters of a module called ``n`` times, or None when they are not stacked ``(n, ...)``."""
    if n < 2 or not params or any(np.ndim(v) < 1 or np.shape(v)[0] != n for v in params.values()):
        return None
    return [{k: to_host(v)[s] for k, v in params.items()} for s in range(n)]


def pair_stacked(ta: Trace, tb: Trace, pa_paths: list[str], pb_paths: list[str], al: Any) -> None:
    """Pair per-layer torch modules with the slices of a scanned flax module's stacked parameters."""
    from .fused import _holds

    taken = set(al.pairs.values())
    stacks = {}
    for b in pb_paths:
        if b in taken or not tb.params.get(b):
            continue
        sl = _slices(tb.params[b], len(tb.calls_of(b)))
        if sl is not None:
            stacks[b] = sl
    if not stacks:
        return
    by_sizes: dict[tuple, list[tuple[str, int]]] = {}
    for b, sl in stacks.items():
        for s, ps in enumerate(sl):
            by_sizes.setdefault(tuple(sorted(numel(v) for v in ps.values())), []).append((b, s))
    used: set[tuple[str, int]] = set()
    found: dict[str, tuple[str, int]] = {}
    for a in pa_paths:
        params = ta.params.get(a)
        if a in al.pairs or not params:
            continue
        if all(np.ptp(np.asarray(to_host(v), dtype=np.float64)) == 0 for v in params.values()):
            continue  # constant weights (a fresh norm) identify nothing
        for b, s in by_sizes.get(tuple(sorted(numel(v) for v in params.values())), ()):
            if (b, s) not in used and _holds(list(params.values()), stacks[b][s]):
                al.add(a, b, f"stacked slice {s}", 0.95)
                al.offset[a] = s
                used.add((b, s))
                found[a] = (b, s)
                break
    _pair_layers(ta, tb, found, al)


def _pair_layers(ta: Trace, tb: Trace, found: dict[str, tuple[str, int]], al: Any) -> None:
    """A torch layer whose parameterised children all sit in slice ``s`` of one scan body: that body's call ``s``."""
    by_parent: dict[str, set[tuple[str | None, int]]] = {}
    for a, (b, s) in found.items():
        pa = parent_path(a)
        if pa is not None:
            by_parent.setdefault(pa, set()).add((parent_path(b), s))
    for pa, homes in by_parent.items():
        if pa in al.pairs or len(homes) != 1 or not ta.calls_of(pa):
            continue
        ((pb, s),) = homes
        if pb is None or len(tb.calls_of(pb)) <= s:
            continue
        kids = [p for p in ta.params if p.startswith(pa + ".") and ta.params[p] and ta.calls_of(p)]
        if all(k in found for k in kids):
            al.add(pa, pb, f"stacked layer {s}", 0.9)
            al.offset[pa] = s
