"""Capture adapters: one framework per file, each imported only when used.

Every adapter exposes a *side* object with::

    side.name          # "torch" or "flax" (the second argument's slot, Keras included)
    side.framework     # "torch", "linen", "nnx", "jax", "keras" (Keras 3), "tf_keras"
    side.capture(substitute=None) -> Trace

``substitute`` maps ``(canonical_path, call_index)`` to ``{leaf_key: array}``;
the adapter feeds those arrays to that call in place of its own inputs
(teacher forcing) and records what the call then returns.
"""

from __future__ import annotations

from typing import Any

Substitute = dict[tuple[str, int], dict[str, Any]]


def leaf_key(parts) -> str:
    """Join key-path components: ``("kwargs", "hidden_states")`` -> ``kwargs.hidden_states``."""
    return ".".join(str(p) for p in parts)
