"""``xfdiff.compare``: capture both sides, align, measure, localize, diagnose."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

from .align import Alignment, align
from .errors import AlignmentError, ConfigError, ModelTypeError, XfdiffError
from .evidence import Evidence, Row
from .fastmetrics import parallel_map, stats_and_detail
from .layout import Transform, best_transform, candidates, input_layout
from .localize import assign_blame, localize
from .metrics import Tolerance, as_tolerance, lower_precision, status_of
from .report import LayerDiff, Report
from .trace import CallRecord, Trace


def _flax_side(flax_model: Any, inputs: Any, jit: bool):
    if _is_fn_pair(flax_model):
        from .capture.from_jaxfn import TapSide

        return TapSide(flax_model, inputs, jit=jit)
    if isinstance(flax_model, tuple) or any(c.__name__ == "FlaxPreTrainedModel" for c in type(flax_model).__mro__):
        from .capture.from_linen import LinenSide

        return LinenSide(flax_model, inputs, jit=jit)
    if "flax" in sys.modules and _is_nnx(flax_model):
        from .capture.from_nnx import NnxSide

        return NnxSide(flax_model, inputs, jit=jit)
    if "torch" in sys.modules and isinstance(flax_model, sys.modules["torch"].nn.Module):
        raise ModelTypeError(
            "flax_model is a PyTorch module. Pass the PyTorch model first and the Flax model second: "
            "xfdiff.compare(pt_model, flax_model, inputs)."
        )
    if callable(flax_model) and not isinstance(flax_model, type):
        from .capture.from_jaxfn import TapSide

        return TapSide(flax_model, inputs, jit=jit)
    raise ModelTypeError(
        f"Unsupported flax_model of type {type(flax_model).__name__}: pass a Hugging Face "
        "FlaxPreTrainedModel, a (linen_module, variables) tuple, an nnx.Module, or a function whose "
        "values are marked with xfdiff.tap()."
    )


def _is_fn_pair(obj: Any) -> bool:
    """``(fn, params)``: a plain JAX function and its parameter tree (not a linen module)."""
    if not (isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0])):
        return False
    return not any(c.__module__.startswith("flax") for c in type(obj[0]).__mro__)


def _is_nnx(obj: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax always has nnx in supported versions
        return False
    return isinstance(obj, nnx.Module)


def _torch_side(pt_model: Any, inputs: Any):
    if not type(pt_model).__module__.startswith("torch") and "torch" not in sys.modules:
        raise ModelTypeError(
            f"pt_model must be a torch.nn.Module, got {type(pt_model).__name__}. "
            "Pass the PyTorch model first and the Flax model second."
        )
    from .capture.from_torch import TorchSide

    return TorchSide(pt_model, inputs)


def compare(
    pt_model: Any,
    flax_model: Any,
    inputs: Any,
    *,
    flax_inputs: Any = None,
    reference: str = "torch",
    tolerance: Tolerance | float | dict | None = None,
    mapping: Any = None,
    local: bool = True,
    diagnose: bool = True,
    jit: bool = True,
    progress: bool | None = None,
    memory: str = "full",
) -> Report:
    """Compare a PyTorch model and its Flax port layer by layer.

    Args:
        pt_model: a ``torch.nn.Module``.
        flax_model: a Hugging Face ``FlaxPreTrainedModel``, a ``(linen_module,
            variables)`` tuple, an ``nnx.Module``, or a JAX function whose
            intermediate values are marked with :func:`xfdiff.tap` (alone, or
            as ``(fn, params)``: called ``fn(params, *inputs)``, see docs/reach.md).
        inputs: a dict (keyword arguments), a tuple (positional) or one
            array; numpy, torch or jax arrays.
        flax_inputs: inputs for the Flax side when the two take different
            arguments (defaults to ``inputs``).
        reference: ``"torch"`` or ``"flax"``: the side errors are measured against.
        tolerance: :class:`Tolerance`, a number (atol = rtol), or a dict.
        mapping: explicit pairs ``{torch_path: flax_path}`` (regex rules allowed,
            see :mod:`xfdiff.mapping`), or a path to a mapping file.
        local: re-run the port with every aligned module fed the reference's
            inputs (teacher forcing) to measure each layer's own error.
        diagnose: run the pitfall detectors on the culprit layer.
        jit: run the Flax side under ``jax.jit`` (falls back to eager when the
            model needs concrete values).
        progress: show progress on stderr (default: when it is a terminal).
        memory: ``"full"`` holds both sides' activations in memory;
            ``"bounded"`` spills the reference's activations to a temporary
            directory and compares the port's as they arrive, for models
            whose activations do not fit twice (see :mod:`xfdiff.streaming`).

    Returns:
        A :class:`Report`.

    Raises:
        ModelTypeError, InputError, CaptureError, AlignmentError, ConfigError
        (all :class:`XfdiffError`).
    """
    if reference not in ("torch", "flax"):
        raise ConfigError(f"reference must be 'torch' or 'flax', got {reference!r}.")
    if memory not in ("full", "bounded"):
        raise ConfigError(f"memory must be 'full' or 'bounded', got {memory!r}.")
    if memory == "bounded":
        from .streaming import compare_bounded

        return compare_bounded(
            pt_model,
            flax_model,
            inputs,
            flax_inputs=flax_inputs,
            reference=reference,
            tolerance=tolerance,
            mapping=mapping,
            local=local,
            diagnose=diagnose,
            progress=progress,
        )
    tol = as_tolerance(tolerance)
    from .progress import Progress

    prog = Progress(enabled=progress)
    torch_side = _torch_side(pt_model, inputs)
    flax_side = _flax_side(flax_model, inputs if flax_inputs is None else flax_inputs, jit)
    env_findings = _environment(pt_model, flax_model) if diagnose else []
    prog.step("capturing PyTorch")
    tt = torch_side.capture()
    prog.step("capturing Flax")
    tf = flax_side.capture()
    prog.step("aligning")
    al = _align(tt, tf, mapping, torch_side, flax_side)
    prog.step("comparing")
    ev = Evidence(tt, tf, al, [], tol, reference, torch_model=pt_model, flax_model=flax_model)
    ev.rows = _rows(tt, tf, al, tol, reference)
    ev.final = _final_row(tt, tf, tol, reference)
    notes: list[str] = []
    if local and ev.rows:
        prog.step("teacher forcing")
        localize(ev, torch_side if reference == "flax" else flax_side, notes)
    else:
        assign_blame(ev.rows)
    report = Report(
        layers=[r.layer for r in ev.rows],
        unmatched=al.unmatched,
        meta=_meta(tol, reference, torch_side, flax_side, tt, tf, al, notes, local),
        final=ev.final.layer if ev.final else None,
    )
    report.findings = list(env_findings)
    if diagnose:
        prog.step("diagnosing")
        report.findings += _diagnose(ev, report)
    prog.done()
    return report


def _align(tt: Trace, tf: Trace, mapping: Any, torch_side: Any, flax_side: Any) -> Alignment:
    """Pair the two traces (an explicit mapping first); AlignmentError when nothing pairs."""
    explicit = None
    if mapping is not None:
        from .mapping import resolve_mapping

        explicit = resolve_mapping(mapping, tt, tf)
    al = align(tt, tf, explicit=explicit)
    if len([a for a in al.pairs if a != ""]) == 0 and len(tt.paths()) > 1 and len(tf.paths()) > 1:
        raise AlignmentError(
            f"No module of {torch_side.describe()} could be paired with one of {flax_side.describe()}: "
            "their parameters, names and structure share nothing. Check that the port loaded the "
            "reference weights, or pass mapping={torch_path: flax_path}."
        )
    return al


def _environment(pt_model, flax_model):
    try:
        from .pitfalls import environment_checks
    except ImportError:
        return []
    return environment_checks(pt_model, flax_model)


def _diagnose(ev: Evidence, report: Report):
    try:
        from .pitfalls import diagnose
    except ImportError:
        return []
    try:
        return diagnose(ev, report)
    except XfdiffError:
        raise
    except Exception as e:  # a detector bug must not hide the comparison itself
        warnings.warn(
            f"xfdiff: pitfall diagnosis failed ({type(e).__name__}: {e}); the report has no findings.", stacklevel=3
        )
        return []


def _meta(tol, reference, ts, fs, tt: Trace, tf: Trace, al: Alignment, notes, local) -> dict:
    n_param_t = sum(1 for p in tt.paths() if tt.params.get(p))
    n_param_aligned = sum(1 for p in tt.paths() if tt.params.get(p) and al.absorbed.get(p, p) in al.pairs)
    return {
        "tolerance": {"atol": tol.atol, "rtol": tol.rtol},
        "reference": reference,
        "torch_model": ts.describe(),
        "flax_model": fs.describe(),
        "flax_framework": fs.framework,
        "torch_meta": tt.meta,
        "flax_meta": tf.meta,
        "n_torch_calls": len(tt.records),
        "n_flax_calls": len(tf.records),
        "n_param_modules_torch": n_param_t,
        "n_param_modules_aligned": n_param_aligned,
        "alignment": {a: {"flax": b, "how": al.how[a], "confidence": al.confidence[a]} for a, b in al.pairs.items()},
        "local": bool(local),
        "notes": notes,
    }


# --- rows ---------------------------------------------------------------------------------


def _pair_outputs(
    ref: dict[str, np.ndarray], port: dict[str, np.ndarray], hint=None
) -> list[tuple[str, str, Transform]]:
    """Pair float output leaves: same key first, then in order among layout-compatible leaves.

    ``hint()`` names the layout the call's inputs arrived in; it settles ties (C == H == W).
    """
    pairs = []
    used: set[str] = set()
    for rk, rv in ref.items():
        choice = None
        if rk in port and rk not in used and candidates(rv.shape, port[rk].shape):
            choice = rk
        else:
            for pk, pv in port.items():
                if pk not in used and candidates(rv.shape, pv.shape):
                    choice = pk
                    break
        if choice is None:
            continue
        cands = candidates(rv.shape, port[choice].shape)
        # Scoring transforms costs passes over both arrays; only needed when there is a choice.
        t = cands[0] if len(cands) == 1 else best_transform(rv, port[choice], hint() if hint else None)[0]
        if t is None:
            continue
        used.add(choice)
        pairs.append((rk, choice, t))
    return pairs


def _measure(ref_rec: CallRecord, port_rec: CallRecord, tol: Tolerance):
    """Worst matched output leaf: (stats, ref_key, port_key, transform, atol, rtol, detail) or None."""
    ref_out, port_out = ref_rec.float_outputs(), port_rec.float_outputs()
    best = None
    pairs = _pair_outputs(ref_out, port_out, lambda: input_layout(ref_rec.float_inputs(), port_rec.float_inputs()))
    for rk, pk, t in pairs:
        r = t.forward(ref_out[rk])
        p = port_out[pk]
        atol, rtol = tol.resolve(lower_precision(r.dtype.name, p.dtype.name))
        s, det = stats_and_detail(r, p, atol, rtol, detail=len(pairs) == 1)
        key = (s.nonfinite_mismatch > 0, s.frac_outside > 0, s.tol_needed)
        if best is None or key > best[0]:
            best = (key, s, rk, pk, t, atol, rtol, det)
    return None if best is None else best[1:]


def _rows(tt: Trace, tf: Trace, al: Alignment, tol: Tolerance, reference: str) -> list[Row]:
    pairs = []
    ref_trace = tt if reference == "torch" else tf
    rev = al.reverse
    for rec in ref_trace.records:
        if reference == "torch":
            a = rec.path
            if a not in al.pairs:
                continue
            calls = tf.calls_of(al.pairs[a])
            j = rec.call_index + al.offset.get(a, 0)
            if j >= len(calls):
                continue
            rt, rf = rec, calls[j]
        else:
            if rec.path not in rev:
                continue
            tcalls = tt.calls_of(rev[rec.path])
            if rec.call_index >= len(tcalls):
                continue
            rt, rf = tcalls[rec.call_index], rec
        pairs.append((rt, rf))
    made = parallel_map(lambda pair: _make_row(pair[0], pair[1], al, tol, reference), pairs)
    rows = [row for row in made if row is not None]
    for i, row in enumerate(rows):
        row.layer.order = i
    return rows


def _make_row(rt: CallRecord, rf: CallRecord, al: Alignment, tol: Tolerance, reference: str) -> Row | None:
    ref_rec, port_rec = (rt, rf) if reference == "torch" else (rf, rt)
    lyr = LayerDiff(
        torch_path=rt.path,
        flax_path=rf.path,
        call_index=rt.call_index,
        torch_type=rt.module_type,
        flax_type=rf.module_type,
        match=al.how.get(rt.path, ""),
        confidence=al.confidence.get(rt.path, 0.0),
        depth=rt.depth,
    )
    errs = [e for e in (rt.error, rf.error) if e]
    if errs:
        lyr.note = "; ".join(errs)
    ref_out, port_out = ref_rec.float_outputs(), port_rec.float_outputs()
    if not ref_out or not port_out:
        if not ref_out and not port_out:
            return None
        lyr.status = "shape_mismatch"
        lyr.note = (lyr.note + "; " if lyr.note else "") + "only one side returned floating-point outputs"
        return Row(lyr, rt, rf, None, None, None)
    m = _measure(ref_rec, port_rec, tol)
    fo_t, fo_f = rt.float_outputs(), rf.float_outputs()
    if m is None:
        lyr.status = "shape_mismatch"
        lyr.torch_shape = tuple(next(iter(fo_t.values())).shape)
        lyr.flax_shape = tuple(next(iter(fo_f.values())).shape)
        lyr.note = (
            f"output shapes {[v.shape for v in fo_t.values()]} (torch) and {[v.shape for v in fo_f.values()]} (flax) "
            "fit no legal layout transform (NCHW/NHWC, head split/merge, broadcast, transpose)"
        )
        return Row(lyr, rt, rf, None, None, None)
    s, rk, pk, t, atol, rtol, det = m
    _fill(lyr, s, atol, rtol)
    lyr.output_key = rk
    lyr.layout = t.name
    tk, fk = (rk, pk) if reference == "torch" else (pk, rk)
    lyr.torch_shape, lyr.flax_shape = tuple(rt.outputs[tk].shape), tuple(rf.outputs[fk].shape)
    lyr.torch_dtype, lyr.flax_dtype = rt.outputs[tk].dtype.name, rf.outputs[fk].dtype.name
    if det is None:
        det = stats_and_detail(t.forward(ref_rec.outputs[rk]), port_rec.outputs[pk], atol, rtol, detail=True)[1]
    lyr.detail = det
    return Row(lyr, rt, rf, rk, pk, t)


def _fill(lyr: LayerDiff, s, atol: float, rtol: float) -> None:
    lyr.max_abs, lyr.mean_abs, lyr.rel_l2, lyr.cosine = s.max_abs, s.mean_abs, s.rel_l2, s.cosine
    lyr.tol_needed, lyr.frac_outside, lyr.n_nonfinite = s.tol_needed, s.frac_outside, s.n_nonfinite
    lyr.atol, lyr.rtol = atol, rtol
    lyr.status = status_of(s)


def _final_row(tt: Trace, tf: Trace, tol: Tolerance, reference: str) -> Row | None:
    rt, rf = tt.root(), tf.root()
    if rt is None or rf is None:
        return None
    al = Alignment()
    al.add(rt.path, rf.path, "root", 1.0)
    return _make_row(rt, rf, al, tol, reference)
