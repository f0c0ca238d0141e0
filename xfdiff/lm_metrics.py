"""Language-model metrics at the final output, when it holds logits over a vocabulary.

Max error on logits says little about what a language-model port gets wrong:
what matters is whether it predicts the same tokens. For final outputs whose
last axis is a vocabulary (at least :data:`MIN_VOCAB` entries) this module
measures, per position (every index but the last axis):

- ``KL(reference || port)`` of the two softmax distributions, in nats;
- top-1 agreement: both sides rank the same token first;
- top-5 overlap: the share of the reference's five best tokens in the port's five best.

A top-1 flip where the reference's two candidates were nearly tied (the
reference's margin between its top token and the port's is below
``near_tie``, by default twice the tolerance the comparison allows at that
logit) is listed as a near tie, not as a disagreement: a port within
tolerance could flip it too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_VOCAB = 50
MAX_LISTED = 4096  # per-position values kept in the report (the first positions)


def looks_like_logits(ref: np.ndarray, port: np.ndarray) -> bool:
    """A float array of rank >= 2 whose last axis is a vocabulary, the same on both sides."""
    shape = tuple(ref.shape)
    return shape == tuple(port.shape) and len(shape) >= 2 and shape[-1] >= MIN_VOCAB and all(shape)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _per_position(ref: Any, port: Any) -> dict[str, np.ndarray]:
    """Per position (every index but the last axis): KL(ref || port), both top-1 tokens, the top-5
    overlap, and the reference's logits at its own and at the port's top token, as host arrays.

    Torch tensors (a device capture; a JAX side joins them through DLPack) are reduced where
    they live, in float64, and only these per-position vectors cross to the host.
    """
    from .stats.common import kind_of

    if kind_of(ref) != "numpy" or kind_of(port) != "numpy":
        from .stats.meet import meet, to_host

        ref, port = meet(ref, port)
        if kind_of(ref) == "torch" and kind_of(port) == "torch":
            return _per_position_torch(ref, port)
        ref, port = to_host(ref), to_host(port)
    r = np.asarray(ref, dtype=np.float64).reshape(-1, ref.shape[-1])
    p = np.asarray(port, dtype=np.float64).reshape(-1, port.shape[-1])
    finite = np.all(np.isfinite(r), axis=-1) & np.all(np.isfinite(p), axis=-1)
    lr, lp = _log_softmax(np.where(np.isfinite(r), r, -1e30)), _log_softmax(np.where(np.isfinite(p), p, -1e30))
    kl = np.sum(np.exp(lr) * (lr - lp), axis=-1)
    kl = np.where(finite, np.maximum(kl, 0.0), np.inf)
    t1r, t1p = np.argmax(r, axis=-1), np.argmax(p, axis=-1)
    k = min(5, r.shape[-1])
    top_r = np.argpartition(-r, k - 1, axis=-1)[:, :k]
    top_p = np.argpartition(-p, k - 1, axis=-1)[:, :k]
    top5 = np.array([len(set(a) & set(b)) / k for a, b in zip(top_r.tolist(), top_p.tolist(), strict=True)])
    rows = np.arange(len(r))
    return {"kl": kl, "t1r": t1r, "t1p": t1p, "top5": top5, "r_top": r[rows, t1r], "r_at_port_top": r[rows, t1p]}


def _per_position_torch(ref: Any, port: Any) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        r = ref.detach().reshape(-1, ref.shape[-1]).to(torch.float64)
        p = port.detach().reshape(-1, port.shape[-1]).to(port.device, torch.float64)
        fr, fp = torch.isfinite(r), torch.isfinite(p)
        finite = fr.all(dim=-1) & fp.all(dim=-1)
        lr = torch.log_softmax(torch.where(fr, r, -1e30), dim=-1)
        lp = torch.log_softmax(torch.where(fp, p, -1e30), dim=-1)
        kl = (lr.exp() * (lr - lp)).sum(dim=-1).clamp_min(0.0)
        kl = torch.where(finite, kl, torch.full_like(kl, float("inf")))
        t1r, t1p = r.argmax(dim=-1), p.argmax(dim=-1)
        k = min(5, r.shape[-1])
        top_r, top_p = r.topk(k, dim=-1).indices, p.topk(k, dim=-1).indices
        top5 = (top_r[:, :, None] == top_p[:, None, :]).any(dim=-1).sum(dim=-1).to(torch.float64) / k
        r_top = r.gather(1, t1r[:, None])[:, 0]
        r_at = r.gather(1, t1p[:, None])[:, 0]
        out = {"kl": kl, "t1r": t1r, "t1p": t1p, "top5": top5, "r_top": r_top, "r_at_port_top": r_at}
        return {k_: v.cpu().numpy() for k_, v in out.items()}


def lm_metrics(ref: Any, port: Any, atol: float = 1e-5, rtol: float = 1e-5) -> dict[str, Any]:
    """Per-position KL, top-1 agreement, top-5 overlap and near ties of ``port`` against ``ref`` logits.

    Args:
        ref, port: logits of the same shape ``(..., vocab)``: numpy arrays, or a device
            capture's torch tensors / JAX arrays (reduced on their device, see :func:`_per_position`).
        atol, rtol: the comparison's tolerance; a flip whose reference margin
            is below ``2 * (atol + rtol * |top logit|)`` is a near tie.

    Returns:
        A JSON-ready dict: ``kl_mean``, ``kl_max``, ``top1`` (share of positions
        whose top token agrees), ``top1_excluding_near_ties``, ``top5``,
        ``positions``, ``disagreements`` and ``near_ties`` (index lists of the
        positions), ``kl`` (per position, the first :data:`MAX_LISTED`).

    >>> r = np.zeros((1, 2, 60)); r[0, :, 3] = 5.0
    >>> lm_metrics(r, r)["top1"]
    1.0
    """
    per = _per_position(ref, port)
    agree = per["t1r"] == per["t1p"]
    kl = per["kl"]
    top5 = per["top5"]
    margin = per["r_top"] - per["r_at_port_top"]
    allowed = 2.0 * (atol + rtol * np.abs(per["r_top"]))
    near = ~agree & (margin <= allowed)
    shape = ref.shape[:-1]

    def where(mask: np.ndarray) -> list[list[int]]:
        return [list(map(int, np.unravel_index(i, shape))) for i in np.flatnonzero(mask)[:MAX_LISTED]]

    n = len(kl)
    clear = int(np.sum(~agree & ~near))
    return {
        "positions": n,
        "vocab": int(ref.shape[-1]),
        "kl_mean": float(np.mean(kl)),
        "kl_max": float(np.max(kl)),
        "top1": float(np.mean(agree)),
        "top1_excluding_near_ties": float(1.0 - clear / n),
        "top5": float(np.mean(top5)),
        "disagreements": where(~agree & ~near),
        "near_ties": where(near),
        "kl": [float(x) for x in kl[:MAX_LISTED]],
    }


def attach(ev: Any, report: Any) -> None:
    """Measure the final row when it holds logits; fill its ``lm_*`` fields and ``report.meta["lm"]``."""
    fr = ev.final
    if fr is None or fr.ref_key is None or fr.transform is None or report.final is None:
        return
    ref_rec, port_rec = fr.ref, fr.port
    from .localize import forward  # a device value stays on its device through a reshape

    ref = forward(fr.transform, ref_rec.outputs[fr.ref_key])
    port = port_rec.outputs[fr.port_key]
    if not looks_like_logits(ref, port):
        return
    m = lm_metrics(ref, port, fr.layer.atol, fr.layer.rtol)
    m["output"] = fr.ref_key
    lyr = report.final
    lyr.lm_kl_mean, lyr.lm_kl_max = m["kl_mean"], m["kl_max"]
    lyr.lm_top1, lyr.lm_top5, lyr.lm_near_ties = m["top1"], m["top5"], len(m["near_ties"])
    report.meta["lm"] = m
