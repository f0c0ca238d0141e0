"""Bounded-memory comparison: ``xfdiff.compare(..., memory="bounded")``.

Holding every activation of both sides is what breaks first on a large model
(a 1B-parameter Llama at 2,048 tokens records about 11 GiB per side). In
bounded mode no side's activations are held in memory at once:

1. The reference (PyTorch) is captured with every recorded array written to a
   ``.npy`` file in a temporary directory as soon as its call returns; the
   records keep read-only memory maps. After each use the mapped pages are
   given back (``MADV_DONTNEED``), so resident memory does not grow with the
   model's depth.
2. The port is described without running it (``jax.eval_shape``): its calls,
   output shapes and parameters are enough to align the two models.
3. The port runs eagerly and each call is compared the moment it returns,
   against the spilled reference. A row keeps its statistics and the small
   ``error_detail`` summary (worst elements, histogram, a sample); the port's
   full tensors are spilled only for flagged rows (not ``ok``), where the
   pitfall detectors may need them. Other port records keep placeholders
   (shape and dtype only).
4. Teacher forcing runs the port again, eagerly, each call's inputs read from
   the spilled reference when that call runs.
5. A port value sharded over several JAX devices is reduced where it lives
   (:mod:`xfdiff.fastmetrics`); only flagged rows are ever gathered.

The temporary directory is removed before ``compare`` returns. Supported:
a PyTorch reference and a linen / Hugging Face Flax port (``reference="torch"``).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import engine as E
from . import localize as L
from .align import Alignment
from .errors import ConfigError, XfdiffError
from .evidence import Evidence, Row
from .metrics import as_tolerance
from .report import Report
from .trace import CallRecord, Trace, call_key, is_float_array

#: Arrays smaller than this (bytes) stay in memory instead of being spilled.
SMALL_BYTES = 1 << 16


class SpillStore:
    """Arrays written to ``.npy`` files and read back as read-only memory maps."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.count = 0
        self.nbytes = 0

    def put(self, a: Any) -> np.ndarray:
        """Write ``a`` to disk and return a memory map of it (small arrays are returned as is)."""
        a = np.asarray(a)
        if a.nbytes < SMALL_BYTES:
            return np.array(a)
        dtype = a.dtype
        bits = a.view(f"u{dtype.itemsize}") if dtype.kind == "V" or dtype.name == "bfloat16" else a
        path = self.root / f"{self.count}.npy"
        self.count += 1
        np.save(path, bits)
        self.nbytes += a.nbytes
        m = np.load(path, mmap_mode="r")
        return m.view(dtype) if m.dtype != dtype else m

    def spill_record(self, rec: CallRecord) -> None:
        """Replace every array of ``rec`` by a memory map of its spilled copy."""
        for d in (rec.inputs, rec.outputs, rec.raw_inputs):
            for k, v in d.items():
                d[k] = self.put(v)


def release(rec: CallRecord | None) -> None:
    """Drop the resident pages of ``rec``'s memory maps (they are re-read on the next use)."""
    if rec is None:
        return
    for d in (rec.inputs, rec.outputs, rec.raw_inputs):
        for v in d.values():
            mm = getattr(v, "_mmap", None)
            if mm is not None and not mm.closed:
                mm.madvise(mmap.MADV_DONTNEED)


def trim_heap() -> None:
    """Give freed heap memory back to the OS.

    Eager JAX and PyTorch free their temporaries into glibc's per-thread
    arenas, which keep them; without trimming, resident memory creeps up with
    every layer. A no-op where glibc's ``malloc_trim`` does not exist.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _is_sharded(v: Any) -> bool:
    sharding = getattr(v, "sharding", None)
    return sharding is not None and len(sharding.device_set) > 1


def _is_float(v: Any) -> bool:
    if is_float_array(v):
        return True
    dt = getattr(v, "dtype", None)
    return dt is not None and (np.dtype(dt).kind in "fc" or np.dtype(dt).name == "bfloat16")


class LiveRecord(CallRecord):
    """A port call as it returns; arrays sharded over several devices stay JAX arrays."""

    def float_outputs(self) -> dict[str, Any]:
        return {k: v for k, v in self.outputs.items() if _is_float(v)}

    def float_inputs(self) -> dict[str, Any]:
        return {k: v for k, v in self.inputs.items() if _is_float(v)}


class _LazyInputs(dict):
    """Teacher-forcing inputs of one call, read from the spilled reference when asked for."""

    def __init__(self, ref_rec: CallRecord, m: dict):
        super().__init__({pk: None for pk in m})
        self.ref_rec, self.m = ref_rec, m

    def __getitem__(self, pk: str):
        rk, t = self.m[pk]
        return np.ascontiguousarray(t.forward(self.ref_rec.inputs[rk]))


class _Run:
    """What the port runs hand to :meth:`on_call`, and what that keeps."""

    def __init__(self, tt: Trace, skeleton: Trace, al: Alignment, tol, store: SpillStore):
        self.tt, self.al, self.tol, self.store = tt, al, tol, store
        self.pairs = _port_pairs(tt, skeleton, al)
        self.rows: list[Row] = []
        self.final: Row | None = None
        self.maps: dict[tuple[str, int], dict] = {}
        self.sharded = 0
        self.kept_calls = 0

    def live(self, path, idx, typ, method, order, ins, outs, raw) -> LiveRecord:
        rec = LiveRecord(path=path, call_index=idx, module_type=typ, order=order, method=method)
        rec.inputs, rec.outputs, rec.raw_inputs = ({k: self._host(v) for k, v in d.items()} for d in (ins, outs, raw))
        return rec

    def _host(self, v: Any) -> Any:
        if _is_sharded(v):
            self.sharded += 1
            return v  # reduced where it lives; gathered only if its row is flagged
        return np.asarray(v)  # zero-copy for a single-device CPU array

    def keep(self, rec: CallRecord, flagged: bool) -> None:
        """Spill a flagged call's arrays for the detectors; keep only shapes of the others."""
        from .capture.from_linen import shape_placeholder

        if flagged:
            self.kept_calls += 1
        for d in (rec.inputs, rec.outputs, rec.raw_inputs):
            for k, v in d.items():
                d[k] = self.store.put(np.asarray(v)) if flagged else shape_placeholder(np.shape(v), v.dtype)

    def on_call(self, path, idx, typ, method, order, ins, outs, raw) -> None:
        rec = self.live(path, idx, typ, method, order, ins, outs, raw)
        made = []
        if path == "" and self.tt.root() is not None:
            root = Alignment()
            root.add("", "", "root", 1.0)
            self.final = E._make_row(self.tt.root(), rec, root, self.tol, "torch")
            made.append(self.final)
        ref = self.pairs.get((path, idx))
        if ref is not None:
            row = E._make_row(ref, rec, self.al, self.tol, "torch")
            if row is not None:
                m = L.input_map(ref, rec)
                self.maps[(path, idx)] = m
                row.input_map = {pk: rk for pk, (rk, _) in m.items()}
                self.rows.append(row)
                made.append(row)
        self.keep(rec, any(r is not None and r.layer.status != "ok" for r in made))
        release(ref)
        release(self.tt.root() if path == "" else None)
        trim_heap()


def _port_pairs(tt: Trace, skeleton: Trace, al: Alignment) -> dict[tuple[str, int], CallRecord]:
    """Port call ``(path, index)`` -> the reference record it is compared with (as ``engine._rows``)."""
    n_calls: dict[str, int] = {}
    for r in skeleton.records:
        n_calls[r.path] = n_calls.get(r.path, 0) + 1
    out = {}
    for rec in tt.records:
        if rec.path not in al.pairs:
            continue
        fpath = al.pairs[rec.path]
        j = rec.call_index + al.offset.get(rec.path, 0)
        if j < n_calls.get(fpath, 0):
            out[(fpath, j)] = rec
    return out


def _localize(ev: Evidence, side: Any, run: _Run, notes: list[str]) -> None:
    """Teacher forcing with the reference's inputs read from disk one call at a time."""
    port_row = {row.flax.key: row for row in ev.rows}
    subst = {
        (row.flax.path, row.flax.call_index): _LazyInputs(row.torch, run.maps[(row.flax.path, row.flax.call_index)])
        for row in ev.rows
        if run.maps.get((row.flax.path, row.flax.call_index))
    }
    gaps = []
    # Detectors read a composite culprit's children under teacher forcing, and children
    # return before their parent: keep the calls inside any module that diverged.
    diverged = {row.flax.path for row in ev.rows if row.layer.status != "ok" and row.flax.path}

    def inside_diverged(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in diverged for i in range(1, len(parts)))

    def on_call(path, idx, typ, method, order, ins, outs, raw):
        row = port_row.get(call_key(path, idx))
        lrec = run.live(path, idx, typ, method, order, ins, outs, raw)
        if row is not None and row.ref_key is not None and row.port_key in lrec.outputs:
            m = run.maps.get((path, idx), {})
            L._local_error(row, m, row.torch, row.flax, lrec)
            gap = L._gap_stats(m, row.torch, lrec, row.layer.atol, row.layer.rtol)
            if gap is not None:
                gaps.append((row, gap))
            bad = row.layer.local_status != "ok" or row.layer.status != "ok"
            run.keep(lrec, bad or inside_diverged(path))
            release(row.torch)
        else:
            run.keep(lrec, inside_diverged(path))
        trim_heap()

    try:
        local_trace = side.stream(on_call, substitute=subst)
    except XfdiffError as e:
        notes.append(f"teacher-forced re-run failed ({e}); first divergence uses propagated error")
        for row in ev.rows:
            row.layer.note = L._join(row.layer.note, "local error not measured: teacher-forced re-run failed")
        return
    kept = {row.port_local.key: row.port_local for row in ev.rows if row.port_local is not None}
    local_trace.records = [kept.get(r.key, r) for r in local_trace.records]
    ev.flax_local_trace = local_trace
    for row in ev.rows:
        if row.port_local is None:
            row.layer.note = L._join(
                row.layer.note, "local error not measured: the call did not recur under teacher forcing"
            )
    for row, (s, pk) in gaps:  # after every row has its own local error, as in the full mode
        L._blame_gap(row, s, pk, row.port_local, local_trace, port_row)
    L.assign_blame(ev.rows)


def _check_supported(reference: str, flax_side: Any) -> None:
    if reference != "torch" or not hasattr(flax_side, "stream"):
        raise ConfigError(
            "memory='bounded' supports a PyTorch reference and a linen or Hugging Face Flax port "
            f"(reference='torch'); got reference={reference!r} and a {flax_side.framework} port. "
            "Use memory='full' (the default) for this pair."
        )


def compare_bounded(
    pt_model: Any,
    flax_model: Any,
    inputs: Any,
    *,
    flax_inputs: Any = None,
    reference: str = "torch",
    tolerance=None,
    mapping: Any = None,
    local: bool = True,
    diagnose: bool = True,
    progress: bool | None = None,
    spill_dir: str | None = None,
) -> Report:
    """:func:`xfdiff.compare` with bounded memory (see the module notes).

    Args:
        spill_dir: where the temporary directory of spilled arrays goes
            (default: the system's temporary directory).
        Others as :func:`xfdiff.engine.compare`.

    Returns:
        A :class:`Report`; ``meta["memory"]`` says what was spilled.
    """
    from .progress import Progress

    tol = as_tolerance(tolerance)
    prog = Progress(enabled=progress)
    torch_side = E._torch_side(pt_model, inputs)
    flax_side = E._flax_side(flax_model, inputs if flax_inputs is None else flax_inputs, False)
    _check_supported(reference, flax_side)
    env_findings = E._environment(pt_model, flax_model) if diagnose else []
    with tempfile.TemporaryDirectory(prefix="xfdiff-spill-", dir=spill_dir) as tmp:
        store = SpillStore(tmp)
        prog.step("capturing PyTorch (spilling to disk)")
        tt = torch_side.capture(sink=lambda rec: (store.spill_record(rec), trim_heap()))
        ref_bytes = store.nbytes
        prog.step("describing Flax")
        skeleton = flax_side.skeleton()
        al = E._align(tt, skeleton, mapping, torch_side, flax_side)
        prog.step("comparing as the port runs")
        run = _Run(tt, skeleton, al, tol, store)
        ev = _plain_run(flax_side, run, pt_model, flax_model)
        notes: list[str] = []
        if local and ev.rows:
            prog.step("teacher forcing")
            _localize(ev, flax_side, run, notes)
        else:
            L.assign_blame(ev.rows)
        meta = E._meta(tol, "torch", torch_side, flax_side, tt, ev.flax_trace, al, notes, local)
        meta["memory"] = {
            "mode": "bounded",
            "reference_bytes_spilled": ref_bytes,
            "port_bytes_spilled": store.nbytes - ref_bytes,
            "port_calls_kept": run.kept_calls,
            "sharded_values": run.sharded,
        }
        report = Report(
            layers=[r.layer for r in ev.rows],
            unmatched=al.unmatched,
            meta=meta,
            final=ev.final.layer if ev.final else None,
            findings=list(env_findings),
        )
        E._judge(ev, report, torch_side, prog)
        if diagnose:
            prog.step("diagnosing")
            report.findings += E._diagnose(ev, report)
        E._settle(report)
    prog.done()
    return report


def _plain_run(flax_side: Any, run: _Run, pt_model: Any, flax_model: Any) -> Evidence:
    """Run the port once, comparing each call as it returns; rows in the reference's order."""
    tf = flax_side.stream(run.on_call)
    kept = {r.flax.key: r.flax for r in run.rows}
    tf.records = [kept.get(rec.key, rec) for rec in tf.records]
    run.rows.sort(key=lambda r: r.torch.order)
    for i, row in enumerate(run.rows):
        row.layer.order = i
    ev = Evidence(run.tt, tf, run.al, run.rows, run.tol, "torch", torch_model=pt_model, flax_model=flax_model)
    ev.final = run.final
    return ev
