"""The built-in demo: a tiny PyTorch transformer and a Flax linen port with one planted bug.

The reference is a 4-block pre-norm transformer encoder (token and position
embeddings, LayerNorm, multi-head self-attention, a GELU MLP, a vocabulary
head) with random weights from a fixed seed. The port is written by hand in
Flax linen and loads the same weights. It matches the reference everywhere
except one place: the MLP activation of block 2 uses Flax's default GELU,
the tanh approximation, where PyTorch's ``nn.GELU()`` is exact (erf). That is
pitfall ``gelu_approximate``; ``xfdiff demo`` shows how the views point at it.

The reference also has a ``Dropout`` after attention (identity in eval mode)
that the port leaves out, as real ports often do; it shows up among the
unmatched modules.

Nothing is downloaded; building and comparing take a few seconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

VOCAB = 64
HIDDEN = 32
HEADS = 4
MLP = 4 * HIDDEN
BLOCKS = 4
SEQ = 8
BATCH = 2
BUGGY_BLOCK = 2
EPS = 1e-5

#: Where the planted bug lives (torch path of the module whose own code is wrong).
BUG_PATH = f"blocks.{BUGGY_BLOCK}.mlp.act"
#: The pitfall id the bug corresponds to.
BUG_PITFALL = "gelu_approximate"


def _torch_model(seed: int):
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))

        def forward(self, x):
            b, t, _ = x.shape
            dh = HIDDEN // HEADS

            def heads(y):
                return y.view(b, t, HEADS, dh).transpose(1, 2)

            q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
            return self.o((att @ v).transpose(1, 2).reshape(b, t, HIDDEN))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(HIDDEN, MLP), nn.GELU(), nn.Linear(MLP, HIDDEN)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.attn, self.drop = nn.LayerNorm(HIDDEN, eps=EPS), Attention(), nn.Dropout(0.1)
            self.ln2, self.mlp = nn.LayerNorm(HIDDEN, eps=EPS), Mlp()

        def forward(self, x):
            x = x + self.drop(self.attn(self.ln1(x)))
            return x + self.mlp(self.ln2(x))

    class TinyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(SEQ, HIDDEN)
            self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
            self.ln_f, self.head = nn.LayerNorm(HIDDEN, eps=EPS), nn.Linear(HIDDEN, VOCAB)

        def forward(self, ids):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln_f(x))

    torch.manual_seed(seed)
    model = TinyEncoder()
    # LayerNorm starts at weight 1 / bias 0; random affine parameters make the
    # weights distinctive, so pairing by parameter fingerprint is exercised.
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
    return model.eval()


def _flax_module(bug: bool = True):
    import jax.numpy as jnp
    from flax import linen as nn

    class GELU(nn.Module):
        approximate: bool = False

        @nn.compact
        def __call__(self, x):
            return nn.gelu(x, approximate=self.approximate)

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            b, t, _ = x.shape
            dh = HIDDEN // HEADS

            def heads(y):
                return y.reshape(b, t, HEADS, dh).transpose(0, 2, 1, 3)

            q, k, v = (heads(nn.Dense(HIDDEN, name=n)(x)) for n in ("q", "k", "v"))
            att = nn.softmax(q @ k.transpose(0, 1, 3, 2) / dh**0.5, axis=-1)
            return nn.Dense(HIDDEN, name="o")((att @ v).transpose(0, 2, 1, 3).reshape(b, t, HIDDEN))

    class Mlp(nn.Module):
        tanh_gelu: bool = False

        @nn.compact
        def __call__(self, x):
            h = nn.Dense(MLP, name="fc1")(x)
            h = GELU(approximate=self.tanh_gelu, name="act")(h)
            return nn.Dense(HIDDEN, name="fc2")(h)

    def layer_norm(name):
        return nn.LayerNorm(epsilon=EPS, use_fast_variance=False, name=name)

    class Block(nn.Module):
        tanh_gelu: bool = False

        @nn.compact
        def __call__(self, x):
            x = x + Attention(name="attn")(layer_norm("ln1")(x))
            return x + Mlp(tanh_gelu=self.tanh_gelu, name="mlp")(layer_norm("ln2")(x))

    class TinyEncoder(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(VOCAB, HIDDEN, name="tok")(ids) + nn.Embed(SEQ, HIDDEN, name="pos")(jnp.arange(ids.shape[1]))
            for i in range(BLOCKS):
                # The planted bug: this block's MLP uses flax's default (tanh) GELU.
                x = Block(tanh_gelu=bug and i == BUGGY_BLOCK, name=f"blocks_{i}")(x)
            return nn.Dense(VOCAB, name="head")(layer_norm("ln_f")(x))

    return TinyEncoder()


def _port_params(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """Flax parameters from a PyTorch state dict (Linear weights transposed)."""
    params: dict[str, Any] = {}
    for key, value in state.items():
        *mods, leaf = key.split(".")
        if mods[0] == "blocks":
            mods = [f"blocks_{mods[1]}", *mods[2:]]
        node = params
        for m in mods:
            node = node.setdefault(m, {})
        if mods[-1] in ("tok", "pos"):
            node["embedding"] = value
        elif mods[-1].startswith("ln"):
            node["scale" if leaf == "weight" else "bias"] = value
        else:
            node["kernel" if leaf == "weight" else "bias"] = value.T if leaf == "weight" else value
    return params


def build_demo(seed: int = 0, bug: bool = True):
    """Build the demo reference, its Flax port and an input batch.

    Args:
        seed: seeds the reference's random weights and the token ids.
        bug: plant the tanh-GELU bug in block 2 (``False`` gives a correct port).

    Returns:
        ``(pt_model, (flax_module, variables), ids)`` where ``ids`` is an int64
        numpy array of shape ``(2, 8)``; pass them to :func:`xfdiff.compare`.
    """
    import jax.numpy as jnp

    pt_model = _torch_model(seed)
    state = {k: v.detach().numpy().copy() for k, v in pt_model.state_dict().items()}
    variables = {"params": _jax_tree(_port_params(state), jnp)}
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(BATCH, SEQ), dtype=np.int64)
    return pt_model, (_flax_module(bug), variables), ids


def _jax_tree(tree: dict, jnp) -> dict:
    return {k: _jax_tree(v, jnp) if isinstance(v, dict) else jnp.asarray(v) for k, v in tree.items()}


def demo_report(seed: int = 0, **compare_kwargs: Any):
    """Compare the demo pair and return the :class:`~xfdiff.Report`.

    Args:
        seed: passed to :func:`build_demo`.
        **compare_kwargs: extra keyword arguments for :func:`xfdiff.compare`.

    Returns:
        The report; its ``first_divergence`` is the planted bug (:data:`BUG_PATH`).
    """
    from .engine import compare

    pt_model, port, ids = build_demo(seed)
    compare_kwargs.setdefault("progress", False)
    report = compare(pt_model, port, ids, **compare_kwargs)
    report.meta.setdefault("notes", []).append("xfdiff demo: a hand-written Flax port with one planted bug")
    return report


_BLOCK_CALLS = (
    ("ln1", "LayerNorm", "LayerNorm"),
    ("attn.q", "Linear", "Dense"),
    ("attn.k", "Linear", "Dense"),
    ("attn.v", "Linear", "Dense"),
    ("attn.o", "Linear", "Dense"),
    ("attn", "Attention", "Attention"),
    ("ln2", "LayerNorm", "LayerNorm"),
    ("mlp.fc1", "Linear", "Dense"),
    ("mlp.act", "GELU", "GELU"),
    ("mlp.fc2", "Linear", "Dense"),
    ("mlp", "Mlp", "Mlp"),
    ("", "Block", "Block"),
)


def large_report(n_calls: int = 1000, seed: int = 0, positions: int = 64, channels: int = 256):
    """A synthetic report with ``n_calls`` aligned calls, shaped like a deep transformer comparison.

    Every row has real detail arrays (:func:`xfdiff.stats.error_detail` of
    random activations), float32-level noise everywhere and a planted own
    error in the MLP activation of the middle block, so views and benchmarks
    can be exercised at scale without running a large model.

    Args:
        n_calls: number of aligned calls (rows).
        seed: random seed.
        positions: output positions per call (leading axes flattened).
        channels: output channels per call (last axis).

    Returns:
        A :class:`~xfdiff.Report`.
    """
    from .report import LayerDiff, Report
    from .stats import error_detail

    rng = np.random.default_rng(seed)
    n_blocks = max(1, n_calls // len(_BLOCK_CALLS))
    bug = (n_blocks // 2, "mlp.act")
    layers, inherited = [], 3e-8
    for i in range(n_calls):
        blk, (name, tt, ft) = divmod(i, len(_BLOCK_CALLS))[0], _BLOCK_CALLS[i % len(_BLOCK_CALLS)]
        own = 2.3e-4 if (blk, name) == bug else float(rng.choice([0.0, 6e-8, 1.2e-7]))
        inherited = max(inherited, own) * float(rng.uniform(0.9, 1.1))
        path = f"blocks.{blk}" + (f".{name}" if name else "")
        layers.append(
            _synthetic_layer(LayerDiff, error_detail, rng, i, path, tt, ft, own, inherited, (1, positions, channels))
        )
    return Report(
        layers=layers,
        meta={
            "tolerance": {"atol": None, "rtol": None},
            "reference": "torch",
            "torch_model": "SyntheticTransformer",
            "flax_model": "SyntheticTransformer",
            "flax_framework": "linen",
            "local": True,
            "notes": ["synthetic report"],
        },
    )


def _synthetic_layer(LayerDiff, error_detail, rng, order, path, tt, ft, own, inherited, shape):
    ref = rng.standard_normal(shape).astype(np.float32)
    port = ref + (rng.standard_normal(shape) * inherited / 3).astype(np.float32)
    local = ref + (rng.standard_normal(shape) * own / 3).astype(np.float32) if own else ref.copy()
    d = np.abs(port.astype(np.float64) - ref)
    dl = np.abs(local.astype(np.float64) - ref)
    tol = 1e-5 + 1e-5 * np.abs(ref)
    lyr = LayerDiff(
        torch_path=path,
        flax_path=path,
        order=order,
        depth=path.count(".") + 1,
        torch_type=tt,
        flax_type=ft,
        max_abs=float(d.max()),
        mean_abs=float(d.mean()),
        rel_l2=float(np.sqrt((d * d).sum() / (ref.astype(np.float64) ** 2).sum())),
        cosine=1.0,
        local_max_abs=float(dl.max()),
        local_mean_abs=float(dl.mean()),
        status="ok" if (d <= tol).all() else "diverged",
        local_status="ok" if (dl <= tol).all() else "diverged",
        atol=1e-5,
        rtol=1e-5,
        tol_needed=float(max((d - 1e-5 * np.abs(ref)).max(), 0)),
        frac_outside=float((d > tol).mean()),
        torch_shape=shape,
        flax_shape=shape,
        torch_dtype="float32",
        flax_dtype="float32",
        output_key="out",
        match="fingerprint",
        confidence=1.0,
    )
    lyr.local_tol_needed = float(max((dl - 1e-5 * np.abs(ref)).max(), 0))
    lyr.blame_order = float(order) if lyr.local_status != "ok" else None
    lyr.detail = error_detail(ref, port, seed=order)
    lyr.local_detail = error_detail(ref, local, seed=order)
    return lyr
