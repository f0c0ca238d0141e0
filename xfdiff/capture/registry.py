"""Which adapter captures a given model: a table of adapters and the one function that picks.

Design note. Each entry names the adapter module, the packages that must
already be imported for it to apply, and the slot of ``xfdiff.compare`` it
fills. :func:`side_for` walks the table in order and imports an adapter
module only when every package it requires is already in ``sys.modules``: a
model of a framework can only exist once that framework is imported, so
picking an adapter never imports a framework the user has not imported
(treescope registers its per-framework support the same way).

Every adapter module provides two functions::

    def accepts(model) -> bool:          # cheap: isinstance / MRO names, no imports, never raises
    def make_side(model, inputs, *, jit=True) -> CaptureSide   # see xfdiff.capture.base

Adding a framework (say TensorFlow/Keras) is one adapter file,
``capture/from_keras.py`` with ``accepts``, ``make_side`` and a side class
that satisfies :class:`~xfdiff.capture.base.CaptureSide` (setting
``supports_streaming`` / ``supports_sink``), plus one :class:`Adapter` line in
``ADAPTERS`` below, before the catch-all ``jaxfn`` entry. Adapters import
helpers from ``_common`` / ``_jax`` / ``_torch``, never from each other.
``tests/test_capture_registry.py`` checks every entry against the protocol.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import ModelTypeError
from .base import CaptureSide

REFERENCE, PORT = "reference", "port"


@dataclass(frozen=True)
class Adapter:
    """One capture adapter.

    Attributes:
        name: short name (``"linen"``).
        module: the adapter module, imported only when it may apply.
        requires: top-level packages that must already be imported for the adapter to apply.
        slots: which arguments of ``xfdiff.compare`` it can capture: ``"reference"``
            (``pt_model``), ``"port"`` (the second model), or both.
        accepts_text: what it accepts, as the unsupported-model message lists it.
    """

    name: str
    module: str
    requires: tuple[str, ...]
    slots: tuple[str, ...]
    accepts_text: str

    def available(self) -> bool:
        return all(r in sys.modules for r in self.requires)

    def load(self):
        return importlib.import_module(self.module)

    def accepts(self, model: Any) -> bool:
        """True when this adapter captures ``model``; imports the adapter only if its framework is loaded."""
        if not self.available():
            return False
        try:
            return bool(self.load().accepts(model))
        except ImportError:  # the framework is present but a part the adapter needs is not
            return False


# Order matters: the first adapter that accepts a model captures it; jaxfn (any callable) comes last.
ADAPTERS: tuple[Adapter, ...] = (
    Adapter("torch", "xfdiff.capture.from_torch", ("torch",), (REFERENCE,), "a torch.nn.Module"),
    Adapter(
        "linen",
        "xfdiff.capture.from_linen",
        ("flax",),
        (PORT,),
        "a Hugging Face FlaxPreTrainedModel, a (linen_module, variables) tuple",
    ),
    Adapter("nnx", "xfdiff.capture.from_nnx", ("flax",), (PORT,), "an nnx.Module"),
    # accepts() itself checks that keras or tf_keras is loaded (either may hold the model)
    Adapter("keras", "xfdiff.capture.from_keras", (), (PORT,), "a Keras 3 / tf-keras model (Hugging Face TF* classes)"),
    Adapter(
        "jaxfn",
        "xfdiff.capture.from_jaxfn",
        ("jax",),
        (PORT,),
        "a function whose values are marked with xfdiff.tap() (alone or as (fn, params))",
    ),
)


def adapter_for(model: Any, slot: str) -> Adapter | None:
    """The first adapter for ``slot`` that accepts ``model``, or None."""
    for ad in ADAPTERS:
        if slot in ad.slots and ad.accepts(model):
            return ad
    return None


def side_for(model: Any, inputs: Any, slot: str = PORT, *, jit: bool = True) -> CaptureSide:
    """The capture side for ``model`` in ``slot`` (``"reference"``: ``pt_model``; ``"port"``: the second model).

    Raises:
        ModelTypeError: no adapter takes the model in that slot; the message
        says what is accepted, and when the model fits the other slot, that
        the two models were passed in the wrong order.
    """
    ad = adapter_for(model, slot)
    if ad is not None:
        return ad.load().make_side(model, inputs, jit=jit)
    other = adapter_for(model, PORT if slot == REFERENCE else REFERENCE)
    kind = type(model).__name__
    if slot == PORT:
        if other is not None:
            raise ModelTypeError(
                f"flax_model is {other.accepts_text} ({kind}). Pass the PyTorch model first and the Flax model "
                "second: xfdiff.compare(pt_model, flax_model, inputs)."
            )
        kinds = [a.accepts_text for a in ADAPTERS if PORT in a.slots]
        raise ModelTypeError(f"Unsupported flax_model of type {kind}: pass {', '.join(kinds[:-1])}, or {kinds[-1]}.")
    if other is not None and other.name == "keras":
        hint = (
            " It is a TensorFlow/Keras model: pass the PyTorch model first and the Keras model second, "
            "xfdiff.compare(pt_model, keras_model, inputs), with reference='keras' when the Keras model is the reference."
        )
    elif other is not None and other.name != "jaxfn":
        hint = f" It looks like the port ({other.name}): pass the PyTorch model first and the Flax model second."
    else:
        hint = " Pass the PyTorch model itself (not its state_dict or a function)."
    raise ModelTypeError(f"pt_model must be a torch.nn.Module, got {kind}.{hint}")
