"""Teacher forcing: each aligned call's own (local) error, and who is to blame.

The port is re-run once with every aligned call fed the reference's inputs.
A call's output error in that run is what its own code adds. Forcing every
call at once hides error a parent's code adds *between* its children, so the
forced run also keeps each call's own inputs before replacement
(``CallRecord.raw_inputs``): when those are already off while every earlier
call was forced, the enclosing module is blamed at that point.
``LayerDiff.blame_order`` records where in completion order a row's own error
first shows; :attr:`Report.first_divergence` is the smallest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .errors import XfdiffError
from .evidence import Evidence, Row
from .layout import Transform, best_transform, candidates, device_choice
from .runs import CallQueue
from .stats import Stats, stats_and_detail, status_of
from .stats.dispatch import kind_of
from .stats.meet import to_host, to_jax, to_torch
from .trace import CallRecord, Trace


def input_map(ref_rec: CallRecord, port_rec: CallRecord) -> dict[str, tuple[str, Transform]]:
    """For each float input leaf of the port call, the reference leaf that feeds it."""
    ref_in = ref_rec.float_inputs()
    port_in = port_rec.float_inputs()
    out: dict[str, tuple[str, Transform]] = {}
    used: set[str] = set()
    for pk, pv in port_in.items():
        options = []
        fits = [(rk, rv) for rk, rv in ref_in.items() if rk not in used and candidates(rv.shape, pv.shape)]
        if len(fits) == 1 and len(candidates(fits[0][1].shape, pv.shape)) == 1:
            # One reference leaf and one legal transform: nothing to rank, skip the scoring passes.
            used.add(fits[0][0])
            out[pk] = (fits[0][0], candidates(fits[0][1].shape, pv.shape)[0])
            continue
        for rk, rv in fits:
            if not device_choice(tuple(rv.shape), tuple(pv.shape)):
                rv, pv = to_host(rv), to_host(pv)  # a layout that reads numpy (broadcast, flatten order)
            t, err = best_transform(rv, pv)
            if t is None:
                continue
            same_name = rk.split(".")[-1] == pk.split(".")[-1]
            options.append((not same_name, err, rk, t))
        if options:
            _, _, rk, t = min(options, key=lambda o: (o[0], o[1]))
            used.add(rk)
            out[pk] = (rk, t)
    return out


# pairings made from the calls' outputs alone (xfdiff.align_values): their inputs are checked before forcing
OUTPUT_ONLY_PAIRINGS = ("values", "order+output shape")
# a linked input outside tolerance still corresponds when its relative error is this small, and no more than
# INHERITED_FACTOR times the call's own output error (error inherited from upstream passes through a call
# at about its own size; two different tensors differ at order one)
INPUT_REL_MAX = 0.1
INHERITED_FACTOR = 10.0


def mark_unverified_inputs(row: Row) -> None:
    """Mark a call paired by its outputs only whose inputs do not correspond (``Row.unverified_inputs``).

    Two calls whose outputs agree need not take the same inputs (a dropout
    after a linear layer and the MLP block around that layer return the same
    tensor). Forcing such a call feeds it a tensor it does not take, and the
    "own error" that follows is the forcing's, not the call's. Read from the
    plain run, while both calls' inputs are at hand.
    """
    if not row.layer.match.startswith(OUTPUT_ONLY_PAIRINGS):
        return
    worst = _input_mismatch(row)
    if worst is None:
        return
    row.unverified_inputs = row.layer.unverified_inputs = True
    row.layer.note = _join(
        row.layer.note,
        f"inputs unverified: paired by output values, but its input {worst[0]} differs from the reference "
        f"call's in the plain run (rel_l2 {worst[1]:.2e}); not teacher-forced, no own error measured",
    )


def _input_mismatch(row: Row) -> tuple[str, float] | None:
    """``(port leaf, rel_l2)`` of a linked input that does not correspond to its reference input, or None."""
    if not row.inputs_from_ref:
        return ("(none linked)", float("inf")) if row.port.float_inputs() else None
    lyr = row.layer
    out_rel = lyr.rel_l2 if lyr.rel_l2 == lyr.rel_l2 else 0.0
    allowed = min(INPUT_REL_MAX, INHERITED_FACTOR * max(out_rel, 1e-6))
    for pk, (rk, t) in list(row.inputs_from_ref.items()):
        ref, port = forward(t, row.ref.inputs[rk]), row.port.inputs[pk]
        s, _ = stats_and_detail(ref, port, lyr.atol, lyr.rtol)
        if s.passes() or s.rel_l2 <= allowed:
            continue
        if _fill_like(ref) or _fill_like(port):
            del row.inputs_from_ref[pk]  # a mask written another way (additive vs boolean): the port keeps its own
            continue
        return pk, s.rel_l2
    return None


class ForcedInputs(Mapping):
    """Teacher-forcing inputs of one port call, read from the reference when asked for.

    The values are computed only when the port's run reaches the call, so a
    spilled reference is read from disk one call at a time.
    """

    def __init__(self, row: Row, port_framework: str = "flax"):
        self.ref, self.links = row.ref, row.inputs_from_ref
        self.port_framework = port_framework

    def __getitem__(self, pk: str) -> Any:
        rk, t = self.links[pk]
        v = forward(t, self.ref.inputs[rk])
        kind = kind_of(v)
        if kind == "numpy":
            return np.ascontiguousarray(v)
        # A device value goes to the port's framework on its device (DLPack where it can), not through numpy.
        if self.port_framework == "torch":
            return to_torch(v) if kind == "jax" else v
        return to_jax(v) if kind == "torch" else v

    def __iter__(self) -> Iterator[str]:
        return iter(self.links)

    def __len__(self) -> int:
        return len(self.links)


def forward(t: Transform, a: Any) -> Any:
    """``t.forward(a)``; a device value stays on its device for reshapes and axis moves, else is read on the host."""
    if t.on_device or kind_of(a) == "numpy":
        return t.forward(a)
    return t.forward(to_host(a))


class _Gap(NamedTuple):
    """A call's input already off under teacher forcing: the worst leaf and its statistics."""

    row: Row
    stats: Stats
    leaf: str
    lrec: CallRecord


def localize(ev: Evidence, run: Any, store: Any, notes: list[str]) -> None:
    """Re-run the port with every aligned call fed the reference's inputs; fill local errors and blame.

    ``run`` hands the port's calls to an ``on_call`` function and ``store``
    says what to do with each afterwards (see :mod:`xfdiff.runs`). Each
    row's ``inputs_from_ref`` (filled by :func:`xfdiff.rows.make_row`) says
    what its port call is fed.
    """
    subst = {
        (row.port.path, row.port.call_index): ForcedInputs(row, ev.port.framework)
        for row in ev.rows
        if row.inputs_from_ref and not row.unverified_inputs
    }
    port_row = {row.port.key: row for row in ev.rows}
    # Detectors read a composite culprit's children under teacher forcing, and children
    # return before their parent: keep the calls inside any module that diverged.
    diverged = {row.port.path for row in ev.rows if row.layer.status != "ok" and row.port.path}
    gaps: list[_Gap] = []

    def inside_diverged(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in diverged for i in range(1, len(parts)))

    def work(lrec: CallRecord) -> bool:
        row = port_row.get(lrec.key)
        if row is None or row.ref_key is None or row.port_key not in lrec.outputs:
            return inside_diverged(lrec.path)
        if row.unverified_inputs:  # not forced: its output under forcing says nothing about its own code
            store.done_with(row.ref)
            return row.layer.status != "ok" or inside_diverged(lrec.path)
        _local_error(row, lrec)
        gap = _gap_stats(row, lrec)
        if gap is not None:
            gaps.append(_Gap(row, gap[0], gap[1], lrec))
        store.done_with(row.ref)
        return row.layer.local_status != "ok" or row.layer.status != "ok" or inside_diverged(lrec.path)

    queue = CallQueue(work, store)
    try:
        local_trace = run.run(queue.on_call, substitute=subst)
        queue.drain()
    except XfdiffError as e:
        notes.append(f"teacher-forced re-run failed ({e}); first divergence uses propagated error")
        for row in ev.rows:
            row.layer.note = _join(row.layer.note, "local error not measured: teacher-forced re-run failed")
        return
    ev.port.local_trace = local_trace
    for row in ev.rows:
        if row.port_local is None and not row.unverified_inputs:
            row.layer.note = _join(
                row.layer.note, "local error not measured: the call did not recur under teacher forcing"
            )
    # blame needs every row's own local error, measured above; rows in order, whatever order the calls came in
    for g in sorted(gaps, key=lambda g: g.row.layer.order):
        _blame_gap(g.row, g.stats, g.leaf, g.lrec, local_trace, port_row)
    assign_blame(ev.rows)


def _local_error(row: Row, lrec: CallRecord) -> None:
    """Fill a row's local (teacher-forced) error from ``lrec``, the port call fed the reference's inputs."""
    lyr = row.layer
    row.port_local = lrec
    missing = [k for k in row.port.float_inputs() if k not in row.inputs_from_ref]
    r = forward(row.transform, row.ref.outputs[row.ref_key])
    p = lrec.outputs[row.port_key]
    s, _ = stats_and_detail(r, p, lyr.atol, lyr.rtol)
    lyr.local_max_abs, lyr.local_mean_abs, lyr.local_rel_l2 = s.max_abs, s.mean_abs, s.rel_l2
    lyr.local_tol_needed = s.tol_needed
    lyr.local_status = status_of(s)
    if lyr.local_status != "ok" or lyr.status != "ok":
        lyr.local_detail = stats_and_detail(r, p, lyr.atol, lyr.rtol, detail=True)[1]
    if missing:
        lyr.note = _join(lyr.note, f"inputs {missing} had no reference counterpart; local error is partial")


def _gap_stats(row: Row, lrec: CallRecord) -> tuple[Stats, str] | None:
    """``(stats, leaf)`` of the worst forced input leaf before replacement, or None.

    Error already present in a call's own input under teacher forcing: every
    earlier aligned call was forced, so what is left is what the enclosing
    module's own code (between its children) did (:func:`_blame_gap`).
    """
    worst = None
    for pk, (rk, t) in row.inputs_from_ref.items():
        raw = lrec.raw_inputs.get(pk)
        ref = row.ref.inputs[rk]
        if raw is None or _fill_like(ref):
            continue  # masks and fill values are compared by the pitfall detectors, not here
        s, _ = stats_and_detail(forward(t, ref), raw, row.layer.atol, row.layer.rtol)
        if worst is None or s.max_abs > worst[0].max_abs:
            worst = (s, pk)
    return worst


def _blame_gap(row: Row, s, pk: str, lrec: CallRecord, local_trace: Trace, port_row: dict) -> None:
    """Record a call's input gap ``s`` (at leaf ``pk``) and blame the enclosing call for it."""
    row.layer.input_max_abs = s.max_abs
    if s.passes():
        return
    parent = _enclosing_row(lrec, local_trace, port_row)
    if parent is None or _sibling_explains(parent, row, local_trace, port_row):
        return
    pl = parent.layer
    if pl.local_max_abs is None or s.max_abs > pl.local_max_abs:
        pl.local_max_abs = s.max_abs
    pl.local_status = "diverged" if s.nonfinite_mismatch == 0 else "nonfinite"
    gap_at = row.layer.order - 0.5
    if pl.blame_order is None or gap_at < pl.blame_order:
        pl.blame_order = gap_at
        parent.gap = (row, pk)  # the rounding floor (xfdiff.floor) re-judges the gap at this input
        pl.note = _join(
            pl.note,
            (
                f"own code changes the value before it reaches {row.layer.label}: that call's input "
                f"({pk}) is off by max_abs {s.max_abs:.2e} even with every earlier call fed the reference's values"
            ),
        )


def _sibling_explains(parent: Row, row: Row, trace: Trace, port_row: dict) -> bool:
    """True when an earlier call inside the same parent call has its own local error.

    Its output feeds this call's input, so the gap is that call's, not the parent's.
    """
    p_local = parent.port_local
    if p_local is None:
        return False
    prefix = p_local.path + "." if p_local.path else ""
    earlier = [r for r in trace.calls_of(p_local.path) if r.order < p_local.order]
    start = max((r.order for r in earlier), default=-1)
    me = row.port_local.order if row.port_local is not None else None
    for r in trace.records:
        if me is not None and r.order >= me:
            break
        if r.order > start and r.path.startswith(prefix) and r.key in port_row:
            if port_row[r.key].layer.local_status not in (None, "ok"):
                return True
    return False


def _fill_like(ref: np.ndarray) -> bool:
    """Non-finite or huge values (an attention mask, a fill value); no temporary arrays."""
    if not all(ref.shape):
        return False
    hi, lo = float(ref.max()), float(ref.min())  # numpy, torch or JAX: two scalars cross to the host
    return not (np.isfinite(hi) and np.isfinite(lo)) or max(hi, -lo) >= 1e4


def _enclosing_row(lrec: CallRecord, trace: Trace, port_row: dict) -> Row | None:
    path = lrec.path
    while True:
        if path == "":
            return None
        path = path.rsplit(".", 1)[0] if "." in path else ""
        later = [r for r in trace.calls_of(path) if r.order > lrec.order]
        if later:
            enclosing = min(later, key=lambda r: r.order)
            if enclosing.key in port_row and not port_row[enclosing.key].unverified_inputs:
                return port_row[enclosing.key]


def assign_blame(rows: list[Row]) -> None:
    """Where each row's own error first shows, in completion order (None: nowhere)."""
    for row in rows:
        lyr = row.layer
        if row.unverified_inputs:
            continue  # its inputs do not correspond: no claim about its own code
        own_bad = lyr.local_status not in (None, "ok") if lyr.local_status is not None else lyr.status != "ok"
        if own_bad:
            at = float(lyr.order)
            lyr.blame_order = at if lyr.blame_order is None else min(lyr.blame_order, at)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
