"""The rounding floor of a layer: how far float rounding alone moves its output.

A fixed tolerance cannot judge every layer: a correct float32 attention over
2,048 keys, or any bfloat16 layer, exceeds ``atol=1e-5`` through rounding
alone. For each row whose own (teacher-forced) error is out of the plain
tolerance, xfdiff recomputes the reference module's step in float64 from the
same call's inputs and measures

- ``e_ref``: the reference's own output against the float64 result (what
  rounding in the reference's dtype does to this computation),
- ``e_port``: the port's teacher-forced output against the same float64 result.

When the port runs in a lower precision than the reference (a bfloat16 or
float16 port of a float32 model), the floor is that dtype's: the module is
also run in the port's dtype and its error against float64 taken as the
floor when larger.

The floor is never less than one unit of rounding of the reference's dtype at
the output's scale (``eps * rms(y)``): a module that upcasts to float32 in its
own code makes its float64 copy no more exact than float32.

The rule (inspired by the PyTorch compile accuracy checker's "RMSE against
float64 at most twice the reference's, plus a tenth of the tolerance")::

    within floor  <=>  e_port <= FACTOR * floor + atol * ATOL_SHARE

with ``FACTOR = 2``, ``ATOL_SHARE = 0.1`` and RMSE as the error. A row within
its floor is not a divergence: its note says so and ``LayerDiff.floor`` /
``LayerDiff.floor_error`` show the two numbers.

How the float64 result is obtained: the reference model is run once more
(its forward unchanged) with temporary pre-hooks on the rows' modules; each
hook runs a float64 *copy* of that module on the call's own arguments (float
tensors cast to float64). The user's modules are never modified and the hooks
are removed also when the forward raises. Only a PyTorch reference is
measured (``reference="torch"``); with a Flax reference rows keep the plain
tolerance. Modules whose float64 copy would exceed :data:`MAX_COPY_BYTES`
are skipped.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

FACTOR = 2.0
ATOL_SHARE = 0.1
MAX_COPY_BYTES = 4 << 30
_LOW = {"bfloat16", "float16"}


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean square of ``a - b`` in float64 (non-finite entries ignored)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d * d))) if d.size else 0.0


def within(e_port: float, floor: float, atol: float) -> bool:
    """The floor rule (module docstring)."""
    return e_port <= FACTOR * floor + ATOL_SHARE * atol


def measure(ev: Any, torch_side: Any, rows: list[Any]) -> dict[str, Any]:
    """Fill ``floor`` / ``floor_error`` of ``rows`` and clear the blame of those within their floor.

    Returns a small summary for ``Report.meta["floor"]`` (rows measured,
    rows within floor, seconds spent).
    """
    out: dict[str, Any] = {"rows_measured": 0, "rows_within_floor": 0, "seconds": 0.0}
    if ev.reference != "torch" or torch_side is None or not rows:
        return out
    try:
        import torch
    except ImportError:  # pragma: no cover - a torch reference implies torch
        return out
    t0 = time.perf_counter()
    targets: dict[tuple[str, int], Any] = {}
    for row in rows:
        if row.ref_key is None or row.transform is None or row.layer.status in ("nonfinite", "shape_mismatch"):
            continue
        if row.layer.local_status == "nonfinite":
            continue
        targets[(row.torch.path, row.torch.call_index)] = row
    if not targets:
        return out
    results = _run_fp64(torch, torch_side, targets, _port_params_dtype(ev))
    if "error" in results:
        out["error"] = str(results.pop("error"))[:300]
    for key, row in targets.items():
        res = results.get(key)
        lyr = row.layer
        if res is None:
            lyr.note = _join(lyr.note, "rounding floor not measured (the float64 recomputation failed)")
            continue
        out["rows_measured"] += 1
        verdicts = []
        if row.gap is not None:
            verdicts.append(_judge_gap(row, res.get("child_inputs", [])))
        if row.gap is None or _own_output_bad(row):
            verdicts.append(_judge_output(ev, row, res.get("out64"), res.get("outlow")))
        verdicts = [v for v in verdicts if v is not None]
        if not verdicts:
            lyr.note = _join(lyr.note, "rounding floor not measured (no comparable float64 value)")
            continue
        worst = max(verdicts, key=lambda v: (not v[2], v[0] / max(v[1], 1e-300)))
        e_port, floor, ok, what = worst
        lyr.floor, lyr.floor_error = floor, e_port
        if all(v[2] for v in verdicts):
            out["rows_within_floor"] += 1
            lyr.blame_order = None
            lyr.note = _join(
                lyr.note,
                f"within the rounding floor: {what} RMSE {e_port:.2e} against float64, the reference's own "
                f"{floor:.2e} (rule: <= {FACTOR:g}x floor + {ATOL_SHARE:g} atol)",
            )
        else:
            if row.gap is not None and not worst[3].startswith("gap") and lyr.blame_order is not None:
                lyr.blame_order = max(lyr.blame_order, float(lyr.order))
            lyr.note = _join(
                lyr.note,
                f"above the rounding floor: {what} RMSE {e_port:.2e} against float64, the reference's own {floor:.2e}",
            )
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _judge_output(ev: Any, row: Any, y64: np.ndarray | None, ylow: np.ndarray | None):
    """(e_port, floor, within, what) for the row's own output, or None."""
    port = _port_output(ev, row)
    ref = _host(row.torch.outputs.get(row.ref_key))
    if y64 is None or port is None or ref is None or y64.shape != ref.shape:
        return None
    port = row.transform.inverse(port)
    if port.shape != y64.shape:
        return None
    floor = max(rmse(ref, y64), _unit(ref, y64))
    if ylow is not None and ylow.shape == y64.shape:
        floor = max(floor, rmse(ylow, y64))
    e_port = rmse(port, y64)
    return e_port, floor, within(e_port, floor, _atol(row)), "own output error"


def _judge_gap(row: Any, child_inputs: list[dict[str, np.ndarray]]):
    """(e_port, floor, within, what) for the input gap that blamed ``row``, or None.

    The float64 copy of the row's module records its child's inputs; the one
    nearest the reference's is the float64 value of that input.
    """
    from .layout import best_transform

    child, pk = row.gap
    rk = child.input_map.get(pk)
    raw = _host(child.port_local.raw_inputs.get(pk) if child.port_local is not None else None)
    ref = _host(child.torch.inputs.get(rk) if rk is not None else None)
    if raw is None or ref is None:
        return None
    t, _ = best_transform(ref, raw)
    if t is None:
        return None
    raw = t.inverse(raw)
    cands = [c[rk] for c in child_inputs if rk in c and c[rk].shape == ref.shape]
    if not cands or raw.shape != ref.shape:
        return None
    y64 = min(cands, key=lambda c: rmse(ref, c))
    floor = max(rmse(ref, y64), _unit(ref, y64))
    e_port = rmse(raw, y64)
    return e_port, floor, within(e_port, floor, _atol(row)), f"gap at {child.layer.label}'s input"


def _unit(ref: np.ndarray, y64: np.ndarray) -> float:
    """One unit of rounding of the reference's dtype at the output's scale: ``eps * rms(y)``.

    The least floor: a module that computes internally in float32 (an upcast
    inside its own code) makes its "float64" copy no more exact than that.
    """
    try:
        eps = float(np.finfo(np.dtype(ref.dtype.name if ref.dtype.name != "bfloat16" else "float32")).eps)
    except (TypeError, ValueError):
        eps = float(np.finfo(np.float32).eps)
    if ref.dtype.name == "bfloat16":
        eps = 2.0**-7
    return eps * rmse(y64, np.zeros_like(y64))


def _atol(row: Any) -> float:
    a = row.layer.atol
    return float(a) if a == a else 0.0


def _own_output_bad(row: Any) -> bool:
    """Whether the row's own teacher-forced output is out of the plain tolerance."""
    port = _port_output(None, row)
    ref = _host(row.torch.outputs.get(row.ref_key))
    if port is None or ref is None:
        return False
    port = row.transform.inverse(port)
    if port.shape != ref.shape:
        return True
    r = np.asarray(ref, dtype=np.float64)
    d = np.abs(np.asarray(port, dtype=np.float64) - r)
    return bool(np.any(~(d <= row.layer.atol + row.layer.rtol * np.abs(r))))


def _port_output(ev: Any, row: Any) -> np.ndarray | None:
    """The port's teacher-forced output of ``row`` (its propagated output when not forced)."""
    rec = row.port_local if row.port_local is not None else row.port
    if rec is None or row.port_key not in rec.outputs:
        return None
    return np.asarray(_host(rec.outputs[row.port_key]))


def _host(a: Any) -> Any:
    """A value the floor reads, on the host (a device capture's value of a judged row is copied once here)."""
    if a is None:
        return None
    from .stats.meet import to_host

    return to_host(a)


def _low_dtype(torch: Any, row: Any, port_params_dtype: str | None):
    """``(weight dtype, compute dtype)`` of a port in lower precision than the reference, or None.

    A port whose outputs are bf16/fp16 computes in that dtype; a port whose
    parameters are bf16/fp16 but whose outputs are float32 (weights stored low,
    math promoted) rounds only the weights.
    """
    ref_dtype = row.layer.torch_dtype
    if ref_dtype in _LOW:
        return None
    low = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if row.layer.flax_dtype in _LOW:
        return low[row.layer.flax_dtype], low[row.layer.flax_dtype]
    if port_params_dtype in _LOW:
        return low[port_params_dtype], torch.float32
    return None


def _port_params_dtype(ev: Any) -> str | None:
    """The lowest floating dtype among the port's parameters (None when all are float32 or wider)."""
    # numpy / JAX say "bfloat16", torch (a port on the device path) "torch.bfloat16"
    names = {
        str(getattr(a, "dtype", "")).removeprefix("torch.") for d in ev.port.trace.params.values() for a in d.values()
    }
    for name in ("float16", "bfloat16"):
        if name in names:
            return name
    return None


def _run_fp64(torch: Any, side: Any, targets: dict, port_params_dtype: str | None = None) -> dict:
    """Re-run the reference with pre-hooks that evaluate float64 (and low-precision) copies of the targets."""
    from .capture.from_torch import flatten
    from .trace import canonical_path

    by_path: dict[str, Any] = {}
    for name, mod in side.modules:
        path = canonical_path(name)
        if any(p == path for p, _ in targets):
            by_path[path] = mod
    copies: dict[str, Any] = {}
    lows: dict[str, Any] = {}
    for path, mod in by_path.items():
        n_bytes = sum(p.numel() * 8 for p in mod.parameters()) + sum(b.numel() * 8 for b in mod.buffers())
        if n_bytes > MAX_COPY_BYTES:
            continue
        try:  # copies are made before any hook exists: they carry none of ours
            copies[path] = copy.deepcopy(mod).double()
            low = {_low_dtype(torch, r, port_params_dtype) for (p, _), r in targets.items() if p == path} - {None}
            if low:
                w_dtype, c_dtype = next(iter(low))
                lows[path] = (copy.deepcopy(mod).to(w_dtype).to(c_dtype), c_dtype)
        except Exception:  # an uncopyable module: its rows keep the plain tolerance
            copies.pop(path, None)
    child_log: dict[str, list] = {}
    for (path, _), row in targets.items():
        if row.gap is None or path not in copies:
            continue
        child_path = row.gap[0].torch.path
        for name, sub in copies[path].named_modules():
            full = canonical_path(f"{path}.{name}" if path and name else (name or path))
            if full == child_path:
                log = child_log.setdefault(path, [])
                sub.register_forward_pre_hook(
                    lambda m, a, k, log=log: log.append({**flatten(a, ("args",)), **flatten(k, ("kwargs",))}),
                    with_kwargs=True,
                )
    results: dict[tuple[str, int], dict] = {}
    counters: dict[str, int] = {}
    handles = []

    def make_pre(path: str):
        def pre(mod, args, kwargs):
            idx = counters.get(path, 0)
            counters[path] = idx + 1
            row = targets.get((path, idx))
            if row is None or path not in copies:
                return None
            try:
                log = child_log.get(path)
                if log is not None:
                    log.clear()
                y64 = _call(torch, copies[path], args, kwargs, torch.float64)
                res = {"out64": flatten(y64, ("out",)).get(row.ref_key), "child_inputs": list(log or [])}
                if path in lows:
                    mlow, dt = lows[path]
                    res["outlow"] = flatten(_call(torch, mlow, args, kwargs, dt), ("out",)).get(row.ref_key)
                results[(path, idx)] = res
            except Exception:  # the float64 copy cannot run these arguments: no floor for this row
                pass
            return None

        return pre

    rng = torch.get_rng_state()
    try:
        for path, mod in by_path.items():
            if path in copies:
                handles.append(mod.register_forward_pre_hook(make_pre(path), with_kwargs=True))
        with torch.no_grad():
            side.model(*side.args, **side.kwargs)
    except Exception as e:  # the first capture ran this forward; a failure here only leaves rows unmeasured
        results["error"] = f"{type(e).__name__}: {e}"
    finally:
        for h in handles:
            h.remove()
        torch.set_rng_state(rng)
    return results


def _call(torch: Any, mod: Any, args: tuple, kwargs: dict, dtype: Any) -> Any:
    def cast(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(dtype) if v.is_floating_point() else v
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return tuple(cast(x) for x in v)
        if isinstance(v, list):
            return [cast(x) for x in v]
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
            return v
        try:  # a cache or other mutable argument: the copy must not write into the reference's own
            return copy.deepcopy(v)
        except Exception:
            return v

    with torch.no_grad():
        return mod(*cast(args), **cast(kwargs))


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
