"""Capture adapters: one framework per file, each imported only when used.

- ``base.py``: the interface every adapter's *side* provides (:class:`CaptureSide`,
  :class:`StreamingSide`, :class:`SinkSide`) and the :data:`Substitute` format of teacher forcing.
- ``registry.py``: which adapter takes which model (:func:`side_for`); how to add a framework.
- ``from_torch.py``, ``from_linen.py``, ``from_nnx.py``, ``from_jaxfn.py``, ``from_keras.py``: the adapters.
- ``_common.py`` (framework-free), ``_jax.py``, ``_torch.py``, ``jax_record.py``, ``_linen_calls.py``:
  helpers the adapters share; no adapter imports another.
"""

from __future__ import annotations

from ._common import is_output_leaf, leaf_key, split_substitute
from .base import Substitute

__all__ = ["Substitute", "is_output_leaf", "leaf_key", "split_substitute"]
