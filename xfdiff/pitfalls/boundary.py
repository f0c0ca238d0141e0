"""Boundary shifts: the final output agrees, an intermediate pair does not.

A port may apply a scale or an activation on the other side of a module
boundary (the reference ends block A with ×2, the port starts block B with
it). Every layer in between then differs while the model as a whole is
right, so naming a culprit would mislead. xfdiff reports one
``boundary_shift`` finding at the first differing layer instead, with the
relation between the two values there (a scale, or an elementwise function
one side applies and the other does not) and where the two sides agree again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..report import Finding
from .numerics import f64, gelu, rel

ELEMENTWISE = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: gelu(x, "erf"),
    "gelu_tanh": lambda x: gelu(x, "tanh"),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}
FIT = 1e-5  # a relation "fits" when it reproduces the other side to this relative error


def boundary_findings(ev: Any, rows: list[Any]) -> list[Finding]:
    """One ``boundary_shift`` finding at the first differing row (final output within tolerance)."""
    first = rows[0]
    lyr = first.layer
    evidence: dict[str, Any] = {"final_rel_l2": _num(ev.final.layer.rel_l2), "n_rows_differing": len(rows)}
    rel = relation(ev, first)
    if rel:
        evidence.update(rel)
    later = [
        r
        for r in ev.rows
        if r.layer.order > lyr.order and r.layer.status == "ok" and not _inside(r.layer.torch_path, lyr.torch_path)
    ]
    if later:
        evidence["agrees_again_at"] = later[0].layer.label
    where = f", and the two sides agree again at {later[0].layer.label}" if later else ""
    if rel:
        msg = (
            f"The final output agrees within tolerance but {lyr.label} differs ({rel['relation']}){where}: "
            "the port applies this on the other side of a module boundary, not a numerical bug."
        )
    else:
        msg = (
            f"The final output agrees within tolerance but {lyr.label} differs{where}: the difference does not "
            "reach the output (work moved across a module boundary, or a value the output does not use)."
        )
    fix = (
        "none needed for the final output; to compare intermediates one to one, apply the operation in the same "
        "module on both sides"
    )
    return [
        Finding(
            pitfall="boundary_shift",
            torch_path=lyr.torch_path,
            flax_path=lyr.flax_path,
            message=msg,
            evidence=evidence,
            fix=fix,
            call_index=lyr.call_index,
            confidence="confirmed" if relation else "likely",
        )
    ]


def _inside(path: str | None, ancestor: str | None) -> bool:
    if path is None or ancestor is None:
        return False
    return ancestor == "" or path.startswith(ancestor + ".")


def _num(v: Any) -> float | None:
    try:
        return float(f"{float(v):.6g}")
    except (TypeError, ValueError):
        return None


def _pair(ev: Any, row: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(reference, port) outputs of ``row`` as propagated, in the reference's layout."""
    if row.ref_key is None or row.transform is None:
        return None
    ref_rec, port_rec = row.ref, row.port
    if row.port_key not in port_rec.outputs:
        return None
    return f64(ref_rec.outputs[row.ref_key]), f64(row.transform.inverse(port_rec.outputs[row.port_key]))


def relation(ev: Any, row: Any) -> dict[str, Any] | None:
    pair = _pair(ev, row)
    if pair is None:
        return None
    yr, yp = pair
    den = float(np.vdot(yr, yr))
    if den > 0:
        s = float(np.vdot(yp, yr) / den)
        if rel(yp, s * yr) <= FIT:
            return {"relation": f"port = {s:.6g} × reference", "scale": _num(s)}
    for name, fn in ELEMENTWISE.items():
        if rel(yr, fn(yp)) <= FIT:
            return {"relation": f"reference = {name}(port)", "function": name, "applied_by": "reference"}
        if rel(yp, fn(yr)) <= FIT:
            return {"relation": f"port = {name}(reference)", "function": name, "applied_by": "port"}
    return None
