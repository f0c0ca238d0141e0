"""Capture every module call of a PyTorch model with forward (pre-)hooks.

Design notes:

- Inputs are copied in the *pre*-hook and outputs in the hook, so in-place
  operations later in the forward cannot change what was recorded.
- Hugging Face layers receive ``hidden_states`` as a keyword, so hooks are
  registered ``with_kwargs=True``.
- A failure inside xfdiff's own hook is recorded on the call and never raised
  into the user's forward pass.
- Hooks are removed and the RNG state is restored in ``finally``; the model's
  ``training`` flags are never touched.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import CaptureError, InputError, ModelTypeError
from ..trace import CallRecord, ParamToken, Trace, canonical_path
from ._common import DEVICE_ENV as DEVICE_ENV  # re-exported: the switch's historical home
from ._common import keep_on_device, leaf_key, split_substitute
from ._torch import from_numpy, to_numpy
from .base import Substitute

_SCALARS = (bool, int, float, str)


class CopyMemo:
    """One numpy copy per tensor value within a forward pass.

    The same tensor reaches several hooks: a block's output is its last
    child's output, one normalised input feeds three projections. A tensor
    seen again unchanged (the same object, alive, same in-place write count
    and storage) reuses its copy. Only weak references are held, so nothing
    lives longer.
    """

    def __init__(self, on_device: bool = False) -> None:
        self._seen: dict[tuple, tuple[weakref.ref, Any]] = {}
        # On the device: a detached clone stays where the tensor is (statistics run there, see DEVICE_ENV).
        self._copy = _device_copy if on_device else to_numpy

    def copy(self, t: torch.Tensor) -> Any:
        try:  # ``_version`` counts in-place writes
            key = (id(t), t._version, t.data_ptr())
        except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, meta...: no identity to trust
            return to_numpy(t)
        hit = self._seen.get(key)
        if hit is not None and hit[0]() is t:
            return hit[1]
        a = self._copy(t)
        try:
            self._seen[key] = (weakref.ref(t), a)
        except TypeError:  # no weak references: copied each time
            pass
        return a


def device_mode(model: torch.nn.Module) -> bool:
    """Whether a capture of ``model`` keeps its activations on the device (see :data:`DEVICE_ENV`)."""
    dev = model_device(model)
    return keep_on_device(dev is not None and dev.type not in ("cpu", "meta"))


def _device_copy(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    return t.clone()


def flatten(obj: Any, prefix: tuple = (), memo: CopyMemo | None = None) -> dict[str, np.ndarray]:
    """Tensors in nested tuples/lists/dicts/dataclasses, keyed by their path."""
    out: dict[str, np.ndarray] = {}
    _walk(obj, leaf_key(prefix), out, memo.copy if memo is not None else to_numpy)
    return out


def call_inputs(args: tuple, kwargs: dict, memo: CopyMemo | None = None) -> dict[str, np.ndarray]:
    """The tensors of one call's arguments keyed ``args.*`` / ``kwargs.*``, in one walk."""
    out: dict[str, np.ndarray] = {}
    copy = memo.copy if memo is not None else to_numpy
    _walk(args, "args", out, copy)
    _walk(kwargs, "kwargs", out, copy)
    return out


_PASS = (type(None), bool, int, float, str)


def _walk(obj: Any, key: str, out: dict, copy: Any) -> None:
    """Copy the tensors under ``obj`` into ``out`` by their dotted key (``key`` is ``obj``'s own)."""
    if isinstance(obj, torch.Tensor):
        out[key] = copy(obj)
        return
    pre = key + "." if key else ""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                out[f"{pre}{k}"] = copy(v)
            elif type(v) not in _PASS:
                _walk(v, f"{pre}{k}", out, copy)
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            if isinstance(v, torch.Tensor):
                out[f"{pre}{i}"] = copy(v)
            elif type(v) not in _PASS:
                _walk(v, f"{pre}{i}", out, copy)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), f"{pre}{f.name}", out, copy)


def _replace(obj: Any, prefix: tuple, subst: dict[str, np.ndarray]) -> Any:
    """A copy of ``obj`` whose tensors at keys in ``subst`` are replaced."""
    if isinstance(obj, torch.Tensor):
        key = leaf_key(prefix)
        return from_numpy(subst[key], like=obj) if key in subst else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_replace(v, prefix + (i,), subst) for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [_replace(v, prefix + (i,), subst) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _replace(v, prefix + (k,), subst) for k, v in obj.items()}
    if isinstance(obj, Mapping) and hasattr(obj, "__setitem__"):  # a ModelOutput: keep its class
        new = copy.copy(obj)
        for k, v in obj.items():
            new[k] = _replace(v, prefix + (k,), subst)
        return new
    return obj


def module_config(mod: torch.nn.Module) -> dict[str, Any]:
    """Scalar settings of a module (eps, approximate, p, padding, training...)."""
    cfg: dict[str, Any] = {}
    for k, v in vars(mod).items():
        if k.startswith("_"):
            continue
        if isinstance(v, _SCALARS):
            cfg[k] = v
        elif isinstance(v, tuple) and len(v) <= 8 and all(isinstance(x, _SCALARS) for x in v):
            cfg[k] = list(v)
    cfg["training"] = bool(mod.training)
    return cfg


def param_view(t: torch.Tensor) -> Any:
    """A read-only numpy view of a CPU parameter (no copy); the detached tensor itself on the
    device path; a host copy otherwise.

    Parameters do not change during a comparison, and copying them would
    double the model's memory (4 GiB more for a 1B-parameter model).
    """
    t = t.detach()
    if keep_on_device(t.device.type not in ("cpu", "meta")):
        return t  # on the device path (see DEVICE_ENV): fingerprinted there, read on the host only when checked
    if t.device.type != "cpu" or t.dtype == torch.bfloat16 or t.is_conj() or t.is_neg():
        return to_numpy(t)
    a = t.numpy()
    a = a.view()
    a.flags.writeable = False
    return a


def _own_tensors(mod: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p for n, p in mod._parameters.items() if p is not None}
    for n, b in mod._buffers.items():
        if b is not None and b.dtype.is_floating_point and n in ("running_mean", "running_var"):
            out[n] = b
    return out


def tensor_token(t: torch.Tensor) -> ParamToken | None:
    """Same key while ``t`` is alive and not written in place (``_version`` counts writes).

    ``None`` for a tensor without plain storage (sparse, meta...) or without
    weak references: nothing computed from it is reused.
    """
    try:
        return ParamToken(("torch", id(t), t._version, t.data_ptr(), tuple(t.shape), str(t.dtype)), t)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def to_torch_inputs(inputs: Any, name: str = "inputs", device: Any = None) -> tuple[tuple, dict]:
    """Turn a dict / tuple / single array of numpy, torch or jax arrays into (args, kwargs).

    numpy and JAX arrays become tensors on ``device`` (the model's); torch tensors are passed as given.
    """

    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, np.ndarray) or type(v).__module__.startswith(("jax", "jaxlib")):
            t = from_numpy(np.asarray(v))
            return t if device is None or t.device == device else t.to(device)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, (np.ndarray, torch.Tensor)) for x in v):
            return type(v)(conv(x) for x in v)
        return v

    if isinstance(inputs, Mapping):
        return (), {k: conv(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(conv(v) for v in inputs), {}
    if isinstance(inputs, (np.ndarray, torch.Tensor)) or type(inputs).__module__.startswith(("jax", "jaxlib")):
        return (conv(inputs),), {}
    raise InputError(
        f"{name} must be a dict (keyword arguments), a tuple (positional arguments) or one array; "
        f"got {type(inputs).__name__}."
    )


def model_device(model: torch.nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (``None`` for a model without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def accepts(model: Any) -> bool:
    """True for a ``torch.nn.Module``."""
    return isinstance(model, torch.nn.Module)


def make_side(model: Any, inputs: Any, *, jit: bool = True) -> TorchSide:
    """The capture side of a PyTorch model (``jit`` does not apply)."""
    return TorchSide(model, inputs)


class TorchSide:
    """Records every module call of ``model(*args, **kwargs)``."""

    name = "torch"
    framework = "torch"
    supports_streaming = False
    supports_sink = True

    def __init__(self, model: Any, inputs: Any):
        if not isinstance(model, torch.nn.Module):
            raise ModelTypeError(
                f"pt_model must be a torch.nn.Module, got {type(model).__name__}. "
                "Pass the PyTorch model itself (not its state_dict or a function)."
            )
        self.model = model
        self.args, self.kwargs = to_torch_inputs(inputs, device=model_device(model))
        self.modules = list(model.named_modules())
        self.paths = [canonical_path(name) for name, _ in self.modules]

    def describe(self) -> str:
        return type(self.model).__name__

    def capture(self, substitute: Substitute | None = None, record_outputs: bool = True, sink: Any = None) -> Trace:
        """Run the model once with hooks on every module.

        Args:
            substitute: teacher-forcing values ``{(path, index): {leaf: array}}``: input
                leaves (``args.*`` / ``kwargs.*``) or output leaves (``out.*``, splicing).
            record_outputs: record output leaves.
            sink: called with each record as its call completes; it may move the
                record's arrays elsewhere (bounded-memory mode spills them to disk).
        """
        trace = Trace(side="torch", framework="torch")
        for path, (_, mod) in zip(self.paths, self.modules, strict=True):
            trace.module_types[path] = type(mod).__name__
            trace.config[path] = module_config(mod)
            own = _own_tensors(mod)
            if own:
                trace.params[path] = {n: param_view(t) if n in mod._parameters else to_numpy(t) for n, t in own.items()}
                tokens = {n: tensor_token(t) for n, t in own.items()}
                trace.param_tokens[path] = {n: tok for n, tok in tokens.items() if tok is not None}
        counters: dict[str, int] = {}
        pending: dict[int, list] = {}
        handles = []
        subst, out_subst = split_substitute(substitute)
        # Shared copies would keep spilled arrays alive: a sink gets its own copy of every leaf.
        on_device = sink is None and device_mode(self.model)
        memo = CopyMemo(on_device) if sink is None else None

        def make_pre(path: str):
            def pre(mod, args, kwargs):
                idx = counters.get(path, 0)
                counters[path] = idx + 1
                rec = CallRecord(path=path, call_index=idx, module_type=type(mod).__name__)
                pending.setdefault(id(mod), []).append(rec)
                new = None
                try:
                    s = subst.get((path, idx))
                    if s:
                        own = call_inputs(args, kwargs, memo)
                        rec.raw_inputs = {k: v for k, v in own.items() if k in s}
                        args = _replace(args, ("args",), s)
                        kwargs = _replace(kwargs, ("kwargs",), s)
                        new = (args, kwargs)
                    rec.inputs = call_inputs(args, kwargs, memo)
                except Exception as e:  # never break the user's forward
                    rec.error = f"input capture failed: {type(e).__name__}: {e}"
                return new

            return pre

        def make_post(path: str):
            def post(mod, args, kwargs, output):
                stack = pending.get(id(mod))
                if not stack:
                    return None
                rec = stack.pop()
                new = None
                s = out_subst.get((path, rec.call_index))
                if s:  # splicing: this call hands the given values downstream in place of its own
                    try:
                        new = output = _replace(output, ("out",), s)
                    except Exception as e:
                        rec.error = f"output substitution failed: {type(e).__name__}: {e}"
                try:
                    if record_outputs:
                        rec.outputs = flatten(output, ("out",), memo)
                except Exception as e:
                    rec.error = f"output capture failed: {type(e).__name__}: {e}"
                rec.order = len(trace.records)
                trace.records.append(rec)
                if sink is not None:
                    try:
                        sink(rec)
                    except Exception as e:  # e.g. a full disk: keep the arrays, say so
                        rec.error = f"spilling failed: {type(e).__name__}: {e}"
                return new

            return post

        rng = torch.get_rng_state()
        try:
            for path, (_, mod) in zip(self.paths, self.modules, strict=True):
                handles.append(mod.register_forward_pre_hook(make_pre(path), with_kwargs=True))
                handles.append(mod.register_forward_hook(make_post(path), with_kwargs=True))
            with torch.no_grad():
                try:
                    self.model(*self.args, **self.kwargs)
                except Exception as e:
                    raise _forward_error(self.model, self.args, self.kwargs, e) from e
        finally:
            for h in handles:
                h.remove()
            torch.set_rng_state(rng)
        trace.meta.update(
            {
                "model": type(self.model).__name__,
                "dtype": _main_dtype(self.model),
                "training": bool(self.model.training),
                "torch_version": torch.__version__,
                "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                "on_device": on_device,
            }
        )
        return trace


def _main_dtype(model: torch.nn.Module) -> str:
    for p in model.parameters():
        return str(p.dtype).replace("torch.", "")
    return "float32"


def _forward_error(model, args, kwargs, e: Exception) -> CaptureError:
    shapes = {k: tuple(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    shapes.update({f"arg{i}": tuple(v.shape) for i, v in enumerate(args) if isinstance(v, torch.Tensor)})
    return CaptureError(
        f"The PyTorch model {type(model).__name__} raised {type(e).__name__} during its forward pass: {e}. "
        f"Inputs given: {shapes or 'none'}. Check that `inputs` fit this model (names, shapes, dtypes); "
        "pass `flax_inputs=` if the two models take different arguments. Hooks were removed and the model "
        "is unchanged."
    )
