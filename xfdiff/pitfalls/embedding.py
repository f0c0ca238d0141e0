"""Embeddings: position-id offsets (P24) and the √d embedding scale (P23).

BART/mBART/OPT learned position tables are read at ``positions + 2``;
RoBERTa/XLM-R at ``padding_idx + 1 + n``. Fairseq-derived models with
``scale_embedding=True`` (Marian, M2M100) and Gemma multiply token embeddings
by √d_model (Gemma in the activation dtype); T5 does not.
https://github.com/huggingface/transformers/issues/19240,
https://github.com/huggingface/transformers/pull/29402
"""

from __future__ import annotations

import math

import numpy as np

from .numerics import f64, rel
from .registry import register
from .sites import Site, numbers

MAX_OFFSET = 8


def _lookup_ids(site: Site, w: np.ndarray) -> np.ndarray | None:
    for v in site.int_inputs():
        if v.shape + (w.shape[1],) == site.y_ref.shape and v.size and v.min() >= 0 and v.max() < w.shape[0]:
            return v.astype(np.int64)
    return None


def named_constant(s: float, d: int) -> str:
    """A readable name for a recovered scale (``sqrt(d)``, ``1/sqrt(d)``, ...) or the number."""
    for name, val in (
        (f"sqrt({d})", math.sqrt(d)),
        (f"1/sqrt({d})", 1 / math.sqrt(d)),
        (str(d), float(d)),
        (f"1/{d}", 1.0 / d),
    ):
        if abs(s / val - 1) < 2e-3:
            return name
    return f"{s:.6g}"


@register("embedding", ids=("position_offset", "embedding_scale"), kinds=("call", "segment"), stage=0)
def detect_embedding(site: Site):
    """Shifted row look-ups or a scale on an embedding's output."""
    if site.kind == "segment":
        return _segment_scale(site)
    w = site.ref_params.get("weight")
    if w is None or w.ndim != 2 or site.float_inputs():
        return None
    ids = _lookup_ids(site, w)
    if ids is None:
        return None
    wf = f64(w)
    control = rel(wf[ids], site.y_ref)
    if control > 3 * site.tau:
        return None
    scored = [
        (rel(site.y_port, wf[ids + k], site.y_ref), "offset", k)
        for k in range(-MAX_OFFSET, MAX_OFFSET + 1)
        if k and (ids + k).min() >= 0 and (ids + k).max() < w.shape[0]
    ]
    yr = wf[ids]
    s = float(np.vdot(site.y_port, yr) / max(np.vdot(yr, yr), 1e-300))
    scored.append((rel(site.y_port, s * yr, site.y_ref), "scale", s))
    eh, what, val = min(scored, key=lambda t: t[0])
    if not site.confirmed(eh, control):
        return None
    ev = numbers(site, eh, control)
    if what == "scale":
        return _scale_finding(site, ev, val, w.shape[1], site.row.layer.label)
    ev["offset"] = int(val)
    port_ids = [
        v for v in site.x_port.values() if isinstance(v, np.ndarray) and v.shape == ids.shape and v.dtype.kind in "iu"
    ]
    if port_ids:
        diff = np.unique(port_ids[0].astype(np.int64) - ids)
        ev["port_ids_minus_reference_ids"] = [int(d) for d in diff[:4]]
    msg = (
        f"The port reads embedding rows shifted by {int(val):+d} (position ids offset; BART/OPT tables start "
        "at 2, RoBERTa at padding_idx + 1)."
    )
    fix = {
        "flax": f"positions = positions {-int(val):+d}  # before self.embed(positions)",
        "torch": f"positions = positions {-int(val):+d}  # before self.embed(positions)",
    }
    return site.finding("position_offset", msg, ev, fix)


def _scale_finding(site: Site, ev: dict, s: float, d: int, where: str):
    ev.update(
        {
            "scale": s,
            "scale_name": named_constant(s, d),
            "correction": 1 / s,
            "correction_name": named_constant(1 / s, d),
        }
    )
    msg = (
        f"The port's embedding output ({where}) is {named_constant(s, d)} times the reference's: an embedding "
        "scale is missing on one side or applied twice."
    )
    corr = named_constant(1 / s, d)
    fix = {
        "flax": f"x = self.embed(ids) * {corr}  # match the reference's embedding scale",
        "torch": f"x = self.embed(ids) * {corr}  # match the reference's embedding scale",
    }
    return site.finding("embedding_scale", msg, ev, fix)


def _is_embedding(src) -> bool:
    w = src.params.get("weight")
    return "embed" in src.module_type.lower() or (
        w is not None
        and w.ndim == 2
        and "linear" not in src.module_type.lower()
        and "dense" not in src.module_type.lower()
    )


def _segment_scale(site: Site):
    """The segment adds/scales embedding outputs: fit ``y ≈ Σ c_i·e_i`` on each side and compare c."""
    y_ref = site.y_ref
    srcs = []
    for s in site.sources:
        if s.ref.dtype.kind != "f" or not _is_embedding(s):
            continue
        try:
            r = np.broadcast_to(f64(s.ref), y_ref.shape)
            p = np.broadcast_to(f64(s.port), y_ref.shape)
        except ValueError:
            continue
        srcs.append((s, r, p))
    if not srcs:
        return None
    a_ref = np.stack([r.ravel() for _, r, _ in srcs], axis=1)
    a_port = np.stack([p.ravel() for _, _, p in srcs], axis=1)
    c_ref, *_ = np.linalg.lstsq(a_ref, y_ref.ravel(), rcond=None)
    c_port, *_ = np.linalg.lstsq(a_port, site.y_port.ravel(), rcond=None)
    control = rel((a_ref @ c_ref).reshape(y_ref.shape), y_ref)
    eh = rel((a_port @ c_port).reshape(y_ref.shape), site.y_port, y_ref)
    correct = rel((a_port @ c_ref).reshape(y_ref.shape), site.y_port, y_ref)  # the reference's coefficients
    if control > 3 * site.tau or not site.confirmed(eh, control, correct=correct):
        return None
    ratios = c_port / np.where(c_ref == 0, np.nan, c_ref)
    i = int(np.nanargmax(np.abs(np.log(np.abs(ratios)))))
    if not np.isfinite(ratios[i]) or abs(ratios[i] - 1) < 1e-3:
        return None
    ev = numbers(site, eh, control, correct)
    ev.update(
        {"reference_coefficient": float(c_ref[i]), "port_coefficient": float(c_port[i]), "source": srcs[i][0].name}
    )
    return _scale_finding(site, ev, float(ratios[i]), y_ref.shape[-1], srcs[i][0].name)
