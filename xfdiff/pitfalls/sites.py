"""Where a detector looks: the culprit's own call, or its code between children.

A *site* is one place whose own code made the port differ, with everything a
hypothesis needs, already in PyTorch conventions (Linear ``(out, in)``, conv
``OIHW``, channels-first activations) whichever side is the reference:

- ``call``: a module without aligned children. ``x`` are the inputs the
  reference call got (the port got the same under teacher forcing),
  ``y_ref`` / ``y_port`` the two outputs.
- ``segment``: code of a composite module between its children (an
  activation applied as a function, a scale, a reshape, attention math).
  ``sources`` are values available before that code (the module's inputs and
  its earlier children's outputs, both sides), ``y_ref`` / ``y_port`` the
  value where the two sides part: the input of the first child that received
  a different value under teacher forcing, or the module's own output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..evidence import other
from ..layout import Transform, best_transform
from ..report import Finding
from ..stats import compare_arrays, is_float
from ..stats.meet import host_dict, to_host
from ..trace import CallRecord, Trace
from .numerics import f64, rel, tau_for


@dataclass
class Source:
    """A value available to a segment's code, on both sides."""

    name: str  # a child path, or "input:<key>"
    ref: np.ndarray
    port: np.ndarray
    module_type: str = ""
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Site:
    """One place to test hypotheses on (see the module docstring)."""

    row: Any  # evidence.Row
    kind: str  # "call" | "segment"
    reference: str
    y_ref: np.ndarray
    y_port: np.ndarray
    x: dict[str, np.ndarray] = field(default_factory=dict)
    x_port: dict[str, np.ndarray] = field(default_factory=dict)  # the port call's own inputs (its layout)
    sources: list[Source] = field(default_factory=list)
    ref_params: dict[str, np.ndarray] = field(default_factory=dict)
    port_params: dict[str, np.ndarray] = field(default_factory=dict)
    ref_cfg: dict[str, Any] = field(default_factory=dict)
    port_cfg: dict[str, Any] = field(default_factory=dict)
    ref_type: str = ""
    port_type: str = ""
    target: str = ""  # segments: the child whose input differs ("" = the module's output)
    dtypes: tuple[str, str] = ("float32", "float32")  # (reference, port) output dtypes
    meta: dict[str, Any] = field(default_factory=dict)  # trace meta of the port side
    # segments: every parameter under the module, both sides, by path relative to it (in each side's layout)
    tree_params: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def port(self) -> str:
        return other(self.reference)

    @property
    def tau(self) -> float:
        return tau_for(*self.dtypes)

    @cached_property
    def e0(self) -> float:
        return rel(self.y_port, self.y_ref)

    def float_inputs(self) -> list[np.ndarray]:
        return [v for v in self.x.values() if _real_float(v)]

    def int_inputs(self) -> list[np.ndarray]:
        return [v for v in self.x.values() if isinstance(v, np.ndarray) and v.dtype.kind in "iub"]

    def main_input(self) -> np.ndarray | None:
        """The float input with the output's leading shape (the layer's activation input)."""
        fl = self.float_inputs()
        for v in fl:
            if v.shape[:-1] == self.y_ref.shape[:-1] or v.shape == self.y_ref.shape:
                return v
        return fl[0] if len(fl) == 1 else None

    @cached_property
    def floor(self) -> float:
        """Relative rounding floor of this computation: the dtype's ``tau``, raised to the floor the
        verdict measured for the row (the reference step's own rounding against float64), when there is one."""
        t = self.tau
        f = getattr(self.row.layer, "floor", None)
        if isinstance(f, (int, float)) and f > 0 and self.y_ref.size:
            rms = float(np.sqrt(np.mean(np.square(self.y_ref[np.isfinite(self.y_ref)])))) if self.y_ref.size else 0.0
            if rms > 0:
                t = max(t, float(f) / rms)
        return t

    def confirmed(self, eh: float, control: float, tau: float | None = None, correct: float | None = None) -> bool:
        """The one rule every finding passes (pitfalls.md §0, "a finding must beat its control").

        Args:
            eh: residual of the hypothesis on the side it accuses (relative to ``y_ref``).
            control: residual of the correct formula on the other side (it must reproduce it: ``<= 3τ``).
            tau: the family's own noise floor when it is larger than the dtype's (attention, centred norms).
            correct: residual of the *correct* formula on the accused side's own data. Defaults to ``e0``
                (right for call sites, where both sides got the same inputs); segment sites pass it, since
                their ``e0`` also holds what earlier children changed.

        The accused side must depart from the correct formula clearly above the site's rounding floor
        (``correct > 10τ``), and the hypothesis must leave clearly less (``eh <= max(0.1·correct, 3τ)``):
        a hypothesis that fits no better than the correct formula, or a departure at noise level, is
        never reported.
        """
        t = max(self.floor, tau or 0.0)
        ec = self.e0 if correct is None else correct
        return control <= 3 * t and ec > 10 * t and eh <= max(0.1 * ec, 3 * t)

    def finding(
        self,
        pitfall: str,
        message: str,
        evidence: dict[str, Any],
        fix: dict[str, str] | str,
        confidence: str = "confirmed",
        fixed: Any = None,
    ) -> Finding:
        """A finding at this site; ``fixed(x)`` (call sites) recomputes the output under the fix
        from the main input ``x`` in PyTorch layout (:mod:`xfdiff.splice` splices it in)."""
        lyr = self.row.layer
        fx = fix if isinstance(fix, str) else fix.get(self.port, "")
        ev = {"site": self.kind, **({"where": self.target} if self.target else {})}
        ev.update({k: _clean(v) for k, v in evidence.items()})
        f = Finding(
            pitfall=pitfall,
            torch_path=lyr.torch_path,
            flax_path=lyr.flax_path,
            message=message,
            evidence=ev,
            fix=fx,
            call_index=lyr.call_index,
            confidence=confidence,
        )
        if fixed is not None and self.kind == "call":
            f._fixed = fixed  # not saved: used while the comparison's models are at hand
        return f


def _clean(v: Any) -> Any:
    """Evidence values as plain JSON-ready Python numbers."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float):
        return float(f"{v:.6g}")
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _real_float(a: Any) -> bool:
    return is_float(a, real=True)  # the recomputations here are real arithmetic


# --- parameters in PyTorch conventions -------------------------------------------------------


def torch_convention(params: dict[str, np.ndarray], side: str, module_type: str) -> dict[str, np.ndarray]:
    """Parameters renamed and transposed to PyTorch's names and layouts.

    Flax ``kernel`` (in, out) becomes ``weight`` (out, in); conv kernels
    ``(kH, kW, I, O)`` become ``(O, I, kH, kW)``; ``scale`` and ``embedding``
    become ``weight``; ``batch_stats.mean/var`` become ``running_mean/var``; Keras
    ``gamma``/``beta``/``embeddings``/``moving_mean``/``moving_variance`` likewise.
    """
    if side == "torch":
        return dict(params)
    out: dict[str, np.ndarray] = {}
    is_conv = "conv" in module_type.lower()
    for k, v in params.items():
        if k == "kernel":
            if v.ndim == 2 and not is_conv:
                out["weight"] = v.T
            elif v.ndim >= 3 and is_conv:
                out["weight"] = np.moveaxis(v, (-1, -2), (0, 1))
            else:
                out["weight"] = v
        elif k in ("scale", "embedding", "gamma", "embeddings"):  # gamma, embeddings: Keras
            out["weight"] = v
        elif k == "beta":
            out["bias"] = v
        elif k in ("batch_stats.mean", "moving_mean"):
            out["running_mean"] = v
        elif k in ("batch_stats.var", "moving_variance"):
            out["running_var"] = v
        else:
            out[k] = v
    return out


_BLOCK = re.compile(r"^fused \w+ \(block (\d+) of (\d+)\)")

# --- building sites -----------------------------------------------------------------------


class _Sides:
    """The rows by port call, the port's teacher-forced trace, and layout into PyTorch conventions."""

    def __init__(self, ev: Any):
        self.ev = ev
        self.ref_is_torch = ev.ref.framework == "torch"
        self.local: Trace | None = ev.port.local_trace
        # rows whose inputs do not correspond (Row.unverified_inputs) are not forced: not children to read
        self.port_row = {r.port.key: r for r in ev.rows if not r.unverified_inputs}

    def to_torch(self, ref: np.ndarray, port: np.ndarray, t: Transform | None) -> tuple[np.ndarray, np.ndarray]:
        """Both arrays in PyTorch layout (``t`` maps reference layout -> port layout), on the host
        (a fused block's view of a device capture is not among the records moved for diagnosis)."""
        ref, port = to_host(ref), to_host(port)
        if t is None:
            return ref, port
        if self.ref_is_torch:
            return ref, t.inverse(port)
        return t.forward(ref), port


def build_sites(ev: Any, row: Any) -> list[Site]:
    """The site(s) of ``row`` whose own code differs between reference and port."""
    sides = _Sides(ev)
    kids = _port_children(sides, row)
    if not kids:
        site = _call_site(ev, sides, row)
        return [site] if site is not None else []
    site = _segment_site(ev, sides, row, kids)
    return [site] if site is not None else []


def _common(ev: Any, sides: _Sides, row: Any, kind: str, y_ref, y_port) -> Site:
    lyr = row.layer
    ref_fw, port_fw = ev.ref.framework, ev.port.framework
    return Site(
        row=row,
        kind=kind,
        reference=ref_fw,
        y_ref=f64(y_ref),
        y_port=f64(y_port),
        ref_params=torch_convention(ev.params(ref_fw, row.ref.path), ref_fw, row.ref.module_type),
        port_params=torch_convention(ev.params(port_fw, row.port.path), port_fw, row.port.module_type),
        ref_cfg=ev.config(ref_fw, row.ref.path),
        port_cfg=ev.config(port_fw, row.port.path),
        ref_type=row.ref.module_type,
        port_type=row.port.module_type,
        dtypes=(getattr(lyr, f"{ref_fw}_dtype"), getattr(lyr, f"{port_fw}_dtype")),
        meta=dict(ev.port.trace.meta),
    )


def _call_site(ev: Any, sides: _Sides, row: Any) -> Site | None:
    if row.ref_key is None or row.transform is None:
        return None
    ref = row.ref
    port = row.port_local if row.port_local is not None else row.port
    if row.port_key not in port.outputs:
        return None
    y_ref, y_port = sides.to_torch(ref.outputs[row.ref_key], port.outputs[row.port_key], row.transform)
    site = _common(ev, sides, row, "call", y_ref, y_port)
    site.x_port = dict(port.inputs)
    if sides.ref_is_torch or row.port_local is None:
        site.x = dict(ref.inputs)
    else:  # floats: the torch port's forced inputs (the reference's values in torch layout); ids: the reference's
        site.x = {k: v for k, v in port.inputs.items() if _real_float(v)}
        site.x.update({f"reference.{k}": v for k, v in ref.inputs.items() if not _real_float(v)})
    return site


def _port_children(sides: _Sides, row: Any) -> list[CallRecord]:
    """Nearest aligned descendant calls of the port call of ``row``, in completion order."""
    trace = sides.local
    prec = row.port_local
    if trace is None or prec is None:
        return []
    path = prec.path
    prefix = path + "." if path else ""
    earlier = [r.order for r in trace.calls_of(path) if r.order < prec.order]
    start = max(earlier) if earlier else -1
    aligned = {k.split("#")[0] for k in sides.port_row}
    kids = []
    for r in trace.records:
        if not (start < r.order < prec.order) or r.path == path or not r.path.startswith(prefix):
            continue
        if r.key not in sides.port_row:
            continue
        between = r.path[len(prefix) :].split(".")[:-1]
        mids = [prefix + ".".join(between[: i + 1]) for i in range(len(between))]
        if not any(m in aligned for m in mids):
            kids.append(r)
    return kids


def _gap(sides: _Sides, kid: CallRecord) -> tuple[str, str, float] | None:
    """(port input key, reference input key, max_abs) when the port's own value fed to ``kid`` differs."""
    row = sides.port_row[kid.key]
    worst = None
    for pk, rk in row.input_map.items():
        raw = kid.raw_inputs.get(pk)
        forced = kid.inputs.get(pk)
        if raw is None or forced is None or raw.shape != forced.shape:
            continue
        fin = np.isfinite(f64(forced))
        if not np.all(fin) or (forced.size and np.max(np.abs(f64(forced))) >= 1e4):
            continue  # mask-like values: judged by the attention detectors
        s = compare_arrays(forced, raw, row.layer.atol, row.layer.rtol)
        if not s.passes() and (worst is None or s.max_abs > worst[2]):
            worst = (pk, rk, s.max_abs)
    return worst


def _segment_site(ev: Any, sides: _Sides, row: Any, kids: list[CallRecord]) -> Site | None:
    ref_parent = row.ref
    sources: list[Source] = []
    # Under teacher forcing the port got the reference's inputs; keep them in PyTorch layout.
    given = dict(ref_parent.inputs)
    if not sides.ref_is_torch and row.port_local is not None:
        given = {k: v for k, v in given.items() if not _real_float(v)}
        given.update({k: v for k, v in row.port_local.inputs.items() if _real_float(v)})
    for k, v in given.items():
        if isinstance(v, np.ndarray):
            sources.append(Source(f"input:{k}", v, v))
    for kid in kids:
        krow = sides.port_row[kid.key]
        gap = _gap(sides, kid)
        if gap is not None:
            pk, rk, _ = gap
            ref_in = krow.ref.inputs[rk]
            t, _err = best_transform(ref_in, kid.inputs[pk])
            y_ref, y_port = sides.to_torch(ref_in, kid.raw_inputs[pk], t)
            site = _common(ev, sides, row, "segment", y_ref, y_port)
            site.sources, site.target = sources, krow.layer.label
            site.tree_params = _tree_params(ev, row)
            return site
        if krow.ref_key is not None and krow.port_key in kid.outputs and krow.transform is not None:
            r, p = sides.to_torch(krow.ref.outputs[krow.ref_key], kid.outputs[krow.port_key], krow.transform)
            ctype = krow.ref.module_type
            cparams = torch_convention(ev.params(ev.ref.framework, krow.ref.path), ev.ref.framework, ctype)
            # a fused projection (xfdiff.fused): one block of the reference's, or the port's whole (by its name)
            blk = _BLOCK.search(krow.layer.match)
            name = f"{krow.ref.path}[{blk.group(1)}/{blk.group(2)}]" if blk else krow.ref.path
            if krow.layer.match.endswith("blocks joined)"):
                name = krow.port.path
            sources.append(Source(name, r, p, ctype, cparams))
    if row.layer.local_status in (None, "ok") or row.ref_key is None or row.port_local is None:
        return None
    y_ref, y_port = sides.to_torch(ref_parent.outputs[row.ref_key], row.port_local.outputs[row.port_key], row.transform)
    last = [s for s in sources if not s.name.startswith("input:")][-1:]
    if last and _same(last[0].ref, y_ref) and _same(last[0].port, y_port):
        return None  # the module returns its last child's value: the error is that child's own
    site = _common(ev, sides, row, "segment", y_ref, y_port)
    site.sources = sources
    site.tree_params = _tree_params(ev, row)
    return site


def _tree_params(ev: Any, row: Any) -> dict[str, dict[str, np.ndarray]]:
    """Parameters of the row's module and everything under it, per side (names relative to the module)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for side, rec in (("reference", row.ref), ("port", row.port_local or row.port)):
        fw = ev.ref.framework if side == "reference" else ev.port.framework
        path = getattr(rec, "path", None)
        if path is None:
            continue
        prefix = path + "." if path else ""
        got: dict[str, np.ndarray] = {}
        for p, params in ev.trace(fw).params.items():
            if p == path or p.startswith(prefix):
                for k, v in host_dict(params).items():
                    got[f"{p[len(prefix) :]}.{k}" if p != path else k] = v
        out[side] = got
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(f64(a), f64(b), equal_nan=True))


def same_shape_sources(site: Site) -> list[Source]:
    """Float sources shaped like the site's output, latest first."""
    out = [s for s in site.sources if _real_float(s.ref) and s.ref.shape == site.y_ref.shape]
    return out[::-1]


def numbers(site: Site, eh: float, control: float, correct: float | None = None) -> dict[str, float]:
    """The standard evidence: error, error left under the hypothesis, explained share, control.

    ``correct`` (the correct formula's residual on the accused side, see :meth:`Site.confirmed`) is shown
    as ``correct_residual`` when given; ``explained`` is then measured against it.
    """
    e0 = site.e0
    base = e0 if correct is None else correct
    out = {"e0": e0, "eh": eh, "explained": 1.0 - eh / base if base else 0.0, "control": control}
    if correct is not None:
        out["correct_residual"] = correct
    out["noise_floor"] = site.floor
    return out
