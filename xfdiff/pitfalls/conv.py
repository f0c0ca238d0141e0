"""Convolutions and layouts: 'SAME' padding (P10), kernel layout (P13), NCHW/NHWC flatten (P11).

``flax.linen.Conv`` defaults to ``padding='SAME'``, which (like TF/Keras)
puts the odd pixel at the end (``lo = total // 2``); ``torch.nn.Conv2d``
pads symmetrically (default 0). With stride 2 the shapes agree and the
sampling grid is shifted. torch kernels are ``(O, I, kH, kW)``, flax
``(kH, kW, I, O)``; ``transpose(2, 3, 1, 0)`` is the right conversion.
Flattening NCHW orders features (C, H, W), NHWC orders them (H, W, C), so a
Dense after a flatten needs its kernel rows permuted.
https://github.com/google/flax/issues/2993,
https://flax.readthedocs.io/en/stable/migrating/convert_pytorch_to_flax.html
"""

from __future__ import annotations

import itertools

import numpy as np

from .numerics import conv2d, f64, linear, rel
from .registry import register
from .sites import Site, numbers

MAX_CONV_WORK = 5e7  # multiply-adds per recomputation; larger convs are not re-run


def _pair(v, default: int) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (int(v), int(v))
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v):
        return (int(v[0]), int(v[1]))
    return (default, default)


def same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF/flax 'SAME' padding of one spatial axis: the extra pixel goes at the end."""
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


class ConvSite:
    """A 2-D convolution call in PyTorch layout: x (N, C, H, W), weight (O, I, kH, kW)."""

    def __init__(self, site: Site):
        self.site = site
        self.w = site.ref_params.get("weight")
        self.b = site.ref_params.get("bias")
        self.x = site.main_input() if site.kind == "call" else None
        cfg = site.ref_cfg
        self.stride = _pair(cfg.get("stride", cfg.get("strides")), 1)
        self.dilation = _pair(cfg.get("dilation", cfg.get("kernel_dilation")), 1)
        g = cfg.get("groups", cfg.get("feature_group_count", 1))
        self.groups = int(g) if isinstance(g, (int, float)) else 1

    def ok(self) -> bool:
        x, w, y = self.x, self.w, self.site.y_ref
        if x is None or w is None or w.ndim != 4 or x.ndim != 4 or y.ndim != 4:
            return False
        if x.shape[1] != w.shape[1] * self.groups or y.shape[1] != w.shape[0]:
            return False
        return x.size * w.shape[0] * w.shape[2] * w.shape[3] / self.groups <= MAX_CONV_WORK

    def ref_pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The reference's padding from its configuration (torch ints/'same'/'valid', flax 'SAME'/'VALID')."""
        p = self.site.ref_cfg.get("padding")
        if isinstance(p, str):
            if p.upper() == "VALID":
                return ((0, 0), (0, 0))
            ks = self.w.shape[2:]
            return tuple(same_pads(self.x.shape[2 + i], ks[i], self.stride[i], self.dilation[i]) for i in range(2))
        ph, pw = _pair(p, 0)
        return ((ph, ph), (pw, pw))

    def pad_options(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Every (lo, hi) padding per axis that yields the observed output size."""
        per_axis = []
        for i in range(2):
            n, out, k = self.x.shape[2 + i], self.site.y_ref.shape[2 + i], self.w.shape[2 + i]
            s, d = self.stride[i], self.dilation[i]
            t_min = (out - 1) * s + d * (k - 1) + 1 - n
            opts = []
            for total in range(max(t_min, 0), max(t_min, 0) + s):
                for lo in sorted({total // 2, total - total // 2, 0, total}):
                    opts.append((lo, total - lo))
            per_axis.append(list(dict.fromkeys(opts)))
        return list(itertools.product(*per_axis))

    def run(self, pads, w: np.ndarray | None = None, fmt: str = "fp32") -> np.ndarray:
        return conv2d(self.x, self.w if w is None else w, self.b, self.stride, pads, self.dilation, self.groups, fmt)


def _control(c: ConvSite) -> tuple[tuple, float]:
    """The reference's padding (configuration first, else the one that reproduces it) and its error."""
    pads = c.ref_pads()
    err = rel(c.run(pads), c.site.y_ref)
    if err <= 3 * c.site.tau:
        return pads, err
    errs = [(rel(c.run(p), c.site.y_ref), p) for p in c.pad_options() if p != pads]
    if not errs:
        return pads, err
    e, p = min(errs)
    return p, e


def _controlled(site: Site):
    """``(ConvSite, reference padding, control error)``, or None when the site is no conv or the control fails."""
    c = ConvSite(site)
    if not c.ok():
        return None
    pads, control = _control(c)
    if control > 3 * site.tau:
        return None
    return c, pads, control


@register("conv_padding", ids=("same_padding",), stage=0)
def detect_same_padding(site: Site):
    """Which (lo, hi) padding the port used (pitfalls.md P10)."""
    ready = _controlled(site)
    if ready is None:
        return None
    c, pads, control = ready
    scored = [(rel(site.y_port, c.run(p), site.y_ref), p) for p in c.pad_options() if p != pads]
    if not scored:
        return None
    eh, p_port = min(scored)
    if not site.confirmed(eh, control):
        return None
    ev = numbers(site, eh, control)
    ev.update({"reference_padding": [list(a) for a in pads], "port_padding": [list(a) for a in p_port]})
    msg = (
        f"The port pads the convolution {_fmt(p_port)} where the reference pads {_fmt(pads)}: "
        "'SAME' puts the extra pixel at the end, torch pads symmetrically."
    )
    (lh, hh), (lw, hw) = pads
    fix = {
        "flax": f"nn.Conv(..., padding=(({lh}, {hh}), ({lw}, {hw})))",
        "torch": f"x = F.pad(x, ({lw}, {hw}, {lh}, {hh})); then conv with padding=0",
    }
    return site.finding("same_padding", msg, ev, fix)


def _fmt(pads) -> str:
    return "(top, bottom)=({}, {}), (left, right)=({}, {})".format(*pads[0], *pads[1])


_DIHEDRAL = {
    "kH<->kW swapped": lambda w: np.swapaxes(w, 2, 3),
    "flipped vertically": lambda w: w[:, :, ::-1, :],
    "flipped horizontally": lambda w: w[:, :, :, ::-1],
    "flipped (true convolution)": lambda w: w[:, :, ::-1, ::-1],
    "swapped and flipped": lambda w: np.swapaxes(w, 2, 3)[:, :, ::-1, ::-1],
}


@register("conv_kernel", ids=("conv_kernel_layout",), stage=0)
def detect_conv_kernel(site: Site):
    """Kernel window transposed or flipped (pitfalls.md P13)."""
    ready = _controlled(site)
    if ready is None:
        return None
    c, pads, control = ready
    scored = []
    for name, fn in _DIHEDRAL.items():
        wv = fn(f64(c.w))
        if wv.shape == c.w.shape:
            scored.append((rel(site.y_port, c.run(pads, wv), site.y_ref), name))
    eh, name = min(scored)
    if not site.confirmed(eh, control):
        return None
    ev = numbers(site, eh, control)
    ev["kernel_variant"] = name
    msg = f"The port's convolution kernel is {name} relative to the reference."
    fix = {
        "flax": "kernel = jnp.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO, no flip",
        "torch": "w = torch.from_numpy(kernel).permute(3, 2, 0, 1)  # HWIO -> OIHW, no flip",
    }
    return site.finding("conv_kernel_layout", msg, ev, fix)


@register("flatten_layout", ids=("channel_layout",), kinds=("call", "segment"), stage=0)
def detect_flatten_layout(site: Site):
    """Features flattened in (H, W, C) order on one side and (C, H, W) on the other (pitfalls.md P11)."""
    if site.kind == "call":
        return _dense_after_flatten(site)
    y_ref, y_port = site.y_ref, site.y_port
    if y_ref.ndim != 2:
        return None
    orders = {
        "CHW": lambda u: f64(u).reshape(u.shape[0], -1),
        "HWC": lambda u: np.moveaxis(f64(u), 1, -1).reshape(u.shape[0], -1),
    }
    for s in site.sources[::-1]:
        if s.ref.ndim != 4 or s.ref.shape[0] != y_ref.shape[0] or s.ref[0].size != y_ref.shape[1]:
            continue
        ctl = {o: rel(fn(s.ref), y_ref) for o, fn in orders.items()}
        o_ref = min(ctl, key=ctl.get)
        o_port = "HWC" if o_ref == "CHW" else "CHW"
        eh = rel(y_port, orders[o_port](s.port), y_ref)
        correct = rel(y_port, orders[o_ref](s.port), y_ref)
        if not site.confirmed(eh, ctl[o_ref], correct=correct):
            continue
        n, ch, h, w = s.ref.shape
        ev = numbers(site, eh, ctl[o_ref], correct)
        ev.update(
            {"reference_order": o_ref, "port_order": o_port, "channels": ch, "height": h, "width": w, "source": s.name}
        )
        msg = (
            f"The port flattens {s.name}'s feature map in ({', '.join(o_port)}) order where the reference uses "
            f"({', '.join(o_ref)}): the next layer sees permuted features."
        )
        if o_ref == "CHW":
            fix = {
                "flax": f"x = jnp.transpose(x, (0, 3, 1, 2)).reshape(n, -1)  # flatten as (C, H, W); or permute "
                f"the Dense kernel rows: W.reshape(out, {ch}, {h}, {w}).transpose(2, 3, 1, 0).reshape(-1, out)",
                "torch": "x = x.reshape(n, -1)  # NCHW flatten: (C, H, W) order like the reference",
            }
        else:
            fix = {
                "flax": "x = x.reshape(n, -1)  # flatten NHWC as (H, W, C)",
                "torch": "x = x.permute(0, 2, 3, 1).reshape(n, -1)  # flatten as (H, W, C) like the reference",
            }
        return site.finding("channel_layout", msg, ev, fix)
    return None


def _dense_after_flatten(site: Site):
    """A Dense fed a feature map flattened in the other order, with kernel rows left unpermuted.

    xfdiff feeds the port the reference's features in the port's own order
    (the ``flatten(...)`` layout transform); a correct port has permuted its
    kernel rows to match, a buggy one computes ``W·x`` on permuted features.
    """
    from .linear import LinearSite

    lin = LinearSite(site)
    if not lin.ok() or "flatten" not in _input_layout(site):
        return None
    xp = next(
        (
            v
            for v in site.x_port.values()
            if isinstance(v, np.ndarray) and v.shape == lin.x.shape and v.dtype.kind == "f"
        ),
        None,
    )
    if xp is None:
        return None
    control = lin.control()
    eh = rel(site.y_port, linear(xp, lin.w, lin.b), site.y_ref)
    if not site.confirmed(eh, control):
        return None
    ev = numbers(site, eh, control)
    layout = _input_layout(site)
    ev["input_layout"] = layout
    msg = (
        f"The port's Dense receives the feature map flattened in the other order ({layout}) but its kernel rows "
        "were not permuted to match: every output mixes the wrong features."
    )
    fix = {
        "flax": "permute the kernel rows: W.reshape(out, C, H, W).transpose(2, 3, 1, 0).reshape(-1, out), or "
        "flatten as (C, H, W): jnp.transpose(x, (0, 3, 1, 2)).reshape(n, -1)",
        "torch": "permute the weight columns: W.reshape(out, H, W, C).permute(0, 3, 1, 2).reshape(out, -1)",
    }
    return site.finding("channel_layout", msg, ev, fix)


def _input_layout(site: Site) -> str:
    """Name of the layout transform the engine applied to the call's inputs (best effort)."""
    from ..layout import best_transform

    row = site.row
    ref_rec = row.ref
    port_rec = row.port_local or row.port
    for pk, rk in row.input_map.items():
        rv, pv = ref_rec.inputs.get(rk), port_rec.inputs.get(pk)
        if rv is not None and pv is not None:
            t, err = best_transform(rv, pv)
            if t is not None and err < 1e-6:
                return t.name
    return ""
