"""The framework-free record of one forward pass.

A :class:`Trace` holds one :class:`CallRecord` per module call, in completion
order (a child finishes before its parent). Records carry numpy arrays only;
framework objects never leave the capture modules.

Canonical paths are dotted with integer components as digits
(``model.layers.3.self_attn``); the root module is ``""``. A method other than
``__call__`` is written ``embed.attend``.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .stats import is_float
from .stats.dispatch import kind_of

ROOT = ""

_FLAX_INDEX = re.compile(r"^(?P<name>.*?)_(?P<idx>\d+)$")


def canonical_path(parts: tuple | list | str, method: str | None = None) -> str:
    """Join path components into a canonical dotted path.

    Flax names such as ``layers_3`` become ``layers.3`` and ``/`` separators
    become dots. A method other than ``__call__`` is appended as ``.method``.

    >>> canonical_path(("encoder", "layers_3", "fc1"))
    'encoder.layers.3.fc1'
    >>> canonical_path("embed", method="attend")
    'embed.attend'
    """
    key = parts if isinstance(parts, (str, tuple)) else tuple(parts)
    try:
        return _canonical_path(key, method)
    except TypeError:  # an unhashable component
        return _join(key, method)


@functools.lru_cache(maxsize=1 << 16)
def _canonical_path(parts: tuple | str, method: str | None) -> str:
    return _join(parts, method)


def _join(parts: tuple | str, method: str | None) -> str:
    if isinstance(parts, str):
        parts = [p for p in re.split(r"[./]", parts) if p]
    out: list[str] = []
    for p in parts:
        p = str(p)
        m = _FLAX_INDEX.match(p)
        if m and m.group("name") and not m.group("name")[0].isupper():
            out.extend([m.group("name"), m.group("idx")])
        else:
            out.append(p)
    path = ".".join(out)
    if method and method != "__call__":
        path = f"{path}.{method}" if path else method
    return path


def user_path(parts: tuple | list | str) -> str:
    """Join path components as the user wrote them: ``/`` becomes ``.``, names are kept.

    For names a user chose (``xfdiff.tap`` paths, keys of a function's
    parameter tree): ``ln_1`` stays ``ln_1``; list items of a tree are already
    digits. :func:`canonical_path` is for framework-made names (linen's
    ``layers_3`` for a list attribute).

    >>> user_path("blocks.0.ln_1")
    'blocks.0.ln_1'
    """
    if isinstance(parts, str):
        parts = [p for p in re.split(r"[./]", parts) if p]
    return ".".join(str(p) for p in parts)


def display_path(path: str | None) -> str:
    """Human label for a canonical path (the root prints as ``(root)``)."""
    if path is None:
        return "—"
    return path if path else "(root)"


def parent_path(path: str) -> str | None:
    if path == ROOT:
        return None
    return path.rsplit(".", 1)[0] if "." in path else ROOT


def call_key(path: str, call_index: int) -> str:
    """``path`` for the first call, ``path#k`` for later ones."""
    return path if call_index == 0 else f"{path}#{call_index}"


@dataclass
class CallRecord:
    """One module call.

    ``inputs`` / ``outputs`` map key paths (``args.0``, ``kwargs.hidden_states``,
    ``out.last_hidden_state``) to numpy arrays; non-array leaves are dropped.
    """

    path: str
    call_index: int
    module_type: str
    order: int = 0
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    method: str = "__call__"
    # Under teacher forcing: the call's own inputs before they were replaced.
    raw_inputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return call_key(self.path, self.call_index)

    @property
    def depth(self) -> int:
        return 0 if self.path == ROOT else self.path.count(".") + 1

    def float_outputs(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.outputs.items() if is_float(v)}

    def float_inputs(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.inputs.items() if is_float(v)}


@dataclass
class Trace:
    """All calls of one forward pass on one side.

    ``params`` maps a module's canonical path to the parameters it owns
    directly (not its children's), by local name; ``param_tokens`` holds
    their :class:`ParamToken` where the framework can say when values
    change. ``config`` holds scalar settings read off each module (epsilon,
    approximate, training, ...).
    """

    side: str  # "torch" or "flax"
    framework: str  # "torch", "linen", "nnx", "jax"
    records: list[CallRecord] = field(default_factory=list)
    params: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    param_tokens: dict[str, dict[str, ParamToken]] = field(default_factory=dict)
    module_types: dict[str, str] = field(default_factory=dict)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def by_key(self) -> dict[str, CallRecord]:
        return {r.key: r for r in self.records}

    def calls_of(self, path: str) -> list[CallRecord]:
        """Calls of ``path`` in completion order (indexed; rebuilt when ``records`` changes)."""
        key = (id(self.records), len(self.records))
        if getattr(self, "_index_key", None) != key:
            index: dict[str, list[CallRecord]] = {}
            for r in self.records:
                index.setdefault(r.path, []).append(r)
            self._index, self._index_key = index, key
        return list(self._index.get(path, ()))

    def paths(self) -> list[str]:
        """Distinct module paths in order of first completion."""
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r.path, None)
        return list(seen)

    def root(self) -> CallRecord | None:
        roots = [r for r in self.records if r.path == ROOT]
        return roots[-1] if roots else None


class ParamToken:
    """The identity of a parameter's current values, without holding the parameter.

    ``key`` names the framework object and its version (a torch tensor's
    in-place write counter; a JAX array never changes). While the object is
    alive, an equal key means equal values, so whatever was computed from
    them (fingerprints, an alignment) can be reused: see :func:`derived`.
    Arrays without a version (numpy) get no token.
    """

    __slots__ = ("key", "_ref")

    def __init__(self, key: tuple, obj: Any):
        self.key = key
        self._ref = weakref.ref(obj)

    def alive(self) -> bool:
        return self._ref() is not None


_DERIVED: dict[tuple, tuple[ParamToken, Any]] = {}
_DERIVED_MAX = 1 << 16


def derived(token: ParamToken | None, what: str, make: Callable[[], Any]) -> Any:
    """``make()``, remembered per ``(what, token)`` while the token's object lives."""
    if token is None:
        return make()
    k = (what, *token.key)
    hit = _DERIVED.get(k)
    if hit is not None and hit[0].alive():
        return hit[1]
    value = make()
    if len(_DERIVED) >= _DERIVED_MAX:  # objects that died leave entries behind: drop them
        for key in [key for key, (tok, _) in _DERIVED.items() if not tok.alive()]:
            del _DERIVED[key]
    if len(_DERIVED) < _DERIVED_MAX:
        _DERIVED[k] = (token, value)
    return value


def to_host(rec: CallRecord) -> None:
    """Replace the device values a capture left in ``rec`` (torch tensors, ``jax.Array``) with host numpy
    copies, in place.

    A capture on an accelerator keeps activations where they were computed
    (statistics run there); a record whose values are read on the host (an
    out-of-tolerance row the detectors examine) is moved once, through
    :func:`xfdiff.stats.meet.to_host`, which counts what it moves.
    """
    for name in ("inputs", "outputs", "raw_inputs"):
        leaves = getattr(rec, name, None)
        if not leaves or all(kind_of(v) == "numpy" for v in leaves.values()):
            continue
        from .stats.meet import to_host as host_copy

        setattr(rec, name, {k: host_copy(v) for k, v in leaves.items()})


def trace_to_host(trace: Trace) -> None:
    """:func:`to_host` for every record of a trace captured on the device (nothing to do otherwise)."""
    if trace.meta.get("on_device"):
        for rec in trace.records:
            to_host(rec)
        trace.meta["on_device"] = False
