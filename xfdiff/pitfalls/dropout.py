"""Dropout left active (P09).

A torch module not switched to ``.eval()``, a flax ``nn.Dropout`` with
``deterministic=False`` (or ``train=True`` passed through), or Keras
``training=True`` zero a fraction p of the values and scale the rest by
1/(1-p). The fingerprint: exact zeros at rate p̂ where the other side is not
zero, and a kept ratio of exactly 1/(1-p̂).
https://pytorch.org/docs/stable/generated/torch.nn.Dropout.html,
https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html#flax.linen.Dropout
"""

from __future__ import annotations

import numpy as np

from .numerics import f64, rel
from .registry import register
from .sites import Site, numbers

RATE_KEYS = ("rate", "p", "dropout", "dropout_rate", "attention_dropout")


def _fit(y_drop: np.ndarray, y_full: np.ndarray) -> dict | None:
    """Zero fraction and kept ratio of ``y_drop`` against the undropped ``y_full``."""
    nz = y_full != 0
    if nz.sum() < 16:
        return None
    zeros = (y_drop == 0) & nz
    p_hat = float(zeros.sum() / nz.sum())
    kept = nz & ~zeros
    if p_hat < 1e-3 or kept.sum() < 4:
        return None
    ratio = y_drop[kept] / y_full[kept]
    r = float(np.median(ratio))
    spread = float(np.max(np.abs(ratio - r)))
    return {
        "zero_fraction": p_hat,
        "kept_scale": r,
        "kept_scale_spread": spread,
        "implied_rate": 1 - 1 / r,
        "mask": kept,
    }


def _rate(cfg: dict) -> float | None:
    for k in RATE_KEYS:
        v = cfg.get(k)
        if isinstance(v, float) and 0 < v < 1:
            return v
    return None


@register("dropout", ids=("dropout_active",), kinds=("call", "segment"), stage=0)
def detect_dropout(site: Site):
    """Exact zeros at rate p̂ and a kept ratio 1/(1-p̂) on one side only."""
    yr, yp = f64(site.y_ref), f64(site.y_port)
    for side, y_drop, y_full in (("port", yp, yr), ("reference", yr, yp)):
        fit = _fit(y_drop, y_full)
        if fit is None or fit["kept_scale"] <= 1 or fit["kept_scale_spread"] > 1e-4 * fit["kept_scale"]:
            continue
        p_hat, r = fit["zero_fraction"], fit["kept_scale"]
        n = int((y_full != 0).sum())
        # the zero fraction is a binomial estimate of the rate implied by the scale
        if abs(p_hat - fit["implied_rate"]) > 4 * np.sqrt(max(p_hat * (1 - p_hat), 1e-6) / n) + 0.02:
            continue
        h = np.where(fit["mask"], y_full * r, 0.0)
        eh = rel(y_drop, h, yr)
        control = rel(yr, f64(site.main_input())) if side == "port" and _identity_ok(site) else 0.0
        if not site.confirmed(eh, control):
            continue
        ev = numbers(site, eh, control)
        ev.update({k: v for k, v in fit.items() if k != "mask"})
        ev["active_on"] = side
        cfg_rate = _rate(site.port_cfg if side == "port" else site.ref_cfg)
        if cfg_rate is not None:
            ev["configured_rate"] = cfg_rate
        who = "port" if side == "port" else "reference"
        msg = (
            f"Dropout is active in the {who}: {100 * p_hat:.1f}% of the values are zeroed and the rest scaled by "
            f"{r:.5g} = 1/(1-{fit['implied_rate']:.3g})."
        )
        fix = {
            "flax": "nn.Dropout(rate, deterministic=True)  # or pass train=False / deterministic=True",
            "torch": "model.eval()",
        }
        if side == "reference":
            fix = {"flax": "run the reference in eval mode: pt_model.eval()", "torch": "pt_model.eval()"}
        return site.finding("dropout_active", msg, ev, fix)
    return None


def _identity_ok(site: Site) -> bool:
    x = site.main_input()
    return x is not None and x.shape == site.y_ref.shape
