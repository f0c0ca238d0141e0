"""Legal transforms between activation layouts of the two frameworks.

Before two arrays are compared, xfdiff tries the transforms a correct port may
legitimately apply (NCHW <-> NHWC, head split/merge, broadcast of a batch of
one, transposed trailing axes) and records which one made them line up: that
is itself evidence about the port.

A transform maps the *reference* array into the *port's* layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .trace import to_float64


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[np.ndarray], np.ndarray]  # reference layout -> port layout
    inverse: Callable[[np.ndarray], np.ndarray]  # port layout -> reference layout


IDENTITY = Transform("identity", lambda a: a, lambda a: a)


def _moveaxis(src: int, dst: int) -> Transform:
    name = "NCHW->NHWC" if (src, dst) == (1, -1) else "NHWC->NCHW"
    return Transform(name, lambda a: np.moveaxis(a, src, dst), lambda a: np.moveaxis(a, dst, src))


def candidates(ref_shape: tuple, port_shape: tuple) -> list[Transform]:
    """Transforms that turn an array of ``ref_shape`` into one of ``port_shape``."""
    ref_shape, port_shape = tuple(ref_shape), tuple(port_shape)
    out: list[Transform] = []
    if ref_shape == port_shape:
        out.append(IDENTITY)
    nd = len(ref_shape)
    if nd >= 3 and len(port_shape) == nd:
        if ref_shape[:1] + ref_shape[2:] + ref_shape[1:2] == port_shape:
            out.append(_moveaxis(1, -1))
        if ref_shape[:1] + ref_shape[-1:] + ref_shape[1:-1] == port_shape:
            out.append(_moveaxis(-1, 1))
    if nd >= 2 and len(port_shape) == nd and ref_shape[:-2] + ref_shape[-2:][::-1] == port_shape and ref_shape != port_shape:
        out.append(Transform("transpose_last2", lambda a: np.swapaxes(a, -1, -2), lambda a: np.swapaxes(a, -1, -2)))
    size_r, size_p = int(np.prod(ref_shape)), int(np.prod(port_shape))
    if size_r == size_p and ref_shape != port_shape:
        rs, ps = ref_shape, port_shape
        if len(rs) == len(ps) + 1 and rs[: len(ps) - 1] == ps[:-1]:
            out.append(Transform("merge_heads", lambda a: a.reshape(ps), lambda a: a.reshape(rs)))
        elif len(ps) == len(rs) + 1 and ps[: len(rs) - 1] == rs[:-1]:
            out.append(Transform("split_heads", lambda a: a.reshape(ps), lambda a: a.reshape(rs)))
        elif tuple(d for d in rs if d != 1) == tuple(d for d in ps if d != 1):
            out.append(Transform("squeeze", lambda a: a.reshape(ps), lambda a: a.reshape(rs)))
        # Heads merged in one framework as (B, T, H, D) and kept as (B, H, T, D) in the other.
        if len(rs) == 4 and len(ps) == 3 and rs[0] == ps[0] and rs[2] == ps[1] and rs[1] * rs[3] == ps[2]:
            out.append(Transform(
                "BHTD->BT(HD)",
                lambda a: np.swapaxes(a, 1, 2).reshape(ps),
                lambda a: np.swapaxes(a.reshape(rs[0], rs[2], rs[1], rs[3]), 1, 2),
            ))
    if len(ref_shape) == len(port_shape) and ref_shape != port_shape:
        try:
            b = np.broadcast_shapes(ref_shape, port_shape)
        except ValueError:
            b = None
        if b == port_shape:
            out.append(Transform("broadcast", lambda a: np.broadcast_to(a, port_shape), lambda a: a[tuple(slice(0, n) for n in ref_shape)]))
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = to_float64(a), to_float64(b)
    fin = np.isfinite(a) & np.isfinite(b)
    den = float(np.linalg.norm(a[fin])) or 1.0
    return float(np.linalg.norm(a[fin] - b[fin])) / den


def best_transform(ref: np.ndarray, port: np.ndarray) -> tuple[Transform | None, float]:
    """The transform that best maps ``ref`` onto ``port``, and its relative error.

    Identity wins unless another transform reduces the error tenfold, so a
    buggy port with equal shapes is not "explained" by a lucky permutation.
    Returns ``(None, inf)`` when no transform fits the shapes.
    """
    cands = candidates(ref.shape, port.shape)
    if not cands:
        return None, float("inf")
    scored = [(t, _rel(t.forward(ref), port)) for t in cands]
    best_t, best_e = min(scored, key=lambda te: te[1])
    ident = next((e for t, e in scored if t is IDENTITY), None)
    if ident is not None and best_t is not IDENTITY and not best_e * 10 < ident:
        return IDENTITY, ident
    return best_t, best_e


def by_name(name: str, ref_shape: tuple, port_shape: tuple) -> Transform | None:
    for t in candidates(ref_shape, port_shape):
        if t.name == name:
            return t
    return None
