"""``xfdiff.compare``: capture both sides, align, measure, localize, diagnose.

One orchestration serves every mode (see :mod:`xfdiff.runs`): the reference
is captured into a store, the port's calls are handed one at a time to an
``on_call`` function that pairs and measures each, and ``memory=`` only picks
where the reference's activations are kept. Each stage below is one function.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

from .align import Alignment, align
from .capture.registry import PORT, REFERENCE, side_for
from .errors import AlignmentError, ConfigError, XfdiffError
from .evidence import Evidence, Row, Side, by_framework, other, rows_to_host
from .fused import covered
from .localize import assign_blame, localize
from .report import Report
from .rows import Match, call_pairs, make_row
from .runs import CallQueue, open_store, port_run
from .splice import finish
from .stats import Tolerance, as_tolerance
from .trace import CallRecord, Trace
from .verdict import judge, settle


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
    spill_dir: str | None = None,
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
        spill_dir: with ``memory="bounded"``, where the temporary directory of
            spilled arrays goes (default: the system's temporary directory).

    Returns:
        A :class:`Report` (with ``memory="bounded"``, ``meta["memory"]`` says
        what was spilled).

    Raises:
        ModelTypeError, InputError, CaptureError, AlignmentError, ConfigError
        (all :class:`XfdiffError`).
    """
    reference = _check_options(reference, memory, flax_model)
    tol = as_tolerance(tolerance)
    from .progress import Progress

    prog = Progress(enabled=progress)
    sides = _sides(pt_model, flax_model, inputs, flax_inputs, jit, reference)
    env_findings = _environment(pt_model, flax_model) if diagnose else []
    with open_store(memory, spill_dir) as store:
        run = port_run(sides.port, store)
        prog.step(f"capturing the reference ({_NAMES[reference]})")
        ref_trace = store.capture_reference(sides.ref)
        prog.step(f"capturing the port ({_NAMES[other(reference)]})")
        port_shape = run.structure()
        prog.step("aligning")
        al = _align(*by_framework(reference, ref_trace, port_shape), mapping, *sides.torch_flax)
        prog.step("comparing")
        ev = _plain_pass(run, store, sides, ref_trace, port_shape, al, tol, local)
        notes: list[str] = []
        if local and ev.rows:
            prog.step("teacher forcing")
            localize(ev, run, store, notes)
        else:
            assign_blame(ev.rows)
        report = _report(ev, sides, notes, local, store, run)
        report.findings = list(env_findings)
        _judge(ev, report, sides.ref if reference == "torch" else None, prog)
        if diagnose:
            # the detectors recompute on the host: only the rows they will read move (none on a clean run)
            rows_to_host(ev, _diagnosed_rows(ev))
            prog.step("diagnosing")
            report.findings += _diagnose(ev, report)
        finish(ev, sides.port, report, splice=local and bool(ev.rows))
        settle(report)
    prog.done()
    return report


_NAMES = {"torch": "PyTorch", "flax": "Flax"}


class Sides(NamedTuple):
    """The two capture sides, named by role; ``reference`` is the reference's framework."""

    ref: Any
    port: Any
    reference: str
    ref_model: Any
    port_model: Any

    @property
    def torch_flax(self) -> tuple[Any, Any]:
        return by_framework(self.reference, self.ref, self.port)


_SECOND = ("flax", "keras", "tf", "tensorflow")


def _check_options(reference: str, memory: str, second: Any) -> str:
    """Validate the options; returns the reference as ``"torch"`` or ``"flax"`` (the second argument's slot).

    ``"keras"`` / ``"tf"`` / ``"tensorflow"`` name a TensorFlow/Keras second model.
    """
    if reference not in ("torch", *_SECOND):
        raise ConfigError(
            f"reference must be 'torch' or the second model's framework ('flax', 'keras' or 'tf'), got {reference!r}."
        )
    if memory not in ("full", "bounded"):
        raise ConfigError(f"memory must be 'full' or 'bounded', got {memory!r}.")
    if reference in ("keras", "tf", "tensorflow"):
        from .capture.from_keras import accepts

        if not accepts(second):
            raise ConfigError(
                f"reference={reference!r} names a TensorFlow/Keras model, but the second argument is a "
                f"{type(second).__name__}; use reference='flax' for a Flax/JAX model."
            )
    return "torch" if reference == "torch" else "flax"


def _sides(pt_model: Any, flax_model: Any, inputs: Any, flax_inputs: Any, jit: bool, reference: str) -> Sides:
    """The capture side of each model, by role."""
    torch_side = side_for(pt_model, inputs, REFERENCE)
    flax_side = side_for(flax_model, inputs if flax_inputs is None else flax_inputs, PORT, jit=jit)
    ref, port = by_framework(reference, torch_side, flax_side)
    ref_model, port_model = by_framework(reference, pt_model, flax_model)
    return Sides(ref, port, reference, ref_model, port_model)


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


def _plain_pass(
    run: Any, store: Any, sides: Sides, ref_trace: Trace, port_shape: Trace, al: Alignment, tol: Tolerance, local: bool
) -> Evidence:
    """Run the port once, each call paired with its reference call and measured as it arrives.

    Rows come out in the reference's completion order; the final row compares the two root calls.
    """
    reference = sides.reference
    pairs = call_pairs(al, ref_trace, port_shape, reference)
    root = ref_trace.root()
    lazy = not store.bounded  # arrays held in memory stay readable: small rows' detail may wait
    rows: list[Row] = []
    finals: list[Row] = []

    def work(rec: CallRecord) -> bool:
        made = []
        if rec.path == "" and root is not None:
            final = make_row(Match(root, "root", 1.0), rec, tol, reference, lazy=lazy)
            if final is not None:
                finals.append(final)
                made.append(final)
            store.done_with(root)
        m = pairs.get(rec.key)
        if m is not None:
            row = make_row(m, rec, tol, reference, link_inputs=local, lazy=lazy)
            if row is not None:
                rows.append(row)
                made.append(row)
            store.done_with(m.ref)
        return any(r.layer.status != "ok" for r in made)  # a row out of tolerance keeps its values

    queue = CallQueue(work, store)
    port_trace = run.run(queue.on_call)
    queue.drain()
    rows.sort(key=lambda r: r.ref.order)
    for i, row in enumerate(rows):
        row.layer.order = i
    return Evidence(
        ref=Side(reference, ref_trace, sides.ref_model),
        port=Side(other(reference), port_trace, sides.port_model),
        alignment=al,
        rows=rows,
        tolerance=tol,
        final=finals[0] if finals else None,
    )


def _report(ev: Evidence, sides: Sides, notes: list[str], local: bool, store: Any, run: Any) -> Report:
    """The report of the measured rows (findings come after)."""
    meta = _meta(ev, sides, notes, local)
    memory = store.meta()
    if memory is not None:
        meta["memory"] = {**memory, **run.meta()}
    return Report(
        layers=[r.layer for r in ev.rows],
        unmatched=ev.alignment.unmatched,
        meta=meta,
        final=ev.final.layer if ev.final else None,
    )


def _judge(ev: Evidence, report: Report, torch_ref: Any, prog: Any) -> None:
    """Rounding floor, boundary notes and coverage (:mod:`xfdiff.verdict`), before diagnosis."""
    prog.step("judging against the rounding floor")
    judge(ev, report, torch_ref)


def _environment(pt_model, flax_model):
    try:
        from .pitfalls import environment_checks
    except ImportError:
        return []
    return environment_checks(pt_model, flax_model)


def _diagnosed_rows(ev: Evidence) -> list[Row]:
    """The rows diagnosis reads (:func:`xfdiff.pitfalls.candidate_rows`); none without the detectors."""
    try:
        from .pitfalls import candidate_rows
    except ImportError:
        return []
    return candidate_rows(ev)


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


def _meta(ev: Evidence, sides: Sides, notes: list[str], local: bool) -> dict:
    tt, tf = ev.torch_trace, ev.flax_trace
    ts, fs = sides.torch_flax
    al, tol = ev.alignment, ev.tolerance
    n_param_t = sum(1 for p in tt.paths() if tt.params.get(p))
    fused_t = covered(al)[0]
    n_param_aligned = sum(
        1
        for p in tt.paths()
        if tt.params.get(p) and (al.absorbed.get(p, p) in al.pairs or p in al.identified or p in fused_t)
    )
    return {
        "tolerance": {"atol": tol.atol, "rtol": tol.rtol},
        "reference": ev.reference,
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
        "identified": dict(al.identified),
        "fused": [{"kind": g.kind, "fused": g.fused, "parts": list(g.parts)} for g in al.fused],
        "local": bool(local),
        "notes": notes,
    }
