"""Pair calls by the values they output, when names and parameters do not decide.

A port written from a paper shares nothing with the reference but its
arithmetic: its own names (``encoder_layers.0.ff0``, or generated ones such as
``t17``), values marked with taps that hold no parameters. What stays is that
a correct port computes the same numbers, in the same order, up to a legal
layout change. So:

1. each call's first float output gets a cheap sketch (sorted quantiles,
   which no transpose, reshape or broadcast changes);
2. pairs whose sketches agree are confirmed on the values themselves under a
   legal transform (:func:`xfdiff.layout.best_transform`);
3. a monotone alignment of the two call sequences (completion order, which
   also keeps nesting) keeps the best set of confirmed pairs, never crossing
   a pair found before (parameters, names);
4. after a bug the values no longer match: between confirmed pairs and after
   the last one, leftovers are paired by order, output shape and how alike
   their value distributions are (``order+output shape``, low confidence).

Only runs when the usual signals leave most of the reference's parameterised
modules alone (:data:`NEEDED_BELOW`): on a port that shares names or weights
it adds nothing and risks nothing.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from .layout import best_transform, candidates
from .stats import to_float64
from .stats.meet import to_host
from .trace import ROOT, Trace

# Value pairing runs when fewer than this share of parameterised reference modules are paired.
NEEDED_BELOW = 0.9
_QUANTILES = np.linspace(0.0, 1.0, 33)
_SKETCH_CLOSE = 0.02  # sketch distance below which the values are compared
_CONFIRM_REL = 1e-2  # relative L2 error under the best legal transform that confirms a pair
_MAX_CELLS = 4_000_000  # larger problems are left to mapping=


def pair_by_values(ta: Trace, tb: Trace, pa_paths: list[str], pb_paths: list[str], al) -> None:
    """Add value-based pairs to ``al`` (an :class:`xfdiff.align.Alignment`) where they are needed."""
    if not _needed(ta, pa_paths, al):
        return
    _LOCAL.host = {}
    try:
        _pair_by_values(ta, tb, pa_paths, pb_paths, al)
    finally:
        _LOCAL.host = {}


def _pair_by_values(ta: Trace, tb: Trace, pa_paths: list[str], pb_paths: list[str], al) -> None:
    taken = set(al.pairs.values())
    A = [p for p in pa_paths if p not in al.pairs and p != ROOT and _output(ta, p) is not None]
    B = [p for p in pb_paths if p not in taken and p != ROOT and _output(tb, p) is not None]
    if not A or not B or len(A) * len(B) > _MAX_CELLS:
        return
    seg_a, seg_b = _segments(pa_paths, pb_paths, A, B, al)
    dist = _sketch_distances(ta, tb, A, B)
    confirmed = _confirmed_scores(ta, tb, A, B, dist, seg_a, seg_b)
    for i, j in _monotone_best(confirmed[0]):
        al.add(A[i], B[j], f"values ({confirmed[1][i, j]})", 0.8)
    _fill_by_order(ta, tb, A, B, dist, seg_a, seg_b, al)


def _needed(ta: Trace, pa_paths: list[str], al) -> bool:
    with_params = [p for p in pa_paths if ta.params.get(p)]
    if not with_params:
        return False
    return sum(p in al.pairs for p in with_params) < NEEDED_BELOW * len(with_params)


# Host copies of the first outputs read by one pair_by_values (device captures keep values
# where they were computed; matching them by value reads them here, once per call).
_LOCAL = threading.local()


def _output(trace: Trace, path: str) -> np.ndarray | None:
    memo = getattr(_LOCAL, "host", None)
    key = (id(trace), path)
    if memo is not None and key in memo:
        return memo[key]
    out = None
    calls = trace.calls_of(path)
    for v in calls[0].float_outputs().values() if calls else ():
        v = to_host(v)
        # Placeholders of a port described without running it (memory="bounded") are all NaN.
        out = v if v.size and np.isfinite(to_float64(v.ravel()[:64])).any() else None
        break
    if memo is not None:
        memo[key] = out
    return out


def _sketch(x: np.ndarray) -> np.ndarray:
    """Sorted quantiles of the values: the same under any transpose, reshape or broadcast."""
    x = to_float64(x).ravel()
    if x.dtype.kind == "c":
        x = np.abs(x)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(len(_QUANTILES))
    return np.quantile(x, _QUANTILES)


def _sketch_distances(ta: Trace, tb: Trace, A: list[str], B: list[str]) -> np.ndarray:
    qa = np.stack([_sketch(_output(ta, a)) for a in A])
    qb = np.stack([_sketch(_output(tb, b)) for b in B])
    num = np.linalg.norm(qa[:, None, :] - qb[None, :, :], axis=-1)
    den = np.linalg.norm(qa, axis=-1)[:, None] + np.linalg.norm(qb, axis=-1)[None, :] + 1e-12
    return num / den


@functools.lru_cache(maxsize=4096)
def _compatible(ref_shape: tuple, port_shape: tuple) -> bool:
    return bool(candidates(ref_shape, port_shape))


def _segments(pa_paths, pb_paths, A, B, al) -> tuple[list[int], list[int]]:
    """Which gap between already-found pairs each call sits in (pairs may not cross them)."""
    pos_a = {p: i for i, p in enumerate(pa_paths)}
    pos_b = {p: i for i, p in enumerate(pb_paths)}
    anchors = sorted((pos_a[a], pos_b[b]) for a, b in al.pairs.items() if a in pos_a and b in pos_b)
    kept, last_b = [], -1
    for ia, ib in anchors:  # keep the anchors whose order agrees on both sides
        if ib > last_b:
            kept.append((ia, ib))
            last_b = ib
    seg_a = [int(np.searchsorted([k[0] for k in kept], pos_a[a])) for a in A]
    seg_b = [int(np.searchsorted([k[1] for k in kept], pos_b[b])) for b in B]
    return seg_a, seg_b


def _tie_break(ta: Trace, tb: Trace, a: str, b: str) -> float:
    """Among calls with equal values (a layer and its last sub-layer), prefer similar names and parameters."""
    from .align import name_similarity

    return 0.3 * name_similarity(a, b) + 0.2 * bool(ta.params.get(a))


def _confirmed_scores(ta, tb, A, B, dist, seg_a, seg_b) -> tuple[np.ndarray, np.ndarray]:
    score = np.zeros(dist.shape)
    layout = np.full(dist.shape, "", dtype=object)
    for i, j in zip(*np.nonzero(dist < _SKETCH_CLOSE), strict=True):
        if seg_a[i] != seg_b[j]:
            continue
        xa, xb = _output(ta, A[i]), _output(tb, B[j])
        if not _compatible(tuple(xa.shape), tuple(xb.shape)):
            continue
        t, err = best_transform(xa, xb)
        if t is not None and err < _CONFIRM_REL:
            score[i, j] = 3.0 + _tie_break(ta, tb, A[i], B[j])
            layout[i, j] = t.name
    return score, layout


def _monotone_best(score: np.ndarray) -> list[tuple[int, int]]:
    """The pairs (i, j), increasing in both, with the largest total score (positive scores only)."""
    n, m = score.shape
    dp = np.zeros((n + 1, m + 1))
    for i in range(n):
        row, prev, s = dp[i + 1], dp[i], score[i]
        for j in range(m):
            best = max(prev[j + 1], row[j])
            if s[j] > 0 and prev[j] + s[j] > best:
                best = prev[j] + s[j]
            row[j + 1] = best
    out, i, j = [], n, m
    while i > 0 and j > 0:
        if dp[i, j] == dp[i - 1, j]:
            i -= 1
        elif dp[i, j] == dp[i, j - 1]:
            j -= 1
        else:
            out.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return out[::-1]


def _fill_by_order(ta, tb, A, B, dist, seg_a, seg_b, al) -> None:
    """Between value pairs (and after the last), pair leftovers by order, output shape and distribution.

    Past a bug every value differs, but a layer's output still has the shape
    and roughly the spread of its counterpart's, and comes in the same order.
    """
    pos = {p: i for i, p in enumerate(A)}
    anchor_a = [-1] + sorted(pos[a] for a in al.pairs if a in pos) + [len(A)]
    rev = al.reverse
    pos_b = {p: j for j, p in enumerate(B)}
    anchor_b = [-1] + sorted(pos_b[b] for b in rev if b in pos_b) + [len(B)]
    if len(anchor_a) != len(anchor_b):
        return
    gaps_a = list(zip(anchor_a[:-1], anchor_a[1:], strict=True))
    gaps_b = list(zip(anchor_b[:-1], anchor_b[1:], strict=True))
    for (a0, a1), (b0, b1) in zip(gaps_a, gaps_b, strict=True):
        ia, jb = list(range(a0 + 1, a1)), list(range(b0 + 1, b1))
        if not ia or not jb:
            continue
        score = np.zeros((len(ia), len(jb)))
        for x, i in enumerate(ia):
            for y, j in enumerate(jb):
                sa, sb = tuple(_output(ta, A[i]).shape), tuple(_output(tb, B[j]).shape)
                if seg_a[i] == seg_b[j] and dist[i, j] < 0.5 and _compatible(sa, sb):
                    score[x, y] = 0.6 * (1.0 - 2.0 * dist[i, j]) + _tie_break(ta, tb, A[i], B[j])
        for x, y in _monotone_best(score):
            al.add(A[ia[x]], B[jb[y]], "order+output shape", 0.3)
