"""Normalisation layers: epsilon (P06), ddof/epsilon placement (P03), low-precision
rsqrt (P02), fast variance (P07), Gemma ``1 + w`` gain (P27), BatchNorm statistics (P08).

Defaults: torch ``LayerNorm`` eps 1e-5, flax ``LayerNorm``/``RMSNorm`` 1e-6,
Hugging Face BERT 1e-12, Keras 1e-3, torch ``RMSNorm(eps=None)`` uses
``finfo(float32).eps``. ``torch.std``/``var`` are unbiased (ddof=1), jnp's
are not. flax norms default ``use_fast_variance=True`` (``E[x²]-E[x]²``).
https://pytorch.org/docs/stable/generated/torch.nn.LayerNorm.html,
https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html

The LayerNorm/RMSNorm family is one variant search: find the formula that
reproduces the reference (the control), then change one thing at a time
(epsilon, ddof/placement, rsqrt precision, fast variance, ``1 + w``) and keep
the change that explains the port. Each pitfall leaves its own per-row
signature, so at most one of them fits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from .numerics import batchnorm, f64, norm, rel
from .registry import register
from .sites import Site, numbers, same_shape_sources

EPS_KEYS = ("eps", "epsilon", "variance_epsilon", "layer_norm_eps", "rms_norm_eps", "norm_eps")
FINFO32 = float(np.finfo(np.float32).eps)
DEFAULT_EPS = (1e-5, 1e-6, 1e-12, 1e-3, FINFO32)


@dataclass(frozen=True)
class NormVariant:
    kind: str = "ln"  # "ln" | "rms"
    eps: float = 1e-5
    ddof: int = 0
    outside: bool = False  # (x - mu) / (std + eps)
    plus_one: bool = False  # x̂ · (1 + w)
    rsqrt: str | None = None  # "bf16" | "fp16"
    fast: bool = False  # E[x²] - E[x]² in float32


def eps_of(cfg: dict, module_type: str) -> float | None:
    """The epsilon a module was configured with (torch ``RMSNorm(eps=None)`` -> finfo eps)."""
    for k in EPS_KEYS:
        v = cfg.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return FINFO32 if module_type == "RMSNorm" and "normalized_shape" in cfg else None


def _affine(params: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    w = next((params[k] for k in ("weight", "gamma", "g") if k in params and params[k].ndim >= 1), None)
    b = next((params[k] for k in ("bias", "beta", "b") if k in params and params[k].ndim >= 1), None)
    return w, b


def _unique(values) -> list[float]:
    out: list[float] = []
    for v in values:
        if v is not None and v > 0 and all(abs(v - o) > 1e-3 * o for o in out):
            out.append(float(v))
    return out


_NO_WEIGHT = object()  # a call site: the module's own weight and bias


class _Norm:
    """A LayerNorm/RMSNorm site: input, affine parameters and the recompute.

    A call site is the norm module itself. On a segment site (a norm written inline in a composite
    module's code) the input is one of the values available to that code (``x``, ``x_port``: each
    side's) and the gain one of the module's parameters (``weight``), tried in turn by the detector.
    """

    def __init__(self, site: Site, x=None, x_port=None, weight=_NO_WEIGHT):
        self.site = site
        self.x = site.main_input() if x is None else x
        self.x_port = self.x if x_port is None else x_port
        if weight is _NO_WEIGHT:
            self.w, self.b = _affine(site.ref_params)
        else:
            self.w, self.b = weight, None
        self.axes = self.w.ndim if self.w is not None else 1

    @cached_property
    def tau(self) -> float:
        """Noise floor, raised for rows whose mean is large against their spread (float32 centring error)."""
        x = f64(self.x)
        ax = tuple(range(-self.axes, 0))
        offset = np.abs(x.mean(axis=ax)) / np.maximum(x.std(axis=ax), 1e-30)
        return max(self.site.tau, 2.0**-23 * float(offset.max()))

    def ok(self) -> bool:
        s, x = self.site, self.x
        if x is None or x.shape != s.y_ref.shape or self.x_port.shape != x.shape or "running_mean" in s.ref_params:
            return False
        if self.w is not None and x.shape[x.ndim - self.w.ndim :] != self.w.shape:
            return False
        if self.b is not None and self.b.shape != x.shape[x.ndim - self.b.ndim :]:
            return False
        return self._plausible()

    def _plausible(self) -> bool:
        """Cheap pre-check: the reference output, un-scaled, has per-row mean square near 1."""
        y = self.site.y_ref - (f64(self.b) if self.b is not None else 0.0)
        ax = tuple(range(-self.axes, 0))
        for g in self._gains():
            if np.any(np.abs(g) < 1e-8):
                continue
            ms = np.mean((y / g) ** 2, axis=ax)
            if np.all((ms > 0.02) & (ms < 1.2)):
                return True
        return False

    def _gains(self) -> list:
        if self.w is None:
            return [1.0]
        return [f64(self.w), 1.0 + f64(self.w)]

    def compute(self, v: NormVariant, x: np.ndarray | None = None) -> np.ndarray:
        return norm(
            self.x if x is None else x,
            kind=v.kind,
            eps=v.eps,
            ddof=v.ddof,
            eps_outside=v.outside,
            weight=self.w,
            bias=self.b,
            plus_one=v.plus_one,
            rsqrt_fmt=v.rsqrt,
            fast=v.fast,
            axes=self.axes,
        )

    def reference_variant(self) -> tuple[NormVariant, float] | None:
        s = self.site
        kinds = ("rms", "ln") if "rms" in s.ref_type.lower() else ("ln", "rms")
        eps_list = _unique([eps_of(s.ref_cfg, s.ref_type), *DEFAULT_EPS])
        for kind in kinds:
            for plus in (False, True) if self.w is not None else (False,):
                for ddof, outside in ((0, False), (1, True), (1, False), (0, True)):
                    for eps in eps_list:
                        v = NormVariant(kind, eps, ddof, outside, plus)
                        c = rel(self.compute(v), s.y_ref)
                        if c <= 3 * self.tau:
                            return v, c
        return None

    def estimate_eps(self, v: NormVariant) -> float | None:
        """Effective epsilon of the port, from the rows with the smallest variance (pitfalls.md P06)."""
        if v.ddof or v.outside:
            return None
        g = 1.0 if self.w is None else (1.0 + f64(self.w) if v.plus_one else f64(self.w))
        if np.any(np.abs(g) < 1e-6):
            return None
        ax = tuple(range(-self.axes, 0))
        z = (self.site.y_port - (f64(self.b) if self.b is not None else 0.0)) / g
        x = f64(self.x)
        xc = x - x.mean(axis=ax, keepdims=True) if v.kind == "ln" else x
        var = np.mean(xc * xc, axis=ax).ravel()
        mz = np.mean(z * z, axis=ax).ravel()
        k = max(1, var.size // 8)
        low = np.argsort(var)[:k]
        est = float(np.median(var[low] * (1.0 / mz[low] - 1.0)))
        return est if est > 0 else None

    def port_variants(self, v: NormVariant) -> list[tuple[str, NormVariant]]:
        s = self.site
        eps_port = eps_of(s.port_cfg, s.port_type)
        out = [
            ("norm_epsilon", replace(v, eps=e))
            for e in _unique([eps_port, self.estimate_eps(v), *DEFAULT_EPS])
            if abs(e - v.eps) > 1e-3 * v.eps
        ]
        for eps in _unique([v.eps, eps_port]):
            for ddof, outside in ((1 - v.ddof, v.outside), (1 - v.ddof, not v.outside), (v.ddof, not v.outside)):
                out.append(("std_ddof", replace(v, ddof=ddof, outside=outside, eps=eps)))
            if "jax" in sys.modules and not v.outside and not v.ddof:
                out.append(("fast_variance", replace(v, fast=True, eps=eps)))
        out += [("rsqrt", replace(v, rsqrt=f)) for f in ("bf16", "fp16")]
        if self.w is not None:
            out.append(("rmsnorm_one_plus", replace(v, plus_one=not v.plus_one)))
        return out

    def row_factors(self) -> np.ndarray:
        """Per-row factor ρ with ``y_port - β ≈ ρ·(y_ref - β)``."""
        ax = tuple(range(-self.axes, 0))
        b = f64(self.b) if self.b is not None else 0.0
        yr, yp = self.site.y_ref - b, self.site.y_port - b
        den = np.sum(yr * yr, axis=ax)
        return (np.sum(yp * yr, axis=ax) / np.where(den == 0, 1, den)).ravel()


@register(
    "norms",
    ids=("norm_epsilon", "std_ddof", "rsqrt", "fast_variance", "rmsnorm_one_plus"),
    kinds=("call", "segment"),
    stage=1,
)
def detect_norm(site: Site):
    """LayerNorm/RMSNorm variant search (pitfalls.md P02, P03, P06, P07, P27), on a norm module or inline."""
    if site.kind == "call":
        return _detect(_Norm(site))
    for n in _inline_norms(site):
        f = _detect(n)
        if f is not None:
            return f
    return None


MAX_INLINE = 8  # (input, gain) pairs tried at one segment site


def _inline_norms(site: Site):
    """Candidate inline norms of a segment: a value shaped like the site's output, and a gain among the module's
    1-D parameters of the last axis' size (or none), the plausible ones only."""
    d = site.y_ref.shape[-1] if site.y_ref.ndim else 0
    gains: list = [None]
    for side in ("reference", "port"):
        for v in site.tree_params.get(side, {}).values():
            if isinstance(v, np.ndarray) and v.ndim == 1 and v.shape == (d,) and v.dtype.kind == "f":
                if not any(g is not None and np.array_equal(g, v) for g in gains):
                    gains.append(v)
    tried = 0
    for src in same_shape_sources(site)[:3]:
        for g in gains:
            if not (_row_scaled(src.ref, site.y_ref, g) or (g is not None and _row_scaled(src.ref, site.y_ref, 1 + g))):
                continue
            n = _Norm(site, x=src.ref, x_port=src.port, weight=g)
            if n.ok():
                tried += 1
                yield n
            if tried >= MAX_INLINE:
                return


def _row_scaled(x: np.ndarray, y: np.ndarray, gain) -> bool:
    """Cheap pre-check of an inline norm: ``y / gain`` is ``x`` (or ``x`` centred) times one factor per row
    (within 1 %, so that any variant of the family passes; the variant search decides)."""
    if gain is not None and np.any(np.abs(f64(gain)) < 1e-8):
        return False
    z = f64(y) / (1.0 if gain is None else f64(gain))
    xx = f64(x)
    for xc in (xx, xx - xx.mean(axis=-1, keepdims=True)):
        den = np.sum(xc * xc, axis=-1, keepdims=True)
        f = np.sum(z * xc, axis=-1, keepdims=True) / np.where(den == 0, 1.0, den)
        if rel(f * xc, z) < 1e-2:
            return True
    return False


def _detect(n: _Norm):
    site = n.site
    if not n.ok():
        return None
    found = n.reference_variant()
    if found is None:
        return None
    v_ref, control = found
    scored = sorted(
        ((rel(site.y_port, n.compute(v, n.x_port), site.y_ref), pid, v) for pid, v in n.port_variants(v_ref)),
        key=lambda t: t[0],
    )
    if not scored:
        return None
    eh, pid, v_port = scored[0]
    if pid == "fast_variance":  # fast variance must matter, not just ride along with another change
        plain = replace(v_port, fast=False)
        eh_plain = rel(site.y_port, n.compute(plain, n.x_port), site.y_ref)
        if eh_plain <= max(2 * eh, 3 * n.tau):
            if abs(plain.eps - v_ref.eps) <= 1e-3 * v_ref.eps:
                return None
            eh, pid, v_port = eh_plain, "norm_epsilon", plain
    correct = rel(site.y_port, n.compute(v_ref, n.x_port), site.y_ref)
    if not site.confirmed(eh, control, tau=n.tau, correct=correct):
        return None
    runner = next((e for e, p, _ in scored if p != pid), float("inf"))
    ev = numbers(site, eh, control, correct)
    rho = n.row_factors()
    ev.update(
        {
            "kind": v_ref.kind,
            "reference_eps": v_ref.eps,
            "port_eps": v_port.eps,
            "row_factor_min": float(rho.min()),
            "row_factor_max": float(rho.max()),
            "runner_up": runner,
            "runner_up_ratio": runner / eh if eh else float("inf"),
        }
    )
    if site.kind == "segment":
        ev["inline"] = True
    return _FINDERS[pid](site, n, v_ref, v_port, ev)


def _layer_name(v: NormVariant) -> str:
    return "RMSNorm" if v.kind == "rms" else "LayerNorm"


def _eps_finding(site, n, v_ref, v_port, ev):
    est = n.estimate_eps(v_ref)
    ev["recovered_eps"] = est
    got = f" (recovered from the data: {est:.2g})" if est else ""
    msg = (
        f"The port's {_layer_name(v_ref)} uses epsilon {v_port.eps:.3g} where the reference uses {v_ref.eps:.3g}{got}."
    )
    name = _layer_name(v_ref)
    fix = {"flax": f"nn.{name}(epsilon={v_ref.eps:g})", "torch": f"nn.{name}(normalized_shape, eps={v_ref.eps:g})"}
    return site.finding("norm_epsilon", msg, ev, fix, fixed=lambda x: n.compute(v_ref, x))


def _ddof_finding(site, n, v_ref, v_port, ev):
    m = int(np.prod(np.shape(n.x)[-n.axes :]))
    ev.update(
        {
            "reference_ddof": v_ref.ddof,
            "port_ddof": v_port.ddof,
            "reference_eps_outside_sqrt": v_ref.outside,
            "port_eps_outside_sqrt": v_port.outside,
            "bessel_factor": float(np.sqrt(m / (m - 1))),
        }
    )

    def form(v):
        return f"{'unbiased' if v.ddof else 'biased'} std with epsilon {'outside' if v.outside else 'inside'} the sqrt"

    msg = f"The port normalises with the {form(v_port)} where the reference uses the {form(v_ref)}."
    if v_ref.ddof or v_ref.outside:
        fix = {
            "flax": f"(x - mean) / (jnp.std(x, axis=-1, ddof={v_ref.ddof}, keepdims=True) + eps)"
            if v_ref.outside
            else f"(x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, ddof={v_ref.ddof}, keepdims=True) + eps)",
            "torch": f"(x - mean) / (x.std(-1, correction={v_ref.ddof}, keepdim=True) + eps)"
            if v_ref.outside
            else f"(x - mean) * torch.rsqrt(x.var(-1, correction={v_ref.ddof}, keepdim=True) + eps)",
        }
    else:
        fix = {
            "flax": "(x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + eps)  # biased, eps inside",
            "torch": "(x - mean) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)",
        }
    return site.finding("std_ddof", msg, ev, fix, fixed=lambda x: n.compute(v_ref, x))


def _rsqrt_finding(site, n, v_ref, v_port, ev):
    ev["rsqrt_precision"] = v_port.rsqrt
    msg = (
        f"The port's inverse standard deviation is rounded to {v_port.rsqrt} (a low-precision rsqrt): "
        "each row is off by its own small factor."
    )
    fix = {
        "flax": "compute jax.lax.rsqrt(var + eps) in float32 and keep it there (no cast before multiplying)",
        "torch": "compute torch.rsqrt(var + eps) in float32 (x.float()) and cast only the result",
    }
    return site.finding("rsqrt", msg, ev, fix, fixed=lambda x: n.compute(v_ref, x))


def _fast_finding(site, n, v_ref, v_port, ev):
    x = f64(n.x)
    ax = tuple(range(-n.axes, 0))
    ratio = np.mean(x, axis=ax) ** 2 / np.maximum(np.var(x, axis=ax), 1e-30)
    ev["max_mean2_over_var"] = float(ratio.max())
    msg = (
        "The port computes the variance as E[x²] - E[x]² in float32 (flax's use_fast_variance=True); "
        f"rows with a large mean (mean²/var up to {ratio.max():.3g}) lose precision to cancellation."
    )
    fix = {"flax": "nn.LayerNorm(use_fast_variance=False)", "torch": "var = ((x - mean) ** 2).mean(-1)  # two-pass"}
    return site.finding("fast_variance", msg, ev, fix, fixed=lambda x: n.compute(v_ref, x))


def _plus_one_finding(site, n, v_ref, v_port, ev):
    gain = f64(n.w)
    ev["weight_mean"] = float(gain.mean())
    if v_ref.plus_one:
        msg = "The reference RMSNorm scales by (1 + weight) (Gemma style); the port scales by the weight itself."
        fix = {
            "flax": "load scale = 1 + w (in float32), or compute x_hat * (1 + scale)",
            "torch": "return x_hat * (1.0 + self.weight.float())",
        }
    else:
        msg = "The port's RMSNorm scales by (1 + weight) where the reference scales by the weight itself."
        fix = {"flax": "compute x_hat * scale (drop the 1 +)", "torch": "return x_hat * self.weight"}
    return site.finding("rmsnorm_one_plus", msg, ev, fix, fixed=lambda x: n.compute(v_ref, x))


_FINDERS = {
    "norm_epsilon": _eps_finding,
    "std_ddof": _ddof_finding,
    "rsqrt": _rsqrt_finding,
    "fast_variance": _fast_finding,
    "rmsnorm_one_plus": _plus_one_finding,
}


# --- BatchNorm ----------------------------------------------------------------------------------


def _bn_stats(x: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    ax = (0,) + tuple(range(2, x.ndim))
    xx = f64(x)
    n = xx.size // xx.shape[1]
    var = xx.var(axis=ax)
    return xx.mean(axis=ax), var * n / (n - 1) if which == "batch_unbiased" else var


def bn_eps_estimate(x: np.ndarray, y: np.ndarray, mean, var, w, b) -> float | None:
    """The epsilon a channels-first BatchNorm output ``y`` was computed with, per-channel least squares."""
    ax = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xc = (f64(x) - f64(mean).reshape(shape)) * (1.0 if w is None else f64(w).reshape(shape))
    yc = f64(y) - (0.0 if b is None else f64(b).reshape(shape))
    den = np.sum(yc * xc, axis=ax)
    ok = np.abs(den) > 1e-30
    if not np.any(ok):
        return None
    s = np.sum(xc * xc, axis=ax)[ok] / den[ok]  # = sqrt(var + eps) per channel
    est = float(np.median(s * s - f64(var)[ok]))
    return est if est > 0 else None


@register("batchnorm", ids=("batchnorm_stats", "norm_epsilon"), stage=1)
def detect_batchnorm(site: Site):
    """Which statistics and epsilon each side's BatchNorm used (pitfalls.md P08)."""
    p = site.ref_params
    x = site.main_input()
    if "running_mean" not in p or "running_var" not in p or x is None or x.shape != site.y_ref.shape or x.ndim < 2:
        return None
    w, b = p.get("weight"), p.get("bias")
    running = (p["running_mean"], p["running_var"])
    eps_ref = eps_of(site.ref_cfg, site.ref_type) or 1e-5
    eps_port = eps_of(site.port_cfg, site.port_type) or eps_ref
    stats = {"running": running, "batch": _bn_stats(x, "batch"), "batch_unbiased": _bn_stats(x, "batch_unbiased")}
    ref_opts = [(s, e) for s in ("running", "batch") for e in _unique([eps_ref, 1e-5, 1e-3])]
    ref_err = [(rel(batchnorm(x, *stats[s], e, w, b), site.y_ref), s, e) for s, e in ref_opts]
    control, s_ref, e_ref = min(ref_err)
    if control > 3 * site.tau:
        return None
    port_opts = [
        (s, e)
        for s in stats
        for e in _unique([e_ref, eps_port, 1e-5, 1e-3])
        if (s, e) != (s_ref, e_ref) and not (s == s_ref and abs(e - e_ref) <= 1e-3 * e_ref)
    ]
    eh, s_port, e_port = min(
        (rel(site.y_port, batchnorm(x, *stats[s], e, w, b), site.y_ref), s, e) for s, e in port_opts
    )
    if not site.confirmed(eh, control):
        return None
    ev = numbers(site, eh, control)
    ev.update({"reference_statistics": s_ref, "port_statistics": s_port, "reference_eps": e_ref, "port_eps": e_port})
    if s_port != s_ref:
        msg = (
            f"The port's BatchNorm normalises with {s_port.replace('_', ' ')} statistics where the reference uses "
            f"{s_ref} statistics."
        )
    else:  # same statistics, another epsilon (Keras BatchNormalization defaults to 1e-3, torch to 1e-5)
        est = bn_eps_estimate(x, site.y_port, *stats[s_ref], w, b)
        ev["recovered_eps"] = est
        got = f" (recovered from the data: {est:.2g})" if est else ""
        msg = f"The port's BatchNorm uses epsilon {e_port:g} where the reference uses {e_ref:g}{got}."
        fix = {
            "flax": f"nn.BatchNorm(epsilon={e_ref:g}) / keras.layers.BatchNormalization(epsilon={e_ref:g})",
            "torch": f"nn.BatchNorm2d(C, eps={e_ref:g})",
        }
        return site.finding("norm_epsilon", msg, ev, fix)
    use_ra = s_ref == "running"
    fix = {
        "flax": f"nn.BatchNorm(use_running_average={use_ra}, epsilon={e_ref:g})",
        "torch": ("model.eval()" if use_ra else "model.train()") + f"; nn.BatchNorm2d(C, eps={e_ref:g})",
    }
    return site.finding("batchnorm_stats", msg, ev, fix)
