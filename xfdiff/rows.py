"""Rows: which port call is compared with which reference call, and how far apart they are.

One pairing (:func:`call_pairs`) and one measurement (:func:`make_row`) serve
every mode: the port's calls reach them one at a time, whether the port was
captured whole or runs call by call (see :mod:`xfdiff.engine`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .align import Alignment
from .evidence import Row, by_framework
from .fused import fused_matches
from .layout import IDENTITY, Transform, best_transform, candidates, device_choice, input_layout
from .localize import input_map, mark_unverified_inputs
from .report import LayerDiff
from .stats import Stats, Tolerance, lower_precision, stats_and_detail, status_of
from .stats.common import SMALL_MAX, dtype_name
from .stats.dispatch import kind_of
from .trace import CallRecord, Trace, to_host


class Match(NamedTuple):
    """The reference call a port call is compared with, and how their modules were paired."""

    ref: CallRecord
    how: str
    confidence: float


class Measured(NamedTuple):
    """The worst matched output leaf of one call pair."""

    stats: Stats
    ref_key: str
    port_key: str
    transform: Transform
    atol: float
    rtol: float
    detail: dict | None


def call_pairs(al: Alignment, ref_trace: Trace, port_trace: Trace, reference: str) -> dict[str, Match]:
    """Port call key -> the reference call it is compared with.

    Module pairs are torch path -> flax path; the ``i``-th call of a torch
    module meets call ``i + offset`` of its Flax module (tied weights: several
    torch modules share one Flax module's calls). ``port_trace`` needs only
    the calls (a shape-only description of the port is enough).
    """
    torch_trace, flax_trace = by_framework(reference, ref_trace, port_trace)
    out: dict[str, Match] = {}
    for rec in torch_trace.records:
        fpath = al.pairs.get(rec.path)
        if fpath is None:
            continue
        calls = flax_trace.calls_of(fpath)
        j = rec.call_index + al.offset.get(rec.path, 0)
        if j >= len(calls):
            continue
        ref, port = by_framework(reference, rec, calls[j])
        out[port.key] = Match(ref, al.how.get(rec.path, ""), al.confidence.get(rec.path, 0.0))
    ref_trace_, port_trace_ = by_framework(reference, torch_trace, flax_trace)
    for k, m in fused_matches(al, ref_trace_, port_trace_, reference, Match).items():
        out.setdefault(k, m)  # a fused projection against its blocks (xfdiff.fused)
    return out


def make_row(
    m: Match, port: CallRecord, tol: Tolerance, reference: str, link_inputs: bool = False, lazy: bool = False
) -> Row | None:
    """The row of one call pair; None when neither side returned floating-point outputs.

    ``link_inputs``: also find which reference input feeds each port input
    (teacher forcing needs it, see :mod:`xfdiff.localize`). ``lazy``: the
    arrays stay readable after the comparison (held in memory, not spilled),
    so the detail of a small host row may wait until a view reads it (see
    :class:`LazyDetail`).
    """
    ref = m.ref
    rt, rf = by_framework(reference, ref, port)
    lyr = LayerDiff(
        torch_path=rt.path,
        flax_path=rf.path,
        call_index=rt.call_index,
        torch_type=rt.module_type,
        flax_type=rf.module_type,
        match=m.how,
        confidence=m.confidence,
        depth=rt.depth,
    )
    row = Row(lyr, ref, port, reference)
    errs = [e for e in (rt.error, rf.error) if e]
    if errs:
        lyr.note = "; ".join(errs)
    ref_out, port_out = ref.float_outputs(), port.float_outputs()
    if not ref_out or not port_out:
        if not ref_out and not port_out:
            return None
        lyr.status = "shape_mismatch"
        lyr.note = (lyr.note + "; " if lyr.note else "") + "only one side returned floating-point outputs"
        return row
    best = None
    if not _device_ready(ref_out, port_out):
        # Equal shapes that another layout could also explain: as they are, within tolerance, they
        # need no choosing (best_transform keeps identity then); otherwise score layouts on the host.
        best = _measure_as_is(ref, port, tol, lazy)
        if best is None:
            to_host(ref)
            to_host(port)
    best = best or _measure(ref, port, tol, lazy)
    if best is None:
        fo_t, fo_f = rt.float_outputs(), rf.float_outputs()
        lyr.status = "shape_mismatch"
        lyr.torch_shape = tuple(next(iter(fo_t.values())).shape)
        lyr.flax_shape = tuple(next(iter(fo_f.values())).shape)
        lyr.note = (
            f"output shapes {[v.shape for v in fo_t.values()]} (torch) and {[v.shape for v in fo_f.values()]} (flax) "
            "fit no legal layout transform (NCHW/NHWC, head split/merge, broadcast, transpose)"
        )
        return row
    _fill(lyr, best.stats, best.atol, best.rtol)
    lyr.output_key = best.ref_key
    lyr.layout = best.transform.name
    tk, fk = by_framework(reference, best.ref_key, best.port_key)
    lyr.torch_shape, lyr.flax_shape = tuple(rt.outputs[tk].shape), tuple(rf.outputs[fk].shape)
    lyr.torch_dtype, lyr.flax_dtype = dtype_name(rt.outputs[tk]), dtype_name(rf.outputs[fk])
    lyr.detail = best.detail if best.detail is not None else _detail_of(best, ref, port, lazy)
    row.ref_key, row.port_key, row.transform = best.ref_key, best.port_key, best.transform
    if link_inputs:
        row.inputs_from_ref = input_map(ref, port)
        mark_unverified_inputs(row)
    return row


def _detail_of(best: Measured, ref: CallRecord, port: CallRecord, lazy: bool) -> dict:
    """The detail arrays of the measured leaf pair: computed now, or on first read for a small host pair."""
    r = best.transform.forward(ref.outputs[best.ref_key])
    p = port.outputs[best.port_key]
    atol, rtol = best.atol, best.rtol

    def compute() -> dict:
        return stats_and_detail(r, p, atol, rtol, detail=True)[1] or {}

    if lazy and _lazy_ok(r, p):
        return LazyDetail(compute)
    return compute()


def _lazy_ok(r: Any, p: Any) -> bool:
    """Host arrays small enough that a report may hold them until its detail is read."""
    return type(r) is np.ndarray and type(p) is np.ndarray and r.size <= SMALL_MAX and p.size <= SMALL_MAX


class LazyDetail(dict):
    """A row's detail arrays, computed the first time anything reads them.

    Most rows of a comparison are never drawn, and for a small row the
    histogram, worst elements, heatmap and samples cost more than its
    statistics. The thunk holds the two measured arrays (small, host
    memory); once computed it is dropped and this is an ordinary dict.
    Every reading method fills it first, so readers (views, storage,
    ``dict(d)``, ``{**d}``, pickling, ``==``) see the same arrays an eager
    computation gives.
    """

    __slots__ = ("_make", "_lock")

    def __init__(self, make: Callable[[], dict]):
        super().__init__()
        self._make: Callable[[], dict] | None = make
        self._lock = threading.Lock()

    def _fill(self) -> None:
        if self._make is None:
            return
        with self._lock:
            make = self._make
            if make is not None:
                dict.update(self, make())
                self._make = None

    @property
    def computed(self) -> bool:
        """Whether the arrays have been computed."""
        return self._make is None

    def __getitem__(self, key: str) -> Any:
        self._fill()
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        self._fill()
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._fill()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._fill()
        return dict.__len__(self)

    def __eq__(self, other: object) -> bool:
        self._fill()
        if isinstance(other, LazyDetail):
            other._fill()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._fill()
        return dict.__repr__(self)

    def __reduce__(self) -> tuple:
        return (dict, (self.copy(),))  # pickled and copied as a plain dict

    def __or__(self, other: Any) -> dict:
        return self.copy() | other

    def __ror__(self, other: Any) -> dict:
        return dict(other) | self.copy()

    def keys(self):  # type: ignore[override]
        self._fill()
        return dict.keys(self)

    def values(self):  # type: ignore[override]
        self._fill()
        return dict.values(self)

    def items(self):  # type: ignore[override]
        self._fill()
        return dict.items(self)

    def get(self, key: str, default: Any = None) -> Any:
        self._fill()
        return dict.get(self, key, default)

    def copy(self) -> dict:
        self._fill()
        return dict(dict.items(self))

    def pop(self, key: str, *default: Any) -> Any:
        self._fill()
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._fill()
        return dict.setdefault(self, key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._fill()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._fill()
        dict.__delitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._fill()
        dict.update(self, *args, **kwargs)

    def __ior__(self, other: Any) -> LazyDetail:
        self.update(other)
        return self

    def __reversed__(self) -> Iterator[str]:
        self._fill()
        return dict.__reversed__(self)

    def popitem(self) -> tuple[str, Any]:
        self._fill()
        return dict.popitem(self)

    def clear(self) -> None:
        self._make = None
        dict.clear(self)


def _device_ready(ref_out: dict, port_out: dict) -> bool:
    """Whether a pair can be measured as it is: host arrays only, or each leaf meeting its port
    leaf under the one layout that fits.

    Device values (torch tensors, JAX arrays of a device capture) are measured where
    they live when every output leaf pairs with a port leaf (its namesake, or the next
    that fits: a tensor against a one-element tuple) and every layout their shapes admit
    runs on device values (reshapes and axis moves: identity, heads split or merged,
    NCHW/NHWC), so even a choice among them is scored there.
    """
    if all(kind_of(v) == "numpy" for v in (*ref_out.values(), *port_out.values())):
        return True
    pairs = leaf_pairs(ref_out, port_out)
    if len(pairs) != len(ref_out):
        return False
    for rk, pk in pairs:
        if not device_choice(tuple(ref_out[rk].shape), tuple(port_out[pk].shape)):
            return False
    return True


def pair_outputs(
    ref: dict[str, np.ndarray], port: dict[str, np.ndarray], hint=None
) -> list[tuple[str, str, Transform]]:
    """Pair float output leaves: same key first, then in order among layout-compatible leaves.

    ``hint()`` names the layout the call's inputs arrived in; it settles ties (C == H == W).
    """
    pairs = []
    used: set[str] = set()
    for rk, rv in ref.items():
        choice = None
        if rk in port and rk not in used and candidates(rv.shape, port[rk].shape):
            choice = rk
        else:
            for pk, pv in port.items():
                if pk not in used and candidates(rv.shape, pv.shape):
                    choice = pk
                    break
        if choice is None:
            continue
        cands = candidates(rv.shape, port[choice].shape)
        # Scoring transforms costs passes over both arrays; only needed when there is a choice.
        t = cands[0] if len(cands) == 1 else best_transform(rv, port[choice], hint() if hint else None)[0]
        if t is None:
            continue
        used.add(choice)
        pairs.append((rk, choice, t))
    return pairs


def leaf_pairs(ref: dict[str, Any], port: dict[str, Any]) -> list[tuple[str, str]]:
    """Which port leaf each reference leaf is measured against, from shapes alone (as
    :func:`pair_outputs` pairs them when every pairing has a layout): its namesake when the
    shapes fit a legal layout, else the first port leaf not yet taken that fits."""
    out = []
    taken: set[str] = set()
    for rk, rv in ref.items():
        choice = None
        if rk in port and rk not in taken and candidates(tuple(rv.shape), tuple(port[rk].shape)):
            choice = rk
        else:
            choice = next(
                (pk for pk, pv in port.items() if pk not in taken and candidates(tuple(rv.shape), tuple(pv.shape))),
                None,
            )
        if choice is not None:
            taken.add(choice)
            out.append((rk, choice))
    return out


def _measure_as_is(ref_rec: CallRecord, port_rec: CallRecord, tol: Tolerance, lazy: bool) -> Measured | None:
    """The pair measured leaf by leaf as it is (identity layout) when every leaf pairs with an
    equal-shaped port leaf (:func:`leaf_pairs`) and all agree within tolerance; else None (the
    layouts need scoring)."""
    ref_out, port_out = ref_rec.float_outputs(), port_rec.float_outputs()
    pairs = leaf_pairs(ref_out, port_out)
    if len(pairs) != len(ref_out) or any(tuple(ref_out[r].shape) != tuple(port_out[p].shape) for r, p in pairs):
        return None
    best = _measure(ref_rec, port_rec, tol, lazy, [(r, p, IDENTITY) for r, p in pairs])
    if best is None or best.stats.frac_outside > 0 or best.stats.nonfinite_mismatch > 0:
        return None
    return best


def _measure(
    ref_rec: CallRecord,
    port_rec: CallRecord,
    tol: Tolerance,
    lazy: bool = False,
    pairs: list[tuple[str, str, Transform]] | None = None,
) -> Measured | None:
    """The worst matched output leaf, or None when no leaf pair fits a legal layout.

    A single leaf pair is measured with its detail in one pass, unless the detail may wait (``lazy``).
    ``pairs``: the leaf pairing and layouts, when already known (else :func:`pair_outputs`).
    """
    ref_out, port_out = ref_rec.float_outputs(), port_rec.float_outputs()
    best: tuple[Any, Measured] | None = None
    if pairs is None:
        pairs = pair_outputs(ref_out, port_out, lambda: input_layout(ref_rec.float_inputs(), port_rec.float_inputs()))
    for rk, pk, t in pairs:
        r = t.forward(ref_out[rk])
        p = port_out[pk]
        atol, rtol = tol.resolve(lower_precision(dtype_name(r), dtype_name(p)))
        eager = len(pairs) == 1 and not (lazy and _lazy_ok(r, p))
        s, det = stats_and_detail(r, p, atol, rtol, detail=eager)
        key = (s.nonfinite_mismatch > 0, s.frac_outside > 0, s.tol_needed)
        if best is None or key > best[0]:
            best = (key, Measured(s, rk, pk, t, atol, rtol, det))
    return None if best is None else best[1]


def _fill(lyr: LayerDiff, s: Stats, atol: float, rtol: float) -> None:
    lyr.max_abs, lyr.mean_abs, lyr.rel_l2, lyr.cosine = s.max_abs, s.mean_abs, s.rel_l2, s.cosine
    lyr.tol_needed, lyr.frac_outside, lyr.n_nonfinite = s.tol_needed, s.frac_outside, s.n_nonfinite
    lyr.atol, lyr.rtol = atol, rtol
    lyr.status = status_of(s)
