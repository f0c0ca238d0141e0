"""How the port's calls reach the comparison, and where the reference's activations stay.

:func:`xfdiff.compare` runs the same stages in every mode: the reference is
captured into a *store*, the port's calls are handed one at a time to an
``on_call`` function (the plain run, then the teacher-forced run), and each
call is paired and measured as it arrives. ``memory=`` only picks the store:

- ``"full"``: :class:`MemoryStore`, activations stay in memory as captured;
  the port is captured whole (jitted where it can be) and its calls are then
  handed over in order, and measured together on a small thread pool.
- ``"bounded"``: :class:`xfdiff.streaming.SpillStore`, the reference spilled
  to disk as it is captured; a port that can run call by call
  (:class:`xfdiff.streaming.StreamedRun`) is measured as each call returns and
  only flagged calls keep their tensors.

A store has ``bounded``, ``capture_reference(side)``, ``keep(rec, full)`` (a
port call is done with: keep its tensors or not), ``done_with(rec)`` (a
reference call is not needed again soon), ``after_call()`` and ``meta()``.
A port run has ``structure()`` (the port's calls and parameters, enough to
align) and ``run(on_call, substitute=None)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .stats import parallel_map
from .stats.common import MIN_FAST
from .trace import CallRecord, Trace

OnCall = Callable[[CallRecord], None]


class MemoryStore:
    """``memory="full"``: every activation stays in memory as captured."""

    bounded = False

    def capture_reference(self, side: Any) -> Trace:
        return side.capture()

    def keep(self, rec: CallRecord, full: bool) -> None:
        """Nothing to do: the record keeps its arrays."""

    def done_with(self, rec: CallRecord | None) -> None:
        """Nothing to do: the arrays are in memory already."""

    def after_call(self) -> None:
        """Nothing to do."""

    def meta(self) -> dict | None:
        return None


@contextlib.contextmanager
def open_store(memory: str, spill_dir: str | None = None) -> Iterator[Any]:
    """The store for ``memory=``; a spill store's directory is removed on exit."""
    if memory == "full":
        yield MemoryStore()
        return
    from .streaming import spill_store

    with spill_store(spill_dir) as store:
        yield store


class CapturedRun:
    """The port captured whole, then handed to ``on_call`` call by call in completion order."""

    streams = False

    def __init__(self, side: Any):
        self.side = side
        self._plain: Trace | None = None

    def structure(self) -> Trace:
        self._plain = self.side.capture()
        return self._plain

    def run(self, on_call: OnCall, substitute: Mapping | None = None) -> Trace:
        if substitute is None and self._plain is not None:
            trace, self._plain = self._plain, None  # the plain run was captured by structure()
        else:
            trace = self.side.capture(substitute=_materialize(substitute))
        for rec in trace.records:
            on_call(rec)
        return trace

    def meta(self) -> dict:
        return {}


def port_run(side: Any, store: Any) -> Any:
    """The port run for ``store``: call by call where the store is bounded and the side can stream."""
    if store.bounded and side.supports_streaming:
        from .streaming import StreamedRun

        return StreamedRun(side, store)
    run = CapturedRun(side)
    if store.bounded:
        store.notes.append(
            f"the {side.framework} port cannot run call by call: it was captured whole and its activations "
            "were held in memory once (the reference's were spilled)"
        )
    return run


class CallQueue:
    """Work on each port call as it arrives.

    ``work(rec)`` returns whether the call's tensors must be kept (the
    detectors may read them). With a bounded store each call is worked on at
    once and then handed back to the store (spilled or dropped); otherwise the
    calls wait until :meth:`drain` and are worked on together on a small
    thread pool (each row's measurement is mostly a compiled pass).
    """

    def __init__(self, work: Callable[[CallRecord], bool], store: Any):
        self.work, self.store = work, store
        self.pending: list[CallRecord] = []

    def on_call(self, rec: CallRecord) -> None:
        self.pending.append(rec)
        if self.store.bounded:
            self.drain()

    def drain(self) -> None:
        batch, self.pending = self.pending, []
        flags = parallel_map(self.work, batch) if _worth_threads(batch) else [self.work(rec) for rec in batch]
        for rec, full in zip(batch, flags, strict=True):
            self.store.keep(rec, full)
            self.store.after_call()


def _worth_threads(batch: list[CallRecord]) -> bool:
    """Whether a batch's rows are large enough for the thread pool.

    A small row is measured in one short compiled call; handing it to a
    thread costs more than measuring it (a deep narrow model: ~1 ms of
    waiting per row), so batches of small rows are measured in this thread.
    """
    if len(batch) < 8:
        return False
    total = sum(math.prod(getattr(v, "shape", ())) for rec in batch for v in rec.outputs.values())
    return total >= MIN_FAST * len(batch)


def _materialize(substitute: Mapping | None) -> dict | None:
    """Teacher-forcing inputs as plain dicts of arrays (a whole-model capture converts them all at once)."""
    if substitute is None:
        return None
    return {key: {leaf: leaves[leaf] for leaf in leaves} for key, leaves in substitute.items()}
