"""Splice confirmation: how much of the final error does each culprit account for?

Teacher forcing (:mod:`xfdiff.localize`) names the calls whose own code adds
error. It does not say whether fixing one of them makes the port right, or
whether a second bug hides behind the first. A *splice* answers that: the
port is re-run once with a single call's output replaced by the reference's
(everything upstream runs as before, everything downstream sees the
reference's value), and the final output is compared again. The share of the
final max error that disappears is that site's share:
``1 - final_after / final_before``.

Sites are the calls whose own error is out of tolerance, without the calls
that merely enclose another site (a block around a wrong activation inherits
its error), and the rows of the findings. Where a finding carries its
recomputation under the fix (``Site.finding(fixed=...)``), that output,
computed from the port's own input at the site, is spliced in too: the share
it removes says whether the suggested fix would work. When the first
divergence alone does not bring the final output within tolerance, sites are
added (largest share first) until a set does.

Each splice costs one forward pass of the port; none runs when nothing is out
of tolerance.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple

import numpy as np

from .errors import XfdiffError
from .evidence import Evidence, Row
from .stats import stats_and_detail
from .stats.dispatch import kind_of
from .stats.meet import to_host


class Err(NamedTuple):
    """The final output's error: max_abs, squared L2 norm, within tolerance."""

    max_abs: float
    sq: float
    passes: bool


MAX_SITES = 8  # splice runs per comparison, besides the fix and set runs


def confirm(ev: Evidence, port_side: Any, report: Any) -> None:
    """Fill ``splice_*`` / ``fix_share`` on the sites' rows and findings, and ``report.meta["splice"]``."""
    final = ev.final
    if final is None or final.ref_key is None or final.transform is None or final.layer.status == "ok":
        return
    sites, skipped = _sites(ev, report)
    if not sites:
        return
    t0 = time.perf_counter()
    runner = _Runner(ev, port_side)
    before = runner.before
    passes = {}
    for row in sites:
        after = runner.final_after(_output_subst(ev, _splice_point(ev, row)))
        passes[id(row)] = after is not None and after.passes
        row.layer.splice_final_after = None if after is None else after.max_abs
        row.layer.splice_share = share(before, after)
    for f in report.findings:
        row = _row_of(ev, f)
        if row is None:
            continue
        f.splice_share = row.layer.splice_share
        fixed = getattr(f, "_fixed", None)
        sub = _fix_subst(ev, row, fixed) if fixed is not None else None
        if sub:
            after = runner.final_after(sub)
            f.fix_final_after = None if after is None else after.max_abs
            f.fix_share = share(before, after)
            if row.layer.fix_share is None:
                row.layer.fix_share = f.fix_share
    report.meta["splice"] = _sufficiency(ev, runner, sites, before, passes) | {
        "runs": runner.runs,
        "seconds": round(time.perf_counter() - t0, 4),
        "failed": runner.failed,
        "not_spliced": skipped,
    }


def share(before: Err, after: Err | None) -> float | None:
    """The share of the final error a splice removed: ``1 - ||e_after||² / ||e_before||²``.

    Squared L2 norms add up for independent errors, so the shares of two
    unrelated bugs sum to about 1; negative when the splice made it worse.
    """
    if after is None or not np.isfinite(before.sq) or before.sq <= 0:
        return None
    if not np.isfinite(after.sq):
        return -1.0
    return float(1.0 - after.sq / before.sq)


# --- which sites --------------------------------------------------------------------------------


def _sites(ev: Evidence, report: Any) -> tuple[list[Row], int]:
    """Rows with own error or a finding, enclosing rows dropped, in blame order; and how many were left out."""
    flagged = [r for r in ev.rows if r.layer.blame_order is not None and _spliceable(r)]
    for f in report.findings:
        row = _row_of(ev, f)
        if row is not None and _spliceable(row) and row not in flagged:
            flagged.append(row)
    inner = [r for r in flagged if not any(o is not r and _encloses(ev, r, o) for o in flagged)]
    inner.sort(key=lambda r: r.layer.blame_order if r.layer.blame_order is not None else r.layer.order)
    return inner[:MAX_SITES], max(0, len(inner) - MAX_SITES)


def _spliceable(row: Row) -> bool:
    """Its outputs pair, and it is not the whole model (replacing that would replace the answer)."""
    return row.ref_key is not None and row.transform is not None and row.torch.path != "" and row.flax.path != ""


def _ref_rec(ev: Evidence, row: Row):
    return row.ref


def _port_rec(ev: Evidence, row: Row):
    return row.port


def _encloses(ev: Evidence, outer: Row, inner: Row) -> bool:
    """True when ``outer``'s call (reference side) contains ``inner``'s call."""
    o, i = _ref_rec(ev, outer), _ref_rec(ev, inner)
    if o.path == i.path or not (o.path == "" or i.path.startswith(o.path + ".")):
        return False
    trace = ev.ref.trace
    later = [r for r in trace.calls_of(o.path) if r.order > i.order]
    return bool(later) and min(later, key=lambda r: r.order) is o


def _splice_point(ev: Evidence, row: Row) -> Row:
    """Where to splice for ``row``: itself, or the enclosing call where the two sides agree again.

    A difference that is gone again at the enclosing module's output (work
    moved across a module boundary: a bias or scale applied by the parent) is
    no cause of the final error; splicing the reference's value at the row itself would
    apply that work twice. Splicing where the sides re-agree gives its true
    share, about zero.
    """
    outer = _enclosing(ev, row)
    if outer is not None and outer.layer.status == "ok" and _spliceable(outer):
        if f"spliced at {outer.layer.label}" not in row.layer.note:
            row.layer.note = _join(row.layer.note, f"spliced at {outer.layer.label}, where the two sides agree again")
        return outer
    return row


def _enclosing(ev: Evidence, row: Row) -> Row | None:
    """The nearest aligned row whose call contains ``row``'s call."""
    by_ref = {id(_ref_rec(ev, r)): r for r in ev.rows}
    trace = ev.ref.trace
    rec = _ref_rec(ev, row)
    path = rec.path
    while path:
        path = path.rsplit(".", 1)[0] if "." in path else ""
        later = [r for r in trace.calls_of(path) if r.order > rec.order]
        if later:
            hit = by_ref.get(id(min(later, key=lambda r: r.order)))
            if hit is not None:
                return hit
    return None


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _row_of(ev: Evidence, f: Any) -> Row | None:
    for r in ev.rows:
        if r.layer.torch_path == f.torch_path and r.layer.flax_path == f.flax_path:
            if r.layer.call_index == f.call_index:
                return r
    return None


# --- what to splice in --------------------------------------------------------------------------


def _output_subst(ev: Evidence, row: Row) -> dict:
    """The reference's outputs of ``row`` in the port's layout, for every port output leaf that pairs."""
    ref, port = _ref_rec(ev, row), _port_rec(ev, row)
    ref_out, port_out = ref.float_outputs(), port.float_outputs()
    leaves = {row.port_key: row.transform.forward(ref_out[row.ref_key])}
    for pk, pv in port_out.items():
        if pk in leaves or pk not in ref_out:
            continue
        try:
            v = row.transform.forward(ref_out[pk])
        except (ValueError, TypeError):
            continue
        if v.shape == pv.shape:
            leaves[pk] = v
    return {(port.path, port.call_index): {k: _like(v, port_out[k]) for k, v in leaves.items()}}


def _like(v: Any, like: Any) -> Any:
    """``v`` with ``like``'s dtype; a device value stays where it is (the port's capture casts it)."""
    return np.asarray(v).astype(like.dtype) if kind_of(v) == "numpy" else v


def _fix_subst(ev: Evidence, row: Row, fixed: Any) -> dict | None:
    """The port's output recomputed under the fix from its own (propagated) input, or None."""
    port = _port_rec(ev, row)
    y = port.outputs.get(row.port_key)
    if y is None:
        return None
    xs = [v for v in port.float_inputs().values() if v.shape == y.shape]
    if len(xs) != 1:
        return None
    ref_is_torch = ev.reference == "torch"
    x = row.transform.inverse(xs[0]) if ref_is_torch else xs[0]  # PyTorch layout
    try:
        y_fix = np.asarray(fixed(x))
    except Exception as e:  # a recomputation that does not fit this input: no fix share
        warnings.warn(f"xfdiff: could not recompute {row.layer.label} under the fix ({e})", stacklevel=3)
        return None
    if ref_is_torch:
        y_fix = row.transform.forward(y_fix)
    if y_fix.shape != y.shape:
        return None
    return {(port.path, port.call_index): {row.port_key: y_fix.astype(y.dtype)}}


# --- re-running the port ------------------------------------------------------------------------


class _Runner:
    """Re-runs the port with output substitutions and measures its final output."""

    def __init__(self, ev: Evidence, port_side: Any):
        self.ev, self.side = ev, port_side
        self.runs, self.failed = 0, 0
        fr = ev.final
        self.ref_final = fr.transform.forward(to_host(_ref_rec(ev, fr).outputs[fr.ref_key]))
        self.atol, self.rtol = fr.layer.atol, fr.layer.rtol
        self.before = self.measure(_port_rec(ev, fr).outputs[fr.port_key])

    def measure(self, out: np.ndarray) -> Err:
        out = to_host(out)  # a device capture's final output: read on the host (the final row is out of tolerance)
        s, _ = stats_and_detail(self.ref_final, out, self.atol, self.rtol)
        d = np.asarray(out, dtype=np.float64) - np.asarray(self.ref_final, dtype=np.float64)
        sq = float(np.sum(np.square(d[np.isfinite(d)]))) if np.all(np.isfinite(d)) else float("inf")
        return Err(float(s.max_abs), sq, bool(s.passes()))

    def final_after(self, subst: dict) -> Err | None:
        """The final output's error with ``subst`` spliced in (None when the re-run failed)."""
        self.runs += 1
        try:
            trace = self.side.capture(substitute=subst)
        except XfdiffError:
            self.failed += 1
            return None
        root = trace.root()
        out = None if root is None else root.outputs.get(self.ev.final.port_key)
        if out is None or out.shape != self.ref_final.shape:
            self.failed += 1
            return None
        return self.measure(out)


def _sufficiency(ev: Evidence, runner: _Runner, sites: list[Row], before: Err, passes: dict) -> dict:
    """Whether splicing the first site suffices; else one site that does, else a greedy set (largest shares first)."""
    labels = [r.layer.label for r in sites]
    out: dict[str, Any] = {
        "final_before": before.max_abs,
        "sites": labels,
        "first_suffices": bool(passes[id(sites[0])]),
    }
    out["sufficient_set"], out["set_final_after"] = None, None
    single = next((r for r in sites if passes[id(r)]), None)
    if single is not None:
        out.update(sufficient_set=[single.layer.label], set_final_after=single.layer.splice_final_after)
        return out
    ordered = sorted(sites, key=lambda r: -(r.layer.splice_share or 0.0))
    chosen = ordered[:1]
    for row in ordered[1:]:
        chosen.append(row)
        subst: dict = {}
        for r in chosen:
            subst.update(_output_subst(ev, _splice_point(ev, r)))
        after = runner.final_after(subst)
        out["set_final_after"] = None if after is None else after.max_abs
        if after is not None and after.passes:
            out["sufficient_set"] = [r.layer.label for r in sites if r in chosen]
            break
    return out


def finish(ev: Evidence, port_side: Any, report: Any, splice: bool = True) -> None:
    """After diagnosis: language-model metrics at the final output, then splice confirmation.

    A failure here is a warning: the comparison itself stands.
    """
    from .lm_metrics import attach

    try:
        for step in (lambda: attach(ev, report), lambda: confirm(ev, port_side, report) if splice else None):
            try:
                step()
            except XfdiffError:
                raise
            except Exception as e:
                warnings.warn(f"xfdiff: splice/output metrics failed ({type(e).__name__}: {e})", stacklevel=3)
    finally:
        for f in report.findings:  # the recomputations hold the site's tensors: drop them with the evidence
            f.__dict__.pop("_fixed", None)
