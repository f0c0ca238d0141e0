"""The verdict of a comparison: ``"match"``, ``"diverged"`` or ``"inconclusive"``, with its reason.

A row out of the plain tolerance is not yet a divergence. :func:`judge` runs
between teacher forcing and diagnosis and takes three things into account:

1. **The rounding floor** (:mod:`xfdiff.floor`): a row whose own error is
   within what float rounding does to the same computation is not blamed.
2. **Boundary differences**: a row whose difference disappears again
   downstream is a note, not a divergence. The rule: after the row, every
   aligned call up to the next row with its own error (and at least the first
   such call, or an enclosing call) agrees within tolerance on its propagated
   output, and the first of them by at least :data:`REAGREE_DROP` times less
   than the row's own error. The row is listed in :attr:`Report.boundaries`
   with where the two sides agree again and why (a bias or a scale applied
   outside the module, an extra leading axis, a parametrization module); it
   is never ``first_divergence`` and never a finding. A real bug whose effect
   reaches the output keeps its blame even when a boundary row precedes it.
3. **Accumulated rounding**: when every layer's own (teacher-forced) error
   is within tolerance or its floor, a final output outside the plain
   tolerance is rounding accumulated over many layers: ``"match"``, and the
   reason says so. Without teacher forcing (``local=False``) that cannot be
   told apart from code outside the aligned modules: ``"inconclusive"``.
4. **Coverage**: the share of the reference's parameterised modules and of
   its parameters that were compared. Below :data:`MIN_COVERAGE` (either
   share) a comparison that found no divergence is ``"inconclusive"`` (it
   cannot say "match" about code it did not see); a divergence found in the
   compared part is still ``"diverged"``.

:func:`decide` turns the judged rows into the verdict; it reads only the
report, so reports saved before verdicts existed get one when loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stats.meet import numel, to_host

MIN_COVERAGE = 0.5
IDENTIFIED_COVERAGE = 0.9  # compared + weight-identified share that stands in for MIN_COVERAGE (final output ok)
REAGREE_DROP = 100.0
VERDICTS = ("match", "diverged", "inconclusive")


# --- coverage -----------------------------------------------------------------------------


def coverage(ev: Any) -> dict[str, Any]:
    """Share of the reference's parameterised modules and parameters compared (a row exists).

    ``n_modules_identified``: modules not compared whose weights the port holds value for value
    (``Alignment.identified``); they count towards :data:`IDENTIFIED_COVERAGE` only.
    """
    ref_trace = ev.ref.trace
    params = {p: d for p, d in ref_trace.params.items() if d}
    compared = {r.ref.path for r in ev.rows}
    for g in getattr(ev.alignment, "fused", ()):  # a fused projection compared block by block counts whole
        ref_paths = {g.fused} if g.fused_side == ev.reference else set(g.parts)
        if compared & ref_paths:
            compared |= ref_paths
    ident = getattr(ev.alignment, "identified", {})
    identified = set(ident) if ev.reference == "torch" else set(ident.values())
    n_mod = len(params)
    n_par = int(sum(int(numel(a)) for d in params.values() for a in d.values()))
    seen = [p for p in params if p in compared]
    c_par = int(sum(int(numel(a)) for p in seen for a in params[p].values()))
    known = [p for p in params if p not in compared and p in identified]
    missing = sorted(
        (p for p in params if p not in compared and p not in identified),
        key=lambda p: -sum(numel(a) for a in params[p].values()),
    )
    return {
        "n_modules_identified": len(known),
        "modules": len(seen) / n_mod if n_mod else 1.0,
        "parameters": c_par / n_par if n_par else 1.0,
        "n_modules": n_mod,
        "n_modules_compared": len(seen),
        "n_parameters": n_par,
        "n_parameters_compared": c_par,
        "not_compared": [p or "(root)" for p in missing[:12]],
        "n_not_compared": len(missing),
    }


def _legacy_coverage(meta: dict) -> dict[str, Any] | None:
    n, k = meta.get("n_param_modules_torch"), meta.get("n_param_modules_aligned")
    if not isinstance(n, int) or not isinstance(k, int):
        return None
    return {"modules": k / n if n else 1.0, "n_modules": n, "n_modules_compared": k}


# --- boundaries ---------------------------------------------------------------------------


def _inside(path: str | None, ancestor: str | None) -> bool:
    if path is None or ancestor is None:
        return False
    return ancestor == "" or path.startswith(ancestor + ".")


def _own_error(lyr: Any) -> float:
    if lyr.status == "shape_mismatch":
        return float("inf")
    e = lyr.local_max_abs if lyr.local_max_abs is not None else lyr.max_abs
    return float(e) if e is not None and e == e else float("inf")


def _reagree(rows: list[Any], i: int) -> Any | None:
    """The row where the difference of ``rows[i]`` is gone again, or None (module docstring, rule 2)."""
    lyr = rows[i].layer
    own = _own_error(lyr)
    first = None
    for row in rows[i + 1 :]:
        other = row.layer
        if _inside(other.torch_path, lyr.torch_path):
            continue
        ancestor = _inside(lyr.torch_path, other.torch_path)
        if other.blame_order is not None and not ancestor:
            break  # the next row with its own error: the window ends
        if other.status != "ok":
            return None
        if first is None:
            if not other.max_abs <= own / REAGREE_DROP:
                return None
            first = row
        if ancestor:
            return first
    return first


def _why(ev: Any, row: Any) -> str:
    lyr = row.layer
    ts, fs = lyr.torch_shape, lyr.flax_shape
    if lyr.status == "shape_mismatch" and ts is not None and fs is not None:
        big, small = (ts, fs) if len(ts) > len(fs) else (fs, ts)
        if len(big) > len(small) and tuple(big[len(big) - len(small) :]) == tuple(small):
            side = "torch" if big is ts else "port"
            return (
                f"extra leading axis: the {side} side returns {tuple(big)}, the other {tuple(small)} (broadcast later)"
            )
    typ = f"{lyr.torch_type or ''} {lyr.flax_type or ''}".lower()
    if "parametriz" in typ or "weightnorm" in typ or "weight_norm" in typ:
        return "parametrization module: the weight is computed in a different module on the two sides"
    if lyr.status == "ok":
        return (
            "its own code compensates an earlier boundary difference (it differs only when fed the reference's values)"
        )
    pair = _pair(ev, row)
    if pair is not None:
        yr, yp = pair
        d = (yp - yr).reshape(-1, yr.shape[-1]) if yr.ndim else None
        if d is not None and d.shape[0] > 1:
            spread = float(np.max(np.abs(d - d[0])))
            if float(np.max(np.abs(d[0]))) > 0 and spread <= 1e-5 * max(1.0, float(np.max(np.abs(d[0])))):
                who = "reference" if float(np.mean(d[0])) <= 0 else "port"
                return f"bias applied outside the module: the two sides differ by one vector over the last axis ({who} adds it later)"
        try:
            from .pitfalls.boundary import relation

            rel = relation(ev, row)
        except Exception:  # a relation is a nicety; the note stands without it
            rel = None
        if rel:
            if "scale" in rel:
                return f"scale applied outside the module ({rel['relation']})"
            return f"elementwise function applied outside the module ({rel['relation']})"
    return "work moved across a module boundary (the difference does not reach the output)"


def _pair(ev: Any, row: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if row.ref_key is None or row.transform is None:
        return None
    ref_rec, port_rec = row.ref, row.port
    if row.port_key not in port_rec.outputs:
        return None
    yr = np.asarray(to_host(ref_rec.outputs[row.ref_key]), dtype=np.float64)
    yp = np.asarray(row.transform.inverse(to_host(port_rec.outputs[row.port_key])), dtype=np.float64)
    return (yr, yp) if yr.shape == yp.shape else None


def agree_in_plain_run(rows: list[Any]) -> None:
    """Unblame rows whose output agrees in the plain run although their teacher-forced output does not.

    A layer whose own code is wrong hands a wrong output downstream in the plain run
    too. When the plain output is within tolerance, a large teacher-forced error means
    the forced inputs were not what the port's call really takes (a call paired with a
    differently shaped counterpart, e.g. a fused attention module with its output
    projection), or that the call undoes an earlier difference: neither is its own bug.
    """
    for row in rows:
        lyr = row.layer
        if lyr.blame_order is None or lyr.status != "ok" or lyr.local_max_abs is None:
            continue
        if lyr.local_status not in ("diverged",):
            continue
        lyr.blame_order = None
        lyr.note = f"{lyr.note}; " if lyr.note else ""
        lyr.note += (
            f"not blamed: its output agrees in the plain run (max_abs {lyr.max_abs:.2e}); the teacher-forced "
            f"error ({lyr.local_max_abs:.2e}) comes from inputs the port's call does not take as the reference's does"
        )


def boundaries(ev: Any) -> list[dict[str, Any]]:
    """Demote boundary rows (no blame) and describe them; later rows first so windows see real blame."""
    rows = ev.rows
    notes = []
    for i in range(len(rows) - 1, -1, -1):
        lyr = rows[i].layer
        if lyr.blame_order is None or lyr.status == "nonfinite" or lyr.local_status == "nonfinite":
            continue
        at = _reagree(rows, i)
        if at is None:
            continue
        why = _why(ev, rows[i])
        lyr.blame_order = None
        lyr.note = f"{lyr.note}; " if lyr.note else ""
        lyr.note += f"boundary difference: the two sides agree again at {at.layer.label} ({why})"
        notes.append(
            {
                "torch_path": lyr.torch_path,
                "flax_path": lyr.flax_path,
                "call_index": lyr.call_index,
                "label": lyr.label,
                "agrees_again_at": at.layer.label,
                "why": why,
                "own_max_abs": None if _own_error(lyr) == float("inf") else _own_error(lyr),
            }
        )
    notes.reverse()
    return notes


# --- the two hooks ------------------------------------------------------------------------


def judge(ev: Any, report: Any, torch_side: Any = None) -> None:
    """Floor, boundaries and coverage for ``ev``'s rows; results into ``report.meta``.

    Call after teacher forcing and before diagnosis (diagnosis then only sees
    rows that are still blamed).
    """
    blamed = [r for r in ev.rows if r.layer.blame_order is not None]
    from .floor import measure

    report.meta["floor"] = measure(ev, torch_side, blamed)
    agree_in_plain_run(ev.rows)
    report.meta["boundaries"] = boundaries(ev)
    report.meta["coverage"] = coverage(ev)


def decide(report: Any) -> dict[str, str]:
    """``{"verdict": ..., "reason": ...}`` from the report's rows, final output and coverage."""
    layers = report.layers
    cov = report.meta.get("coverage") or _legacy_coverage(report.meta)
    blamed = [lyr for lyr in layers if lyr.blame_order is not None]
    final = report.final
    if not layers:
        return {"verdict": "inconclusive", "reason": "no module call of the two models could be compared"}
    if blamed:
        first = min(blamed, key=lambda lyr: lyr.blame_order)
        own = first.local_max_abs if first.local_max_abs is not None else first.max_abs
        if first.status == "shape_mismatch":
            what = "output shapes differ"
        elif first.floor is not None:
            what = f"own error RMSE {first.floor_error:.2e} exceeds its rounding floor {first.floor:.2e}"
        else:
            what = f"own error max_abs {own:.2e} exceeds tolerance"
        more = f" ({len(blamed) - 1} more layer(s) add error of their own)" if len(blamed) > 1 else ""
        return {"verdict": "diverged", "reason": f"{first.label}: {what}{more}"}
    low = _low_coverage(cov)
    if low and not _identified_enough(cov, final):
        return {"verdict": "inconclusive", "reason": low}
    if final is not None and final.status != "ok":
        floored = [lyr for lyr in layers if lyr.floor is not None]
        if floored or any(lyr.local_status is not None for lyr in layers):
            by_floor = f" ({len(floored)} judged by the floor)" if floored else ""
            return {
                "verdict": "match",
                "reason": f"every layer's own error is within tolerance or its rounding floor{by_floor}; "
                f"the final output's max_abs {final.max_abs:.2e} is accumulated rounding",
            }
        return {
            "verdict": "inconclusive",
            "reason": f"the final output differs (max_abs {final.max_abs:.2e}) but no aligned layer adds error: "
            "the difference comes from code outside the aligned modules (add taps or mapping= to compare it)",
        }
    n_b = len(report.meta.get("boundaries") or [])
    extra = f"; {n_b} boundary difference(s) re-agree downstream" if n_b else ""
    share = f" ({100 * cov['modules']:.0f}% of parameterised modules compared)" if cov else ""
    if low:  # compared + identified cover the model and the final output agrees (_identified_enough)
        n_id = cov.get("n_modules_identified", 0)
        share = (
            f" ({100 * cov['modules']:.0f}% of parameterised modules compared, {n_id} more identified by their "
            f"weights in the port; the final output agrees within tolerance)"
        )
    return {
        "verdict": "match",
        "reason": f"every compared layer is within tolerance or its rounding floor{share}{extra}",
    }


def _identified_enough(cov: dict | None, final: Any) -> bool:
    """Compared and weight-identified modules together cover the model, and the final output agrees.

    A port whose weights are all found (value for value) and whose output is within tolerance is a
    match even when few of its modules could be compared call by call (a function port marked with
    a few value taps). Never when the final output differs.
    """
    if not cov or final is None or final.status != "ok":
        return False
    n = cov.get("n_modules", 0)
    known = cov.get("n_modules_compared", 0) + cov.get("n_modules_identified", 0)
    return bool(n) and known >= IDENTIFIED_COVERAGE * n


def _low_coverage(cov: dict | None) -> str | None:
    if not cov:
        return None
    m, p = cov.get("modules", 1.0), cov.get("parameters", 1.0)
    if m >= MIN_COVERAGE and p >= MIN_COVERAGE:
        return None
    names = ", ".join(cov.get("not_compared", [])[:5])
    more = cov.get("n_not_compared", 0) - min(5, len(cov.get("not_compared", [])))
    names += f" and {more} more" if more > 0 else ""
    return (
        f"only {100 * m:.0f}% of the reference's parameterised modules ({100 * p:.0f}% of its parameters) were "
        f"compared, below {100 * MIN_COVERAGE:.0f}%: not aligned: {names or 'unknown'}; pair them with "
        "mapping={torch_path: flax_path} or mark the port's values with xfdiff.tap"
    )


def settle(report: Any) -> None:
    """Store :func:`decide`'s verdict in ``report.meta["verdict"]``."""
    report.meta["verdict"] = decide(report)
