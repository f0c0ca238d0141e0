"""The interface between the comparison pipeline and a capture adapter.

A *side* wraps one model and its inputs. The pipeline (``engine``,
``localize``, ``streaming``) uses nothing of a side but what is written here;
an adapter that provides it works everywhere a side is accepted. Adapters
do not subclass anything: :class:`CaptureSide` is a ``typing.Protocol``,
checked by static type checkers and, at run time, by
:func:`xfdiff.capture.registry.check_side` in the tests.

Optional capabilities are flags every side sets, never probed with
``hasattr``:

- ``supports_streaming``: the side also implements :class:`StreamingSide`
  (``skeleton()`` and ``stream()``), which ``memory="bounded"`` needs for
  the port.
- ``supports_sink``: ``capture()`` accepts ``sink=`` (:class:`SinkSide`),
  which ``memory="bounded"`` needs for the reference.

Example (a side is made by the registry, not by hand)::

    side = registry.side_for(model, inputs, slot="port")
    trace = side.capture()                          # every call, inputs and outputs
    forced = side.capture(substitute={("fc1", 0): {"args.0": x_ref}})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..trace import CallRecord, Trace

Substitute = dict[tuple[str, int], dict[str, Any]]
"""Teacher forcing: ``{(canonical_path, call_index): {input leaf key: array}}``.

The side feeds those arrays to that call in place of its own inputs and
records what the call then returns; it keeps the inputs the call would have
had in ``CallRecord.raw_inputs``. Leaf keys are ``args.0``, ``kwargs.mask``,
``args.1.0`` (see :func:`xfdiff.capture.leaf_key`)."""

OnCall = Callable[[str, int, str, str, int, Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], None]
"""``on_call(path, call_index, module_type, method, order, inputs, outputs, raw_inputs)``,
called by :meth:`StreamingSide.stream` as each call returns, with live arrays
that are dropped once it returns."""

Sink = Callable[["CallRecord"], None]
"""Called with each record as its call completes; it may move the record's arrays elsewhere."""


@runtime_checkable
class CaptureSide(Protocol):
    """One model and its inputs, ready to be run and recorded.

    Attributes:
        name: which argument of ``xfdiff.compare`` this side is: ``"torch"``
            (the first, ``pt_model``) or ``"flax"`` (the second, the port).
            Records and reports use these two slot names whatever the framework.
        framework: the framework that runs the model (``"torch"``, ``"linen"``,
            ``"nnx"``, ``"jax"``, ...); shown in the report's meta.
        supports_streaming: True when the side is also a :class:`StreamingSide`.
        supports_sink: True when ``capture`` takes ``sink=`` (:class:`SinkSide`).
    """

    name: str
    framework: str
    supports_streaming: bool
    supports_sink: bool

    def describe(self) -> str:
        """A short label of the model for messages and the report (usually its class name)."""
        ...

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True) -> Trace:
        """Run the model once and record every call in completion order.

        Args:
            substitute: teacher-forcing inputs (see :data:`Substitute`).
            record_outputs: record output leaves (False: inputs only).

        Returns:
            A :class:`~xfdiff.trace.Trace` with records, module types, configs,
            parameters (and their tokens) and meta.

        Raises:
            CaptureError: the model's forward raised (the message names the
            model and says what to check), or xfdiff itself failed
            (:class:`~xfdiff.errors.InternalError`, which says so). The
            user's model is left as it was in both cases.
        """
        ...


@runtime_checkable
class StreamingSide(CaptureSide, Protocol):
    """A side that can describe its calls without running them and hand out values one call at a time."""

    def skeleton(self) -> Trace:
        """Calls, output shapes and parameters without computing the forward (placeholder arrays)."""
        ...

    def stream(self, on_call: OnCall, substitute: Substitute | None = None) -> Trace:
        """Run once, handing each call to ``on_call`` as it returns; the returned trace holds no arrays."""
        ...


@runtime_checkable
class SinkSide(CaptureSide, Protocol):
    """A side whose ``capture`` can hand each finished record to a sink (bounded memory)."""

    def capture(
        self, substitute: Substitute | None = None, record_outputs: bool = True, sink: Sink | None = None
    ) -> Trace: ...
