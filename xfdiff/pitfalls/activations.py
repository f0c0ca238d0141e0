"""Activation functions: GELU formula (P01) and LeakyReLU slope (P34).

GELU defaults differ: ``torch.nn.GELU()`` / ``F.gelu`` use the exact erf
form (``approximate='none'``) while ``flax.linen.gelu`` / ``jax.nn.gelu``
default to the tanh approximation (``approximate=True``). Hugging Face names
``gelu`` (exact) and ``gelu_new`` / ``gelu_pytorch_tanh`` (tanh); GPT-2,
Gemma and BLOOM use tanh in the reference, so the mismatch runs either way.
https://docs.jax.dev/en/latest/_autosummary/jax.nn.gelu.html,
https://pytorch.org/docs/stable/generated/torch.nn.GELU.html

LeakyReLU slopes: torch and jax 0.01, ``tf.nn.leaky_relu`` 0.2, Keras 0.3.
"""

from __future__ import annotations

import numpy as np

from .numerics import f64, gelu, rel
from .registry import register
from .sites import Site, numbers, same_shape_sources

GELU_NAMES = {"erf": "exact (erf)", "tanh": "tanh-approximate", "sigmoid": "sigmoid (x·σ(1.702x))"}
GELU_FIX = {
    "flax": {
        "erf": "nn.gelu(x, approximate=False)",
        "tanh": "nn.gelu(x, approximate=True)",
        "sigmoid": "x * nn.sigmoid(1.702 * x)",
    },
    "torch": {
        "erf": "nn.GELU()  # approximate='none'",
        "tanh": "nn.GELU(approximate='tanh')",
        "sigmoid": "x * torch.sigmoid(1.702 * x)",
    },
}


def elementwise_inputs(site: Site) -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference input, port input) pairs an elementwise op at this site may have been applied to."""
    if site.kind == "call":
        x = site.main_input()
        return [(x, x)] if x is not None and x.shape == site.y_ref.shape else []
    return [(s.ref, s.port) for s in same_shape_sources(site)[:2]]


def _best(y: np.ndarray, x: np.ndarray, norm_of: np.ndarray, fn, variants) -> tuple[str, float, float]:
    """(best variant, its error, runner-up error) of ``y ≈ fn(x, v)``."""
    errs = sorted((rel(y, fn(x, v), norm_of), v) for v in variants)
    return errs[0][1], errs[0][0], errs[1][0] if len(errs) > 1 else float("inf")


@register("gelu", ids=("gelu_approximate",), kinds=("call", "segment"), stage=1)
def detect_gelu(site: Site):
    """Which GELU formula each side computes (variant matching on the captured pre-activation)."""
    variants = tuple(GELU_NAMES)
    for xr, xp in elementwise_inputs(site):
        v_ref, control, _ = _best(site.y_ref, xr, site.y_ref, gelu, variants)
        if control > 3 * site.tau:
            continue
        v_port, eh, runner = _best(site.y_port, xp, site.y_ref, gelu, variants)
        correct = rel(site.y_port, gelu(xp, v_ref), site.y_ref)
        if v_port == v_ref or not site.confirmed(eh, control, correct=correct):
            continue
        ev = numbers(site, eh, control, correct)
        ev.update(
            {
                "reference_variant": v_ref,
                "port_variant": v_port,
                "runner_up": runner,
                "peak_error_at": float(f64(xr).ravel()[np.argmax(np.abs(site.y_port - site.y_ref).ravel())]),
            }
        )
        msg = f"The port applies the {GELU_NAMES[v_port]} GELU where the reference uses the {GELU_NAMES[v_ref]} one."
        fix = {s: GELU_FIX[s][v_ref] for s in GELU_FIX}
        return site.finding("gelu_approximate", msg, ev, fix, fixed=lambda x, v=v_ref: gelu(x, v))
    return None


def _leaky(x: np.ndarray, slope: float) -> np.ndarray:
    x = f64(x)
    return np.where(x >= 0, x, slope * x)


@register("leaky_relu", ids=("activation_constant",), kinds=("call", "segment"), stage=1)
def detect_leaky_slope(site: Site):
    """LeakyReLU slope recovered from the negative inputs on each side."""
    for xr, xp in elementwise_inputs(site):
        neg_r, neg_p = f64(xr) < -1e-3, f64(xp) < -1e-3
        pos_r = f64(xr) > 1e-3
        if neg_r.sum() < 4 or not np.allclose(f64(site.y_ref)[pos_r], f64(xr)[pos_r], rtol=1e-5, atol=1e-6):
            continue
        s_ref = float(np.median(f64(site.y_ref)[neg_r] / f64(xr)[neg_r]))
        s_port = float(np.median(f64(site.y_port)[neg_p] / f64(xp)[neg_p]))
        if not (0 < s_ref < 1 and 0 <= s_port < 1) or abs(s_ref - s_port) < 1e-4:
            continue
        control = rel(site.y_ref, _leaky(xr, s_ref))
        eh = rel(site.y_port, _leaky(xp, s_port), site.y_ref)
        correct = rel(site.y_port, _leaky(xp, s_ref), site.y_ref)
        if not site.confirmed(eh, control, correct=correct):
            continue
        ev = numbers(site, eh, control, correct)
        ev.update({"reference_slope": s_ref, "port_slope": s_port})
        msg = f"The port's LeakyReLU slope is {s_port:.4g} where the reference uses {s_ref:.4g}."
        fix = {
            "flax": f"nn.leaky_relu(x, negative_slope={s_ref:.4g})",
            "torch": f"nn.LeakyReLU(negative_slope={s_ref:.4g})",
        }
        return site.finding("activation_constant", msg, ev, fix)
    return None
