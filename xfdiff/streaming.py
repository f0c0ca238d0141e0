"""Bounded memory: the spill store and the call-by-call port run of ``memory="bounded"``.

Holding every activation of both sides is what breaks first on a large model
(a 1B-parameter Llama at 2,048 tokens records about 11 GiB per side).
:func:`xfdiff.compare` runs the same stages in every mode (see
:mod:`xfdiff.runs`); in bounded mode:

1. The reference is captured with every recorded array written to a ``.npy``
   file in a temporary directory as soon as its call returns
   (:class:`SpillStore`); the records keep read-only memory maps. After each
   use the mapped pages are given back (``MADV_DONTNEED``), so resident
   memory does not grow with the model's depth.
2. A port that can run call by call (a linen or Hugging Face Flax port) is
   described without running it (``jax.eval_shape``): its calls, output
   shapes and parameters are enough to align the two models.
3. It then runs eagerly and each call is compared the moment it returns
   (:class:`StreamedRun`). A row keeps its statistics and the small
   ``error_detail`` summary; the port's full tensors are spilled only for
   flagged calls (not ``ok``), where the pitfall detectors may need them;
   other port records keep placeholders (shape and dtype only).
4. Teacher forcing runs the port again the same way, each call's inputs read
   from the spilled reference when that call runs.
5. A port value sharded over several JAX devices is reduced where it lives
   (:mod:`xfdiff.stats`); only flagged rows are ever gathered.

A port that cannot run call by call (NNX, functions marked with
:func:`xfdiff.tap`, a PyTorch port) is captured whole and compared as in full
mode, with only the reference spilled; ``meta["memory"]["notes"]`` says so.
The temporary directory is removed before ``compare`` returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .stats import is_float
from .stats.meet import to_host
from .trace import CallRecord, Trace

#: Arrays smaller than this (bytes) stay in memory instead of being spilled.
SMALL_BYTES = 1 << 16


class SpillStore:
    """``memory="bounded"``: arrays written to ``.npy`` files and read back as read-only memory maps.

    The store interface is described in :mod:`xfdiff.runs`.
    """

    bounded = True

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.count = 0
        self.nbytes = 0
        self.reference_bytes = 0
        self.kept_calls = 0
        self.notes: list[str] = []

    def put(self, a: Any) -> np.ndarray:
        """Write ``a`` to disk and return a memory map of it (small arrays are returned as is)."""
        a = np.asarray(to_host(a))  # a device value (a torch port on the device path) is read here
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

    def capture_reference(self, side: Any) -> Trace:
        """Capture the reference with each call's arrays spilled as soon as the call returns."""

        def sink(rec: CallRecord) -> None:
            self.spill_record(rec)
            trim_heap()

        if side.supports_sink:
            trace = side.capture(sink=sink)
        elif side.supports_streaming:
            trace = _stream_records(side, lambda rec: rec, sink)
        else:
            trace = side.capture()
            for rec in trace.records:
                sink(rec)
            self.notes.append(
                f"the {side.framework} reference cannot be captured call by call: its activations were held in "
                "memory during its capture, then spilled"
            )
        self.reference_bytes = self.nbytes
        return trace

    def keep(self, rec: CallRecord, full: bool) -> None:
        """Spill a flagged port call's arrays for the detectors; keep only shapes of the others."""
        from .capture._jax import shape_placeholder

        if full:
            self.kept_calls += 1
        for d in (rec.inputs, rec.outputs, rec.raw_inputs):
            for k, v in d.items():
                d[k] = self.put(v) if full else shape_placeholder(np.shape(v), v.dtype)

    def done_with(self, rec: CallRecord | None) -> None:
        release(rec)

    def after_call(self) -> None:
        trim_heap()

    def meta(self) -> dict:
        return {
            "mode": "bounded",
            "reference_bytes_spilled": self.reference_bytes,
            "port_bytes_spilled": self.nbytes - self.reference_bytes,
            "port_calls_kept": self.kept_calls,
            "notes": list(self.notes),
        }


@contextlib.contextmanager
def spill_store(spill_dir: str | None = None) -> Iterator[SpillStore]:
    """A :class:`SpillStore` in a temporary directory (under ``spill_dir``), removed on exit."""
    with tempfile.TemporaryDirectory(prefix="xfdiff-spill-", dir=spill_dir) as tmp:
        yield SpillStore(tmp)


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


class LiveRecord(CallRecord):
    """A port call as it returns; arrays sharded over several devices stay JAX arrays."""

    def float_outputs(self) -> dict[str, Any]:
        return {k: v for k, v in self.outputs.items() if is_float(v)}

    def float_inputs(self) -> dict[str, Any]:
        return {k: v for k, v in self.inputs.items() if is_float(v)}


class StreamedRun:
    """A port run call by call: described by ``side.skeleton()``, run by ``side.stream(on_call)``.

    Each call reaches ``on_call`` as a :class:`LiveRecord` while its values
    are alive; the store then keeps or drops them. The returned trace holds
    those records (see :mod:`xfdiff.runs` for the interface).
    """

    streams = True

    def __init__(self, side: Any, store: SpillStore):
        self.side, self.store = side, store
        self.sharded = 0

    def structure(self) -> Trace:
        return self.side.skeleton()

    def run(self, on_call: Callable[[CallRecord], None], substitute: Mapping | None = None) -> Trace:
        return _stream_records(self.side, self._host, on_call, substitute)

    def _host(self, rec: CallRecord) -> CallRecord:
        for d in (rec.inputs, rec.outputs, rec.raw_inputs):
            for k, v in d.items():
                if _is_sharded(v):
                    self.sharded += 1  # reduced where it lives; gathered only if its row is flagged
                else:
                    d[k] = np.asarray(v)  # zero-copy for a single-device CPU array
        return rec

    def meta(self) -> dict:
        return {"sharded_values": self.sharded}


def _stream_records(
    side: Any,
    convert: Callable[[CallRecord], CallRecord],
    on_call: Callable[[CallRecord], None],
    substitute: Mapping | None = None,
) -> Trace:
    """``side.stream`` with each call handed over as a record; the trace returned holds those records."""
    live: list[CallRecord] = []

    def each(path, idx, typ, method, order, ins, outs, raw) -> None:
        rec = LiveRecord(path=path, call_index=idx, module_type=typ, order=order, method=method)
        rec.inputs, rec.outputs, rec.raw_inputs = dict(ins), dict(outs), dict(raw)
        rec = convert(rec)
        live.append(rec)
        on_call(rec)

    trace = side.stream(each, substitute=substitute)
    by_key = {rec.key: rec for rec in live}
    trace.records = [by_key.get(rec.key, rec) for rec in trace.records]
    return trace
