"""Matmul precision: TPU bf16 passes (P04), TF32 (P05), float64 downcast by JAX (P22).

On TPU, float32 ``dot_general``/conv with the default precision round both
operands to bfloat16 (``Precision.HIGH`` = bf16_3x). On Ampere/Hopper GPUs
JAX's default is TF32 (10 mantissa bits); torch keeps matmuls in float32
(``torch.backends.cuda.matmul.allow_tf32=False``) but lets cuDNN convs use
TF32. CPU JAX ignores these settings, so the hypotheses are tested by
recomputing with rounded operands and float64 accumulation.
JAX drops float64 to float32 unless ``jax_enable_x64`` is set.
https://docs.jax.dev/en/latest/_autosummary/jax.default_matmul_precision.html,
https://pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-and-later-devices
"""

from __future__ import annotations

import numpy as np

from .conv import ConvSite
from .linear import LinearSite
from .numerics import TAU, conv2d, f64, linear, rel, round_to
from .registry import register
from .sites import Site, numbers

FORMATS = {
    "bf16": ("bf16_matmul", "bfloat16 operands (TPU default precision)"),
    "bf16_3x": ("bf16_matmul", "bf16_3x passes (Precision.HIGH)"),
    "tf32": ("tf32_matmul", "TF32 operands (10-bit mantissa, rounded)"),
    "tf32_trunc": ("tf32_matmul", "TF32 operands (10-bit mantissa, truncated)"),
}
FIX = {
    "bf16_matmul": {
        "flax": "jax.config.update('jax_default_matmul_precision', 'highest')  # or "
        "nn.Dense(..., precision=jax.lax.Precision.HIGHEST)",
        "torch": "torch.set_float32_matmul_precision('highest')",
    },
    "tf32_matmul": {
        "flax": "jax.config.update('jax_default_matmul_precision', 'highest')  # or "
        "precision=jax.lax.Precision.HIGHEST",
        "torch": "torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False",
    },
}


def _operator(site: Site):
    """``op(fmt)``: the layer recomputed with operands rounded to ``fmt`` (None if not a matmul layer)."""
    lin = LinearSite(site)
    if lin.ok():

        def lin_op(x, w):
            return linear(x, w, lin.b)

        return _with_formats(lin_op, lin.x, lin.w)
    conv = ConvSite(site)
    if conv.ok():
        from .conv import _control

        pads, _ = _control(conv)

        def conv_op(x, w):
            return conv2d(x, w, conv.b, conv.stride, pads, conv.dilation, conv.groups)

        return _with_formats(conv_op, conv.x, conv.w)
    return None


def _best_format(scores: dict[str, float], tau: float) -> str:
    """The format that reproduces one side: exact when it does (within 3τ), else the closest rounding."""
    return "fp32" if scores["fp32"] <= 3 * tau else min(FORMATS, key=scores.get)


def _with_formats(fn, x, w):
    def op(fmt: str) -> np.ndarray:
        if fmt == "bf16_3x":
            xh, wh = round_to(x, "bf16"), round_to(w, "bf16")
            xl, wl = round_to(f64(x) - xh, "bf16"), round_to(f64(w) - wh, "bf16")
            # bias enters once: subtract it from two of the three partial products
            zero = fn(np.zeros_like(xh), np.zeros_like(wh))
            return fn(xh, wh) + (fn(xh, wl) - zero) + (fn(xl, wh) - zero)
        return fn(round_to(x, fmt), round_to(w, fmt))

    return op


@register("matmul_precision", ids=("bf16_matmul", "tf32_matmul"), stage=2)
def detect_matmul_precision(site: Site):
    """Operands rounded to bf16 / TF32 before the matmul, on either side (pitfalls.md P04, P05).

    Both sides are matched against {exact, bf16, bf16_3x, TF32 rounded, TF32 truncated}. When the exact
    formula reproduces the reference, the port is accused; when it does not but reproduces the port, the
    reference carries the rounding (a torch reference on an Ampere+ GPU with TF32 allowed). Either way the
    finding passes the shared rule of :meth:`Site.confirmed` with the roles of the sides set accordingly.
    """
    if site.dtypes[0] not in ("float32", None) or site.dtypes[1] not in ("float32", None):
        return None
    op = _operator(site)
    if op is None:
        return None
    t = site.tau
    outs = {fmt: op(fmt) for fmt in ("fp32", *FORMATS)}
    ref_scores = {fmt: rel(y, site.y_ref) for fmt, y in outs.items()}
    port_scores = {fmt: rel(site.y_port, y, site.y_ref) for fmt, y in outs.items()}
    ref_fmt, port_fmt = _best_format(ref_scores, t), _best_format(port_scores, t)
    if ref_fmt == port_fmt:
        return None
    if port_fmt == "fp32":  # the port is exact: does a rounding explain the reference?
        side, fmt = "reference", ref_fmt
        eh, control, correct = ref_scores[fmt], port_scores["fp32"], ref_scores["fp32"]
    else:  # the port rounds; the control is the formula that reproduces the reference
        side, fmt = "port", port_fmt
        eh, control, correct = port_scores[fmt], ref_scores[ref_fmt], port_scores[ref_fmt]
    if not site.confirmed(eh, control, correct=correct):
        return None
    pid, what = FORMATS[fmt]
    ev = numbers(site, eh, control, correct)
    ev.update(
        {
            "precision": fmt,
            "rounded_side": side,
            "reference_precision": fmt if side == "reference" else ref_fmt,
            "port_precision": fmt if side == "port" else "fp32",
            **{f"eh_{k}": v for k, v in (ref_scores if side == "reference" else port_scores).items() if k != "fp32"},
        }
    )
    if side == "reference":
        short = {"tf32": "TF32", "tf32_trunc": "TF32", "bf16": "bfloat16", "bf16_3x": "bf16_3x passes"}[fmt]
        msg = (
            f"The reference's matmuls are rounded to {short}; the port is exact: recomputing the reference with "
            f"{what} explains {100 * ev['explained']:.1f}% of its departure from the exact result. The difference "
            "is the reference's rounding, not a bug in the port."
        )
        fix = {
            "flax": "run the torch reference at full precision: torch.backends.cuda.matmul.allow_tf32 = False; "
            "torch.backends.cudnn.allow_tf32 = False (or compare with the port at the same precision)",
            "torch": "jax.config.update('jax_default_matmul_precision', 'highest') on the reference side",
        }
        return site.finding(pid, msg, ev, fix)
    msg = (
        f"The port's matmul uses {what}: recomputing with such operands explains "
        f"{100 * ev['explained']:.1f}% of the error."
    )
    return site.finding(pid, msg, ev, FIX[pid])


@register("x64", ids=("x64_disabled",), stage=3)
def detect_x64(site: Site):
    """Float64 reference, float32 port with ``jax_enable_x64`` off, error at float32 rounding level (P22)."""
    if site.dtypes != ("float64", "float32") or site.port != "flax" or site.meta.get("x64", True):
        return None
    e0 = site.e0
    if not (10 * TAU["float64"] < e0 <= 1e-4):
        return None
    e32, how = _float32_error(site)
    ratio = e0 / e32 if e32 else float("inf")
    hi = 5.0 if how == "recompute" else 100.0
    if not 0.2 <= ratio <= hi:
        return None
    ev = {
        "e0": e0,
        "eh": e0,
        "explained": 0.0,
        "float32_error": e32,
        "float32_estimate": how,
        "ratio": ratio,
        "reference_dtype": "float64",
        "port_dtype": "float32",
    }
    msg = (
        f"The port runs in float32 because jax_enable_x64 is off, against a float64 reference: its error "
        f"(rel {e0:.2g}) is what float32 arithmetic gives here (rel {e32:.2g})."
    )
    fix = {"flax": "jax.config.update('jax_enable_x64', True)  # before creating any array", "torch": "model.double()"}
    return site.finding("x64_disabled", msg, ev, fix)


def _float32_error(site: Site) -> tuple[float, str]:
    """Error a float32 evaluation of the layer has against its float64 value."""
    lin = LinearSite(site)
    if lin.ok():
        x, w = np.asarray(lin.x, np.float32), np.asarray(lin.w, np.float32)
        y = x @ w.T
        if lin.b is not None:
            y = y + np.asarray(lin.b, np.float32)
        return rel(y, site.y_ref), "recompute"
    return rel(np.asarray(site.y_ref, np.float32), site.y_ref), "output rounding"
