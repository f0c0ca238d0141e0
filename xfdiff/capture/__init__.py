"""Capture adapters: one framework per file, each imported only when used.

Every adapter exposes a *side* object with::

    side.name          # "torch" or "flax"
    side.framework     # "torch", "linen", "nnx", "jax"
    side.capture(substitute=None) -> Trace

``substitute`` maps ``(canonical_path, call_index)`` to ``{leaf_key: array}``;
the adapter feeds those arrays to that call in place of its own inputs
(teacher forcing) and records what the call then returns. Output leaves
(keys ``out...``) replace what the call returns, so everything downstream
sees the given values (splicing, :mod:`xfdiff.splice`).
"""

from __future__ import annotations

from typing import Any

Substitute = dict[tuple[str, int], dict[str, Any]]


def leaf_key(parts) -> str:
    """Join key-path components: ``("kwargs", "hidden_states")`` -> ``kwargs.hidden_states``."""
    return ".".join(str(p) for p in parts)


def split_substitute(substitute: Substitute | None) -> tuple[Substitute, Substitute]:
    """``(input substitutions, output substitutions)``: output leaves are keyed ``out`` or ``out.*``."""
    ins: Substitute = {}
    outs: Substitute = {}
    for key, leaves in (substitute or {}).items():
        i = {k: v for k, v in leaves.items() if not is_output_leaf(k)}
        o = {k: v for k, v in leaves.items() if is_output_leaf(k)}
        if i:
            ins[key] = i
        if o:
            outs[key] = o
    return ins, outs


def is_output_leaf(key: str) -> bool:
    """True for a substitution key that names an output leaf (``out``, ``out.0`` ...)."""
    return key == "out" or key.startswith("out.")
