"""Small PyTorch models and Flax ports that misbehave on purpose, and a check that
xfdiff left them as it found them.

``pair(**faults)`` builds a reference ``TNet`` and a linen port ``FNet`` with the
same weights. Faults: ``raise_in`` ("torch" / "flax") makes the activation
module raise mid-forward; ``nan_in`` ("flax" / "both") makes it produce NaN
for large inputs; ``dropout`` puts a dropout layer after the activation.
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

HOSTILE_NAMES = (
    "<script>alert(1)</script>",
    "ctl\x00\x07\x1b[31m\u202eevil",
    "n" * 3000,
)


class Boom(RuntimeError):
    """The error a faulty module raises."""


class TAct(torch.nn.Module):
    def __init__(self, fail: bool = False, nan: bool = False):
        super().__init__()
        self.fail, self.nan = fail, nan

    def forward(self, x):
        if self.fail:
            raise Boom("activation exploded")
        y = torch.nn.functional.gelu(x)
        if self.nan:  # sqrt of a negative number where the input is large: NaN on both sides
            y = torch.where(x > 1.0, torch.sqrt(-x), y)
        return y


class TNet(torch.nn.Module):
    def __init__(self, d: int = 8, fail: bool = False, nan: bool = False, dropout: float = 0.0):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, 2 * d)
        self.act = TAct(fail, nan)
        self.drop = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(2 * d, d)
        self.head = torch.nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.fc2(self.drop(self.act(self.fc1(x)))))


class FAct(nn.Module):
    fail: bool = False
    nan: bool = False

    def __call__(self, x):
        if self.fail:
            raise Boom("activation exploded")
        y = nn.gelu(x, approximate=False)
        if self.nan:
            y = jnp.where(x > 1.0, jnp.sqrt(-x), y)
        return y


class FNet(nn.Module):
    d: int = 8
    fail: bool = False
    nan: bool = False

    @nn.compact
    def __call__(self, x):
        h = FAct(self.fail, self.nan, name="act")(nn.Dense(2 * self.d, name="fc1")(x))
        return nn.Dense(3, name="head")(nn.Dense(self.d, name="fc2")(h))


def linear_params(m: torch.nn.Linear) -> dict:
    return {"kernel": m.weight.detach().numpy().T.copy(), "bias": m.bias.detach().numpy().copy()}


def pair(
    d: int = 8,
    seed: int = 0,
    raise_in: str | None = None,
    nan_in: str | None = None,
    dropout: float = 0.0,
    batch: int = 2,
):
    """(torch model, (linen module, variables), inputs) with the same weights."""
    torch.manual_seed(seed)
    pt = TNet(d, fail=raise_in == "torch", nan=nan_in == "both", dropout=dropout).eval()
    port = FNet(d, fail=raise_in == "flax", nan=nan_in in ("flax", "both"))
    variables = {"params": {n: linear_params(getattr(pt, n)) for n in ("fc1", "fc2", "head")}}
    x = np.random.default_rng(seed).standard_normal((batch, 4, d)).astype(np.float32)
    return pt, (port, variables), x


class Hostile(torch.nn.Module):
    """Linear layers whose names are HTML, control characters and a very long string."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.layers = torch.nn.ModuleDict({n: torch.nn.Linear(d, d) for n in HOSTILE_NAMES})

    def forward(self, x):
        for layer in self.layers.values():
            x = layer(x)
        return x


class FHostile(nn.Module):
    @nn.compact
    def __call__(self, x):
        for n in HOSTILE_NAMES:
            x = nn.Dense(x.shape[-1], name=n)(x)
        return x


def hostile_pair(d: int = 4):
    torch.manual_seed(0)
    pt = Hostile(d).eval()
    variables = {"params": {n: linear_params(pt.layers[n]) for n in HOSTILE_NAMES}}
    x = np.random.default_rng(0).standard_normal((2, d)).astype(np.float32)
    return pt, (FHostile(), variables), x


class Unrelated(nn.Module):
    """A Flax model that shares nothing with TNet: other names, other weights."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="zeta")(nn.tanh(nn.Dense(5, name="omega")(x)))


def unrelated_port(d: int = 8):
    mod = Unrelated()
    return mod, mod.init(jax.random.PRNGKey(42), np.zeros((1, d), np.float32))


# --- report files -------------------------------------------------------------------------


def rewrite_member(src: Path, dst: Path, member: str, data: bytes | None) -> Path:
    """Copy the zip ``src`` to ``dst`` with ``member`` replaced by ``data`` (dropped when None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info, zin.read(info.filename))
        if data is not None:
            zout.writestr(member, data)
    return dst


# --- "as found" ---------------------------------------------------------------------------


def _torch_state(model: torch.nn.Module) -> dict:
    hooks = [
        (
            name,
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            dict(m._backward_hooks),
            dict(getattr(m, "_forward_hooks_with_kwargs", {})),
            dict(getattr(m, "_forward_pre_hooks_with_kwargs", {})),
        )
        for name, m in model.named_modules()
    ]
    return {
        "hooks": hooks,
        "training": [(n, m.training) for n, m in model.named_modules()],
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "class": [(n, type(m)) for n, m in model.named_modules()],
    }


def _global_state() -> dict:
    from torch.nn.modules import module as tm

    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "torch_global_hooks": (len(tm._global_forward_hooks), len(tm._global_forward_pre_hooks)),
        "jax_flags": (
            jax.config.jax_enable_x64,
            str(jax.config.jax_default_matmul_precision),
            jax.config.jax_disable_jit,
        ),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _jax_state(port) -> dict:
    if isinstance(port, tuple):
        mod, variables = port
        leaves = [np.array(x) for x in jax.tree_util.tree_leaves(variables)]
        return {"module": (hash(mod), repr(mod)), "leaves": leaves}
    if hasattr(port, "params") and hasattr(port, "module"):
        return {"module": repr(port.module), "leaves": [np.array(x) for x in jax.tree_util.tree_leaves(port.params)]}
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return {}
    if isinstance(port, nnx.Module):
        classes = {type(m) for _, m in nnx.iter_graph(port) if isinstance(m, nnx.Module)}
        calls = {c: (c.__dict__.get("__call__"), set(vars(c))) for c in classes}
        attrs = {id(m): set(vars(m)) for _, m in nnx.iter_graph(port) if isinstance(m, nnx.Module)}
        leaves = [np.array(x) for x in jax.tree_util.tree_leaves(nnx.state(port))]
        return {"classes": calls, "attrs": attrs, "leaves": leaves}
    return {}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return a == b


@contextlib.contextmanager
def left_as_found(pt: torch.nn.Module | None = None, port=None):
    """Assert on exit that xfdiff removed its hooks, restored classes and touched no state.

    Checks forward/backward hooks (global too), training flags, parameters and
    module classes of the torch model; torch and numpy RNG state, grad mode and
    JAX flags; the linen module and its variables, or an NNX model's classes,
    instance attributes and state.
    """
    before = (_torch_state(pt) if pt is not None else None, _jax_state(port), _global_state())
    yield  # an unexpected error propagates as is; the checks run after a normal exit
    after = (_torch_state(pt) if pt is not None else None, _jax_state(port), _global_state())
    for name, b, a in zip(("torch model", "flax model", "global state"), before, after, strict=True):
        assert _equal(b, a), f"compare() changed the {name}"
