"""Fused projections: one module on one side, its blocks as separate modules on the other.

timm's ``attn.qkv`` is one Linear ``(3D, D)``; a Flax ViT has ``query``,
``key`` and ``value`` Dense layers. GPT-2's ``c_attn`` against a port with
``q_proj``/``k_proj``/``v_proj`` is the same, either way round. A port loads
the same numbers, so each block of the fused weight along its output axis is
one separate module's weight, value for value: fingerprints of the blocks
pair them (:func:`pair_fused`, recorded in :attr:`Alignment.fused`).

Rows then compare each separate call with its block of the fused call's
output (``split``: the fused module is the reference's) or the fused call with
the separate calls' outputs joined (``merged``), through a view of the
reference's call (:func:`fused_matches`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .stats.meet import concat_last, numel, to_host
from .trace import CallRecord, Trace

BLOCKS = (3, 2)  # q/k/v, and k/v fused together


@dataclass(frozen=True)
class FusedGroup:
    """One fused module and the separate modules that hold its output-axis blocks, in block order."""

    fused_side: str  # "torch" | "flax": the side holding the fused module
    fused: str
    parts: tuple[str, ...]

    @property
    def kind(self) -> str:
        """``split`` (torch fused, flax separate) or ``merged`` (torch separate, flax fused)."""
        return "split" if self.fused_side == "torch" else "merged"


def _blocks(a: np.ndarray, k: int) -> list[tuple[int, list[np.ndarray]]]:
    """``(axis, blocks)`` for each axis of ``a`` that splits into ``k`` equal blocks (a 1-d bias: its only axis)."""
    out = []
    for axis in range(a.ndim):
        if a.shape[axis] % k == 0 and a.shape[axis] >= k:
            out.append((axis, np.split(np.asarray(to_host(a)), k, axis=axis)))
    return out


def _holds(block_params: list[np.ndarray], params: dict[str, np.ndarray]) -> bool:
    """Whether ``params`` hold exactly ``block_params``, value for value under a legal transform."""
    from .align import confirm_params, fingerprint, fingerprint_score

    if len(block_params) != len(params):
        return False
    pa = [fingerprint(b) for b in block_params]
    pb = [fingerprint(v) for v in params.values()]
    if fingerprint_score(pa, pb) < 0.99 or fingerprint_score(pb, pa) < 0.99:
        return False
    score, _ = confirm_params({str(i): b for i, b in enumerate(block_params)}, params, 1.0)
    return score >= 0.99


def _match_group(fused: dict[str, np.ndarray], candidates: dict[str, dict[str, np.ndarray]]) -> list[str] | None:
    """The candidate modules holding the fused module's output-axis blocks, in block order, or None."""
    if not fused or not candidates:
        return None
    names = sorted(fused, key=lambda n: -numel(fused[n]))
    main = fused[names[0]]
    if main.ndim < 2 or np.ptp(np.asarray(to_host(main), dtype=np.float64)) == 0:
        return None  # a constant weight identifies nothing
    for k in BLOCKS:
        for axis, main_blocks in _blocks(main, k):
            others = []
            for n in names[1:]:  # a bias or scale: its own axis of the same size per block
                opts = [b for ax, b in _blocks(fused[n], k) if fused[n].shape[ax] == main.shape[axis]]
                others.append(opts[0] if opts else None)
            if any(o is None for o in others):
                continue
            parts: list[str] = []
            for i in range(k):
                block = [main_blocks[i], *(o[i] for o in others)]  # type: ignore[index]
                hit = next((p for p, ps in candidates.items() if p not in parts and _holds(block, ps)), None)
                if hit is None:
                    break
                parts.append(hit)
            if len(parts) == k:
                return parts
    return None


def pair_fused(ta: Trace, tb: Trace, pa_paths: list[str], pb_paths: list[str], al: Any) -> None:
    """Pair fused modules with the separate modules holding their blocks (``al.fused``), either direction."""
    taken = set(al.pairs.values())
    free_a = {p: ta.params[p] for p in pa_paths if p not in al.pairs and ta.params.get(p)}
    free_b = {p: tb.params[p] for p in pb_paths if p not in taken and tb.params.get(p)}
    if not free_a or not free_b:
        return
    for side, fused_mods, others in (("torch", free_a, free_b), ("flax", free_b, free_a)):
        t_fused, t_parts = (ta, tb) if side == "torch" else (tb, ta)
        for path, params in list(fused_mods.items()):
            by_size = {p: ps for p, ps in others.items() if _fits(params, ps)}
            if not by_size:
                continue
            parts = _match_group(params, by_size)
            if parts is None or not _outputs_fit(t_fused, path, t_parts, parts):
                continue
            al.fused.append(FusedGroup(side, path, tuple(parts)))
            fused_mods.pop(path)
            for p in parts:
                others.pop(p)


def _outputs_fit(t_fused: Trace, fused: str, t_parts: Trace, parts: list[str]) -> bool:
    """The fused call returns its blocks (as many elements as the parts together), not something computed
    from them (``nn.MultiheadAttention`` holds a fused ``in_proj_weight`` but returns the attention)."""
    first = [t.calls_of(p) for t, p in ((t_fused, fused), *((t_parts, q) for q in parts))]
    if any(not c for c in first):
        return False
    outs = [_first_float(c[0]) for c in first]
    if any(o is None for o in outs):
        return False
    sizes = [int(numel(o[1])) for o in outs]  # type: ignore[index]
    return sizes[0] == sum(sizes[1:]) and all(s == sizes[1] for s in sizes[1:])


def _fits(fused: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> bool:
    """A cheap filter: as many parameters, each part's largest a whole fraction of the fused one's."""
    if len(fused) != len(part):
        return False
    big_f, big_p = max(numel(v) for v in fused.values()), max(numel(v) for v in part.values())
    return big_p > 0 and big_f % big_p == 0 and big_f // big_p in BLOCKS


def covered(al: Any) -> tuple[set[str], set[str]]:
    """``(torch paths, flax paths)`` accounted for by fused groups."""
    t: set[str] = set()
    f: set[str] = set()
    for g in getattr(al, "fused", ()):
        mine, theirs = ({g.fused}, set(g.parts)) if g.fused_side == "torch" else (set(g.parts), {g.fused})
        t |= mine
        f |= theirs
    return t, f


# --- rows -----------------------------------------------------------------------------------


def _first_float(rec: CallRecord) -> tuple[str, np.ndarray] | None:
    return next(iter(rec.float_outputs().items()), None)


def _block_view(rec: CallRecord, i: int, k: int) -> CallRecord | None:
    """The reference's fused call with its output cut to block ``i`` of ``k`` along the last axis."""
    first = _first_float(rec)
    if first is None or first[1].ndim == 0 or first[1].shape[-1] % k:
        return None
    key, y = first
    n = y.shape[-1] // k
    return replace(rec, outputs={key: y[..., i * n : (i + 1) * n]}, raw_inputs={})  # numpy, torch or JAX alike


def _joined_view(recs: list[CallRecord]) -> CallRecord | None:
    """The reference's separate calls as one: their outputs joined along the last axis (head axes merged)."""
    outs = [_first_float(r) for r in recs]
    if any(o is None for o in outs):
        return None
    ys = [o[1] for o in outs]  # type: ignore[index]
    lead = ys[0].shape[:2] if ys[0].ndim >= 3 else ys[0].shape[:-1]
    flat = [y.reshape(*lead, -1) for y in ys]
    if any(f.shape[:-1] != flat[0].shape[:-1] for f in flat):
        return None
    last = recs[-1]
    return replace(last, inputs=dict(recs[0].inputs), outputs={outs[0][0]: concat_last(flat)}, raw_inputs={})  # type: ignore[index]


def fused_matches(al: Any, ref_trace: Trace, port_trace: Trace, reference: str, match_cls: Any) -> dict[str, Any]:
    """Port call key -> ``match_cls(ref view, how, confidence)`` for every call of a fused group."""
    out: dict[str, Any] = {}
    for g in getattr(al, "fused", ()):
        fused_is_ref = g.fused_side == reference
        ref_paths = [g.fused] if fused_is_ref else list(g.parts)
        port_paths = list(g.parts) if fused_is_ref else [g.fused]
        k = len(g.parts)
        n_calls = min(len(ref_trace.calls_of(p)) for p in ref_paths)
        for c in range(n_calls):
            port_calls = [port_trace.calls_of(p) for p in port_paths]
            if any(len(pc) <= c for pc in port_calls):
                continue
            if fused_is_ref:
                rec = ref_trace.calls_of(g.fused)[c]
                for i, pc in enumerate(port_calls):
                    view = _block_view(rec, i, k)
                    if view is not None:
                        out[pc[c].key] = match_cls(view, f"fused {g.kind} (block {i} of {k})", 0.9)
            else:
                view = _joined_view([ref_trace.calls_of(p)[c] for p in ref_paths])
                if view is not None:
                    out[port_calls[0][c].key] = match_cls(view, f"fused {g.kind} ({k} blocks joined)", 0.9)
    return out
