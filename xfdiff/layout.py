"""Legal transforms between the layouts of the two frameworks.

Before two activations are compared, xfdiff tries the transforms a correct
port may legitimately apply and records which one made them line up: that is
itself evidence about the port. A transform maps the *reference* array into
the *port's* layout. The activation transforms:

============================  =============================================
``identity``                   same layout
``NCHW->NHWC`` / back          channels moved last (4-D; ``NCDHW`` for 5-D)
``transpose_last2``            the two trailing axes swapped (3-D channels too)
``split_heads`` / ``merge_heads``   ``(B, T, H*D)`` <-> ``(B, T, H, D)``
``BHTD->BT(HD)`` / back        heads kept first on one side, merged on the other
``BHTD<->BTHD``                heads axis before or after the time axis
``merge_leading`` / ``split_leading``  ``(B, T, H)`` <-> ``(B*T, H)``
``squeeze``                    only axes of size 1 differ
``broadcast`` / ``unbroadcast``   ``(1, S, H)`` or ``(S, H)`` <-> ``(B, S, H)``
``flatten(NCHW->NHWC)`` / back  a flattened feature map in the other order
============================  =============================================

When shapes agree (``C == H == W``, square attention, ...) several transforms
fit; the values decide (:func:`best_transform`). Parameters have their own
legal changes (``(out, in)`` vs ``(in, out)``, ``OIHW`` vs ``HWIO``, heads
split in the kernel): :func:`param_transform` names the one that maps a
reference parameter onto the port's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import stats
from .stats.meet import numel, to_host


@dataclass(frozen=True)
class Transform:
    """A named layout change: ``forward`` reference -> port, ``inverse`` port -> reference.

    ``valid(ref)`` says whether the change loses nothing for this reference
    array (``unbroadcast`` drops copies that must be equal). ``on_device``:
    ``forward`` and ``inverse`` also take torch tensors and JAX arrays and
    leave them where they are (reshapes, axis moves, broadcasts; an
    unbroadcast's check and flatten orders read numpy).
    """

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]
    valid: Callable[[np.ndarray], bool] | None = None
    on_device: bool = False


IDENTITY = Transform("identity", lambda a: a, lambda a: a, on_device=True)


def _reshape(name: str, rs: tuple, ps: tuple) -> Transform:
    return Transform(name, lambda a: a.reshape(ps), lambda a: a.reshape(rs), on_device=True)


def _moveaxis(a: Any, src: int, dst: int) -> Any:
    """``np.moveaxis`` for numpy, torch and JAX arrays alike (a view where the framework gives one)."""
    order = list(range(a.ndim))
    order.insert(dst % a.ndim, order.pop(src % a.ndim))
    return a.permute(order) if stats.kind_of(a) == "torch" else a.transpose(order)


def _broadcast_to(a: Any, shape: tuple) -> Any:
    """``np.broadcast_to`` for numpy, torch and JAX arrays alike (torch: a view, no copy)."""
    kind = stats.kind_of(a)
    if kind == "torch":
        return a.expand(shape)
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.broadcast_to(a, shape)
    return np.broadcast_to(a, shape)


def _axis_move(name: str, forward: Callable[[Any], Any], inverse: Callable[[Any], Any]) -> Transform:
    return Transform(name, forward, inverse, on_device=True)


def _channels(rs: tuple, ps: tuple) -> list[Transform]:
    first, last = {4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}[len(rs)]
    out = []
    if rs[:1] + rs[2:] + rs[1:2] == ps:
        out.append(_axis_move(f"{first}->{last}", lambda a: _moveaxis(a, 1, -1), lambda a: _moveaxis(a, -1, 1)))
    if rs[:1] + rs[-1:] + rs[1:-1] == ps:
        out.append(_axis_move(f"{last}->{first}", lambda a: _moveaxis(a, -1, 1), lambda a: _moveaxis(a, 1, -1)))
    return out


def _axis_moves(rs: tuple, ps: tuple) -> list[Transform]:
    nd, out = len(rs), []
    if len(ps) != nd:
        return out
    if nd in (4, 5):
        out += _channels(rs, ps)
    if nd >= 2 and rs[:-2] + rs[-2:][::-1] == ps and (rs != ps or rs[-1] == rs[-2]):
        out.append(_axis_move("transpose_last2", lambda a: a.swapaxes(-1, -2), lambda a: a.swapaxes(-1, -2)))
    if nd == 4 and (rs[0], rs[2], rs[1], rs[3]) == ps and (rs != ps or rs[1] == rs[2]):
        out.append(_axis_move("BHTD<->BTHD", lambda a: a.swapaxes(1, 2), lambda a: a.swapaxes(1, 2)))
    return out


def _reshapes(rs: tuple, ps: tuple) -> list[Transform]:
    out: list[Transform] = []
    if rs == ps or int(np.prod(rs)) != int(np.prod(ps)):
        return out
    if tuple(d for d in rs if d != 1) == tuple(d for d in ps if d != 1):
        out.append(_reshape("squeeze", rs, ps))
    elif len(rs) == len(ps) + 1 and rs[: len(ps) - 1] == ps[:-1]:
        out.append(_reshape("merge_heads", rs, ps))
    elif len(ps) == len(rs) + 1 and ps[: len(rs) - 1] == rs[:-1]:
        out.append(_reshape("split_heads", rs, ps))
    elif rs[-1:] == ps[-1:] and len(rs) > len(ps):
        out.append(_reshape("merge_leading", rs, ps))
    elif rs[-1:] == ps[-1:] and len(ps) > len(rs):
        out.append(_reshape("split_leading", rs, ps))
    if len(rs) == 4 and len(ps) == 3 and rs[0] == ps[0] and rs[2] == ps[1] and rs[1] * rs[3] == ps[2]:
        out.append(
            _axis_move(
                "BHTD->BT(HD)",
                lambda a: a.swapaxes(1, 2).reshape(ps),
                lambda a: a.reshape(rs[0], rs[2], rs[1], rs[3]).swapaxes(1, 2),
            )
        )
    if len(rs) == 3 and len(ps) == 4 and rs[0] == ps[0] and rs[1] == ps[2] and ps[1] * ps[3] == rs[2]:
        out.append(
            _axis_move(
                "BT(HD)->BHTD",
                lambda a: a.reshape(ps[0], ps[2], ps[1], ps[3]).swapaxes(1, 2),
                lambda a: a.swapaxes(1, 2).reshape(rs),
            )
        )
    return out


def _leading_broadcasts(rs: tuple, ps: tuple) -> list[Transform]:
    """One side lacks leading axes the other repeats over: ``(S, H)`` <-> ``(B, S, H)``."""
    if len(rs) < len(ps) and ps[len(ps) - len(rs) :] == rs:
        k = len(ps) - len(rs)
        return [Transform("broadcast", lambda a: _broadcast_to(a, ps), lambda a: a[(0,) * k], on_device=True)]
    if len(ps) < len(rs) and rs[len(rs) - len(ps) :] == ps:
        k = len(rs) - len(ps)
        return [
            Transform(
                "unbroadcast",
                lambda a: a[(0,) * k],
                lambda a: np.broadcast_to(a, rs),
                valid=lambda a: bool(np.array_equal(np.broadcast_to(a[(0,) * k], a.shape), a, equal_nan=True)),
            )
        ]
    return []


def _broadcasts(rs: tuple, ps: tuple) -> list[Transform]:
    if len(rs) != len(ps):
        return _leading_broadcasts(rs, ps)
    if rs == ps:
        return []
    if all(r == p or r == 1 for r, p in zip(rs, ps, strict=True)):
        return [
            Transform(
                "broadcast", lambda a: _broadcast_to(a, ps), lambda a: a[tuple(slice(0, n) for n in rs)], on_device=True
            )
        ]
    if all(r == p or p == 1 for r, p in zip(rs, ps, strict=True)):
        first = tuple(slice(0, 1) if p == 1 and r != 1 else slice(None) for r, p in zip(rs, ps, strict=True))
        return [
            Transform(
                "unbroadcast",
                lambda a: a[first],
                lambda a: np.broadcast_to(a, rs),
                valid=lambda a: bool(np.array_equal(np.broadcast_to(a[first], a.shape), a, equal_nan=True)),
            )
        ]
    return []


def _flatten_orders(rs: tuple, ps: tuple) -> list[Transform]:
    """A feature map flattened before a dense layer: ``C*H*W`` in one order, ``H*W*C`` in the other.

    Both orders are a transpose of a ``(C, H*W)`` block; different ``C, H``
    can give the same permutation, which is kept once (largest ``H`` names it).
    """
    if len(rs) != 2 or rs != ps:
        return []
    n, k = rs
    out, seen = [], set()
    for h in range(int(np.sqrt(k)), 1, -1):
        c = k // (h * h)
        if c < 2 or c * h * h != k:
            continue
        for name, blocks in (
            (f"flatten(NCHW->NHWC)[C={c},H=W={h}]", (c, h * h)),
            (f"flatten(NHWC->NCHW)[C={c},H=W={h}]", (h * h, c)),
        ):
            if blocks in seen:
                continue
            seen.add(blocks)
            out.append(
                Transform(
                    name,
                    lambda a, b=blocks: np.swapaxes(a.reshape(n, *b), 1, 2).reshape(a.shape),
                    lambda a, b=blocks: np.swapaxes(a.reshape(n, b[1], b[0]), 1, 2).reshape(a.shape),
                )
            )
    return out


def candidates(ref_shape: tuple, port_shape: tuple) -> list[Transform]:
    """Transforms that turn an array of ``ref_shape`` into one of ``port_shape``.

    >>> [t.name for t in candidates((2, 8, 4, 4), (2, 4, 4, 8))]
    ['NCHW->NHWC']
    >>> [t.name for t in candidates((2, 5, 12), (2, 5, 3, 4))]
    ['split_heads']
    """
    return list(_candidates(tuple(ref_shape), tuple(port_shape)))


@functools.lru_cache(maxsize=4096)
def _candidates(ref_shape: tuple, port_shape: tuple) -> tuple[Transform, ...]:
    """:func:`candidates`, once per pair of shapes (a deep model repeats a few shapes hundreds of times)."""
    rs, ps = tuple(int(d) for d in ref_shape), tuple(int(d) for d in port_shape)
    out = [IDENTITY] if rs == ps else []
    out += _axis_moves(rs, ps) + _reshapes(rs, ps) + _broadcasts(rs, ps) + _flatten_orders(rs, ps)
    return tuple(out)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return stats.rel_l2(a, b)  # large activations: one compiled pass instead of float64 copies


def device_choice(rs: tuple, ps: tuple) -> bool:
    """Whether every layout that fits these shapes runs on device values (``Transform.on_device``), so
    choosing among them (:func:`best_transform`) needs nothing copied to the host."""
    cands = candidates(tuple(rs), tuple(ps))
    return bool(cands) and all(t.on_device and t.valid is None for t in cands)


def best_transform(ref: np.ndarray, port: np.ndarray, prefer: str | None = None) -> tuple[Transform | None, float]:
    """The transform that best maps ``ref`` onto ``port``, and its relative error.

    Identity (or ``prefer``, the layout the call's inputs arrived in) wins
    unless another transform reduces the error tenfold, so a buggy layer with
    equal shapes (``C == H == W``) is not "explained" by a lucky permutation
    and keeps the layout its neighbours use. Returns ``(None, inf)`` when no
    transform fits the shapes.

    >>> x = np.arange(24.0).reshape(1, 2, 3, 4)
    >>> best_transform(x, np.moveaxis(x, 1, -1))[0].name
    'NCHW->NHWC'
    """
    cands = [t for t in candidates(ref.shape, port.shape) if t.valid is None or t.valid(ref)]
    if not cands:
        return None, float("inf")
    scored = [(t, _rel(t.forward(ref), port)) for t in cands]
    best_t, best_e = min(scored, key=lambda te: te[1])
    default = next(((t, e) for t, e in scored if t.name == prefer), None)
    default = default or next(((t, e) for t, e in scored if t is IDENTITY), None)
    if default is not None and best_t is not default[0] and not best_e * 10 < default[1]:
        return default
    return best_t, best_e


def input_layout(ref_inputs: dict[str, np.ndarray], port_inputs: dict[str, np.ndarray]) -> str | None:
    """The layout a call's inputs arrive in (reference -> port), when the values show it clearly.

    At the first divergence the inputs still agree, so their layout is a
    reliable hint for the outputs of a layer whose own values no longer do.
    """
    for key, pv in port_inputs.items():
        rv = ref_inputs.get(key)
        if rv is None:
            continue
        if not device_choice(tuple(rv.shape), tuple(pv.shape)):
            rv, pv = to_host(rv), to_host(pv)  # a layout that reads numpy (broadcast, flatten order)
        t, err = best_transform(rv, pv)
        if t is not None and err < 1e-2:
            return t.name
    return None


def by_name(name: str, ref_shape: tuple, port_shape: tuple) -> Transform | None:
    """The candidate transform called ``name`` for these shapes, if any."""
    for t in candidates(ref_shape, port_shape):
        if t.name == name:
            return t
    return None


# --- parameters ---------------------------------------------------------------------------

_CONV = {3: ((2, 1, 0), "OIL->LIO"), 4: ((2, 3, 1, 0), "OIHW->HWIO"), 5: ((2, 3, 4, 1, 0), "OIDHW->DHWIO")}


def _param_perms(ndim: int) -> list[tuple[str, tuple[int, ...]]]:
    """The axis orders a reference parameter may take in a port, by name, in the order tried."""
    perms = [("identity", tuple(range(ndim)))]
    if ndim >= 2:
        perms.append(("transpose", tuple(reversed(range(ndim)))))
    if ndim in _CONV:
        perm, name = _CONV[ndim]
        # A 1x1 2-D/3-D kernel is both a transpose and a kernel layout change: name it a kernel.
        perms.insert(1 if ndim > 3 else 2, (name, perm))
    return perms


def _param_views(ref: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return [(name, ref.transpose(perm)) for name, perm in _param_perms(ref.ndim)]


def _close(a: np.ndarray, b: np.ndarray, rtol: float, full: bool = True) -> bool:
    """Every element within ``2 * rtol * max|a|``; a few thousand elements are checked first.

    Weights can be large: the sample rejects a wrong candidate without
    copying the array, and the full check runs in float32, not float64.
    With ``full=False`` a passing sample is the answer (used to confirm a
    parameter fingerprint, which already matched sum, sum of squares, min and
    max: a sample of 4,096 equal values on top of that leaves no doubt).
    """
    if a.size == 0:
        return True
    if a.size > 8192:
        flat = np.linspace(0, a.size - 1, 4096).astype(np.int64)
        sa, sb = a[np.unravel_index(flat, a.shape)], b[np.unravel_index(flat, b.shape)]
        sample_scale = float(np.max(np.abs(sa))) if full is False else float(np.max(np.abs(a)))
        if not np.allclose(
            sa.astype(np.float32), sb.astype(np.float32), rtol=rtol, atol=rtol * sample_scale, equal_nan=True
        ):
            return False
        if not full:
            return True
    scale = float(np.max(np.abs(a)))
    worst = stats.max_abs_diff(a, b)
    if worst != worst:  # NaN somewhere: compare element by element, NaN matching NaN
        return bool(np.allclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True))
    return worst <= 2 * rtol * scale


def _param_transform_on_device(ref: Any, port: Any, rtol: float) -> tuple[bool, str | None]:
    """:func:`param_transform` with ``full=False`` for parameters on a device, without copying them.

    Each layout is checked on elements gathered where the values live (only they are read,
    like a statistic; sharded arrays included): a parameter of up to 8,192 elements whole
    (``max |view - port|`` against ``2 * rtol * max|ref|``), a larger one on 4,096 evenly
    spaced elements (the host check's sample).

    Returns ``(decided, name)``: a layout that fits, or ``(True, None)`` when none does and the
    fingerprints differ (a permutation keeps sum, sum of squares, min and max), or
    ``(False, None)`` when only the host can tell (the values may be a permutation).
    """
    from .align import fingerprint

    shape, size = tuple(np.shape(ref)), numel(ref)
    if size == 0:
        return False, None
    pos = np.arange(size, dtype=np.int64) if size <= 8192 else np.linspace(0, size - 1, 4096).astype(np.int64)
    sb = _sample_to_host(_gather(port, pos))
    if size <= 8192:
        fp = fingerprint(ref)
        scale = max(abs(fp.lo), abs(fp.hi))
    tried = [(n, p) for n, p in _param_perms(len(shape)) if tuple(shape[i] for i in p) == tuple(np.shape(port))]
    tried += [(n, p) for n, p in _param_perms(len(shape)) if (n, p) not in tried]
    for name, perm in tried:
        view_shape = tuple(shape[i] for i in perm)
        # flat positions of the transposed view (read in C order, as a reshape does) -> flat indices into ref
        at = np.unravel_index(pos, view_shape)
        src = [at[perm.index(i)] for i in range(len(shape))]
        sa = _sample_to_host(_gather(ref, np.ravel_multi_index(src, shape)))
        if size <= 8192:
            with np.errstate(invalid="ignore"):
                worst = float(np.max(np.abs(sa - sb)))
            ok = worst == worst and worst <= 2 * rtol * scale  # NaN: the host compares NaN with NaN
        else:
            scale = float(np.max(np.abs(sa)))
            ok = bool(np.allclose(sa, sb, rtol=rtol, atol=rtol * scale, equal_nan=True))
        if ok:
            same_shape = view_shape == tuple(np.shape(port))
            return True, name if same_shape else ("reshape" if name == "identity" else f"{name}+reshape")
    fa, fb = fingerprint(ref), fingerprint(port)
    # Loose on purpose: anything near a permutation (values within tolerance, reordered) goes to the host.
    scale = float(np.sqrt(max(fa.s2, fb.s2, 1e-30)))
    near = (
        abs(fa.s2 - fb.s2) <= 1e-3 * max(fa.s2, fb.s2) + 1e-30
        and abs(fa.s1 - fb.s1) <= 1e-3 * scale * np.sqrt(size) + 1e-3 * abs(fa.s1)
        and abs(fa.hi - fb.hi) <= 1e-3 * (abs(fa.hi) + scale)
        and abs(fa.lo - fb.lo) <= 1e-3 * (abs(fa.lo) + scale)
    )
    return (not near), None


def _gather(a: Any, flat: np.ndarray) -> Any:
    """``a.ravel()[flat]`` on the device holding ``a`` (a numpy array on the host)."""
    kind = stats.kind_of(a)
    if kind == "torch":
        import torch

        return a.detach().reshape(-1)[torch.from_numpy(flat).to(a.device)]
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.take(a.reshape(-1), jnp.asarray(flat))
    return np.asarray(a).reshape(-1)[flat]


def _sample_to_host(a: Any) -> np.ndarray:
    """A gathered sample (at most 8,192 values, read like a statistic) as host float32."""
    if stats.kind_of(a) == "torch":
        return a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def param_transform(ref: np.ndarray, port: np.ndarray, rtol: float = 1e-5, full: bool = True) -> str | None:
    """Name of the legal change that turns reference parameter ``ref`` into ``port``.

    Tries identity, transpose (``(out, in)`` -> ``(in, out)``), conv kernel
    layouts, each followed by a reshape (heads split in a kernel); then any
    permutation of the same values (``permuted``, e.g. a dense kernel whose
    rows follow an NHWC flatten). ``None``: these are not the same values.

    >>> w = np.arange(6.0).reshape(2, 3)
    >>> param_transform(w, w.T)
    'transpose'
    >>> param_transform(w, w.T.reshape(3, 2, 1))
    'transpose+reshape'
    """
    if numel(ref) != numel(port):
        return None
    if not full and (stats.kind_of(ref) != "numpy" or stats.kind_of(port) != "numpy"):
        decided, name = _param_transform_on_device(ref, port, rtol)
        if decided:
            return name  # else the host decides whether the values are a permutation
    ref, port = np.asarray(to_host(ref)), np.asarray(to_host(port))
    if ref.size != port.size:
        return None
    for name, view in _param_views(ref):
        if view.shape == port.shape and _close(view, port, rtol, full):
            return name
    for name, view in _param_views(ref):
        if _close(np.reshape(view, port.shape), port, rtol, full):
            return "reshape" if name == "identity" else f"{name}+reshape"
    if _close(np.sort(ref, axis=None), np.sort(port, axis=None), rtol):
        return "permuted"
    return None
