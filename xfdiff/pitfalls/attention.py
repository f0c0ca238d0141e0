"""Attention: RoPE layout (P15), mask fill on fully-masked rows (P17), inverted
mask (P18), GQA head mapping (P19), logit scale (P20).

Looked at where an attention module's own code sits between its q/k/v
projections and what follows (the output projection's input, or the
module's output). The attention is recomputed in float64 from the captured
projections over a small family of configurations; the one that reproduces
the reference is the control, then one factor at a time is changed to
explain the port.

Conventions: HF/GPT-NeoX RoPE rotates (j, j+D/2) (``rotate_half``), GPT-J and
Meta's complex form rotate (2j, 2j+1). torch ``repeat_kv`` /
``repeat_interleave`` gives query head h the kv head h // (H/Hkv), ``jnp.tile``
gives h % Hkv. A query with no allowed key yields NaN with a ``-inf`` fill,
zeros with torch SDPA (``_safe_softmax``), the mean of V with a finite fill
(``finfo.min``, ``-1e9``; flax ``dot_product_attention``).
https://github.com/huggingface/transformers/issues/39687,
https://github.com/pytorch/pytorch/pull/131060
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from .numerics import attention, f64, rel
from .registry import register
from .sites import Site, Source, numbers

Q_NAMES = ("q", "q_proj", "query", "wq", "to_q", "q_lin", "query_proj")
K_NAMES = ("k", "k_proj", "key", "wk", "to_k", "k_lin", "key_proj")
V_NAMES = ("v", "v_proj", "value", "wv", "to_v", "v_lin", "value_proj")
QKV_NAMES = ("qkv", "c_attn", "in_proj", "query_key_value", "wqkv", "qkv_proj", "to_qkv")
KV_NAMES = ("kv", "kv_proj", "to_kv", "wkv", "key_value")
_BLOCK_NAME = re.compile(r"\[(\d+)/(\d+)\]$")
HEAD_KEYS = ("num_heads", "n_heads", "num_attention_heads", "n_head", "heads", "num_q_heads")
BASE_KEYS = ("rope_theta", "rope_base", "base", "theta")
TAU_ATTENTION = 1e-6  # softmax + two matmuls in float32 against float64


@dataclass(frozen=True)
class AttnConfig:
    heads: int
    kv_heads: int
    rope: str = "none"
    causal: bool = False
    polarity: str = "attend"  # how a truthy mask value reads: "attend" | "ignore" | "additive"
    kv_map: str = "repeat"
    empty_rows: str = "zeros"
    scale: float | None = None


class AttnSite:
    """q, k, v projections, the mask (if any) and the compared context of one attention site."""

    def __init__(self, site: Site):
        self.site = site
        self.q = self.k = self.v = None
        for s in site.sources:
            last = s.name.rsplit(".", 1)[-1].lower()
            for attr, names in (("q", Q_NAMES), ("k", K_NAMES), ("v", V_NAMES)):
                if last in names:
                    setattr(self, attr, s)
        self._fused(site.sources)
        # Integer position inputs (HF ``position_ids``, ``cache_position``) look like masks but are not.
        self.mask = next(
            (
                s.ref
                for s in site.sources
                if s.name.startswith("input:") and _mask_like(s.ref) and "position" not in s.name.lower()
            ),
            None,
        )
        self.base = next(
            (float(site.ref_cfg[k]) for k in BASE_KEYS if isinstance(site.ref_cfg.get(k), (int, float))), 10000.0
        )

    def _fused(self, sources: list[Source]) -> None:
        """q, k, v from fused projections: blocks paired one by one (``qkv[0/3]``, ``kv[1/2]``), or a
        fused output (GPT-2's ``c_attn``, timm's ``qkv``, a ``kv`` Dense) cut along its last axis."""
        blocks: dict[int, dict[int, Source]] = {}
        for s in sources:
            m = _BLOCK_NAME.search(s.name)
            if m:
                blocks.setdefault(int(m.group(2)), {})[int(m.group(1))] = s
        for s in sources:
            last = s.name.rsplit(".", 1)[-1].lower()
            for k, names in ((3, QKV_NAMES), (2, KV_NAMES)):
                if last in names and s.ref.ndim >= 3 and s.ref.shape[-1] % k == 0 and s.port.shape == s.ref.shape:
                    cut = zip(np.split(s.ref, k, -1), np.split(s.port, k, -1), strict=True)
                    blocks.setdefault(k, {}).update(
                        {i: Source(f"{s.name}[{i}/{k}]", r, p) for i, (r, p) in enumerate(cut)}
                    )
        if self.q is None and self.k is None and self.v is None and len(blocks.get(3, {})) == 3:
            self.q, self.k, self.v = blocks[3][0], blocks[3][1], blocks[3][2]
        if self.k is None and self.v is None and len(blocks.get(2, {})) == 2:
            self.k, self.v = blocks[2][0], blocks[2][1]

    def ok(self) -> bool:
        if self.q is None or self.k is None or self.v is None:
            return False
        y = self.site.y_ref
        return y.ndim >= 3 and self.flat(self.q.ref).shape[:2] == y.shape[:2]

    @staticmethod
    def flat(a: np.ndarray) -> np.ndarray:
        return f64(a).reshape(a.shape[0], a.shape[1], -1)

    def y(self, side: str) -> np.ndarray:
        return self.flat(self.site.y_ref if side == "ref" else self.site.y_port)

    def allowed(self, cfg: AttnConfig) -> np.ndarray | None:
        b, t = self.site.y_ref.shape[:2]
        tk = self.k.ref.shape[1]
        out = None
        if self.mask is not None:
            m = np.asarray(self.mask)
            if cfg.polarity == "additive":
                a = f64(m) > -1e4
            else:
                a = m.astype(bool) if cfg.polarity == "attend" else ~m.astype(bool)
            if a.ndim == 4:
                a = a[:, 0]
            if a.ndim == 2 and a.shape == (b, tk):
                a = a[:, None, :]
            out = np.broadcast_to(a, (b, t, tk))
        if cfg.causal:
            c = np.tril(np.ones((t, tk), dtype=bool), k=tk - t)[None]
            out = c if out is None else out & c
            out = np.broadcast_to(out, (b, t, tk))
        return out

    def run(self, cfg: AttnConfig, side: str) -> np.ndarray:
        q, k, v = ((s.ref if side == "ref" else s.port) for s in (self.q, self.k, self.v))
        return attention(
            self.flat(q),
            self.flat(k),
            self.flat(v),
            heads=cfg.heads,
            kv_heads=cfg.kv_heads,
            rope_layout=cfg.rope,
            rope_base=self.base,
            allowed=self.allowed(cfg),
            scale=cfg.scale,
            kv_map=cfg.kv_map,
            empty_rows=cfg.empty_rows,
        )

    def polarities(self) -> tuple[str, ...]:
        if self.mask is None:
            return ("attend",)
        if np.asarray(self.mask).dtype.kind == "f":
            return ("additive",)
        return ("attend", "ignore")

    def head_options(self) -> list[tuple[int, int]]:
        dq, dk = self.flat(self.q.ref).shape[-1], self.flat(self.k.ref).shape[-1]
        cfg_h = next((int(self.site.ref_cfg[k]) for k in HEAD_KEYS if isinstance(self.site.ref_cfg.get(k), int)), None)
        hs = [cfg_h] if cfg_h else [dq // hd for hd in (64, 128, 32, 16, 8, 256, 4) if dq % hd == 0]
        out = []
        for h in hs:
            hd = dq // h
            if h and dq % h == 0 and dk % hd == 0 and h % (dk // hd) == 0:
                out.append((h, dk // hd))
        return out


def _mask_like(a: np.ndarray) -> bool:
    if not isinstance(a, np.ndarray) or a.ndim < 2:
        return False
    if a.dtype.kind in "biu":
        return True
    return a.dtype.kind == "f" and a.size > 0 and float(np.min(a)) < -1e4


def _row_error(out: np.ndarray, y: np.ndarray, empty: np.ndarray | None) -> float:
    """Error on the query rows that have at least one allowed key."""
    if empty is None or not np.any(empty):
        return rel(out, y)
    keep = ~empty
    return rel(out[keep], y[keep])


def reference_config(a: AttnSite) -> tuple[AttnConfig, float] | None:
    """The configuration that reproduces the reference's context (the control)."""
    yr = a.y("ref")
    best = None
    for h, kvh in a.head_options():
        for rope in ("none", "half", "interleaved"):
            for causal in (False, True):
                for pol in a.polarities():
                    cfg = _with_empty_rows(a, AttnConfig(h, kvh, rope, causal, pol), yr)
                    err = rel(a.run(cfg, "ref"), yr)
                    if best is None or err < best[1]:
                        best = (cfg, err)
                    if err <= 3 * TAU_ATTENTION:
                        return cfg, err
    return None if best is None or best[1] > 3 * TAU_ATTENTION else best


def _with_empty_rows(a: AttnSite, cfg: AttnConfig, y: np.ndarray, side: str = "ref") -> AttnConfig:
    allowed = a.allowed(cfg)
    if allowed is None or allowed.any(-1).all():
        return cfg
    errs = {e: rel(a.run(replace(cfg, empty_rows=e), side), y) for e in ("zeros", "mean", "nan")}
    return replace(cfg, empty_rows=min(errs, key=errs.get))


def port_variants(a: AttnSite, c: AttnConfig) -> list[tuple[str, AttnConfig]]:
    out = []
    for r in ("half", "interleaved"):
        if c.rope != "none" and r != c.rope:
            out.append(("rope_layout", replace(c, rope=r)))
    if 1 < c.kv_heads < c.heads:
        out.append(("gqa_mapping", replace(c, kv_map="tile" if c.kv_map == "repeat" else "repeat")))
    allowed = a.allowed(c)
    if allowed is not None and not allowed.any(-1).all():
        out += [("mask_fill", replace(c, empty_rows=e)) for e in ("zeros", "mean", "nan") if e != c.empty_rows]
    if c.polarity in ("attend", "ignore"):
        out.append(("inverted_mask", replace(c, polarity="ignore" if c.polarity == "attend" else "attend")))
    hd = a.flat(a.q.ref).shape[-1] // c.heads
    d_model = a.site.y_ref.shape[-1]
    for s in (1.0, 1.0 / hd, 1.0 / math.sqrt(d_model)):
        if abs(s * math.sqrt(hd) - 1) > 1e-6:
            out.append(("attention_scale", replace(c, scale=s)))
    return out


@register(
    "attention",
    ids=("rope_layout", "gqa_mapping", "mask_fill", "inverted_mask", "attention_scale"),
    kinds=("segment",),
    stage=0,
)
def detect_attention(site: Site):
    """Attention configuration search: reference first (control), then the port."""
    a = AttnSite(site)
    if not a.ok():
        return None
    found = reference_config(a)
    if found is None:
        return None
    c_ref, control = found
    yp = a.y("port")
    norm_of = a.y("ref")
    scored = sorted(
        ((rel(a.run(c, "port"), yp, norm_of), pid, c) for pid, c in port_variants(a, c_ref)), key=lambda t: t[0]
    )
    if not scored:
        return None
    eh, pid, c_port = scored[0]
    # the correct configuration on the port's own q/k/v: what the port's attention code itself changed
    correct = rel(a.run(c_ref, "port"), yp, norm_of)
    if not site.confirmed(eh, control, tau=TAU_ATTENTION, correct=correct):
        return None
    ev = numbers(site, eh, control, correct)
    ev.update({"heads": c_ref.heads, "kv_heads": c_ref.kv_heads, "causal": c_ref.causal, "rope": c_ref.rope})
    return _FINDERS[pid](site, a, c_ref, c_port, ev)


def _per_head_error(a: AttnSite, c: AttnConfig) -> list[float]:
    yr, yp = a.y("ref"), a.y("port")
    b, t, d = yr.shape
    hr, hp = yr.reshape(b, t, c.heads, -1), yp.reshape(b, t, c.heads, -1)
    return [rel(hp[:, :, h], hr[:, :, h]) for h in range(c.heads)]


def _rope_finding(site, a, c_ref, c_port, ev):
    yr, yp = a.y("ref"), a.y("port")
    ev.update(
        {
            "reference_rope": c_ref.rope,
            "port_rope": c_port.rope,
            "error_at_position_0": rel(yp[:, :1], yr[:, :1]),
            "error_after_position_0": rel(yp[:, 1:], yr[:, 1:]),
        }
    )
    names = {"half": "rotate-half (HF/NeoX)", "interleaved": "interleaved (GPT-J/Meta complex)"}
    msg = (
        f"The port rotates q/k with the {names[c_port.rope]} RoPE layout where the reference uses the "
        f"{names[c_ref.rope]} one: exact at position 0, wrong after."
    )
    if c_ref.rope == "half":
        fix = {
            "flax": "use rotate_half: concatenate(-x[..., d//2:], x[..., :d//2]) with cos/sin tiled as [f, f] "
            "(or permute the q/k weight rows to the interleaved order)",
            "torch": "use rotate_half with cos/sin = cat([freqs, freqs], -1)",
        }
    else:
        fix = {
            "flax": "rotate pairs (2j, 2j+1): x[..., ::2], x[..., 1::2] (or permute q/k weight rows: "
            "w.reshape(H, 2, d//2, -1).swapaxes(1, 2))",
            "torch": "rotate interleaved pairs (torch.view_as_complex(x.reshape(..., d//2, 2)))",
        }
    return site.finding("rope_layout", msg, ev, fix)


def _gqa_finding(site, a, c_ref, c_port, ev):
    errs = _per_head_error(a, c_ref)
    ev.update(
        {
            "reference_kv_map": c_ref.kv_map,
            "port_kv_map": c_port.kv_map,
            "exact_heads": [h for h, e in enumerate(errs) if e <= 3 * TAU_ATTENTION],
        }
    )
    rep = c_ref.heads // c_ref.kv_heads
    desc = {"repeat": "h // (H/Hkv) (repeat_interleave)", "tile": "h % Hkv (tile)"}
    msg = (
        f"The port maps query head h to kv head {desc[c_port.kv_map]} where the reference uses "
        f"{desc[c_ref.kv_map]}; heads {ev['exact_heads']} coincide."
    )
    if c_ref.kv_map == "repeat":
        fix = {
            "flax": f"k = jnp.repeat(k, {rep}, axis=head_axis)  # not jnp.tile",
            "torch": f"k = k.repeat_interleave({rep}, dim=1)",
        }
    else:
        fix = {"flax": f"k = jnp.tile(k, (1, {rep}, 1, 1))  # head axis", "torch": f"k = k.repeat(1, {rep}, 1, 1)"}
    return site.finding("gqa_mapping", msg, ev, fix)


def _mask_fill_finding(site, a, c_ref, c_port, ev):
    allowed = a.allowed(c_ref)
    ev.update(
        {
            "reference_empty_rows": c_ref.empty_rows,
            "port_empty_rows": c_port.empty_rows,
            "n_fully_masked_rows": int((~allowed.any(-1)).sum()),
            "error_on_other_rows": _row_error(a.y("port"), a.y("ref"), ~allowed.any(-1)),
        }
    )
    what = {
        "zeros": "zeros (torch SDPA)",
        "mean": "the mean of V (finite fill such as finfo.min / -1e9)",
        "nan": "NaN (-inf fill)",
    }
    msg = (
        f"Query rows with no allowed key give {what[c_port.empty_rows]} in the port and "
        f"{what[c_ref.empty_rows]} in the reference; all other rows agree."
    )
    fixes = {
        "zeros": {
            "flax": "out = jnp.where(mask.any(-1, keepdims=True), out, 0.0)  # zero fully-masked rows",
            "torch": "out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)",
        },
        "mean": {
            "flax": "fill masked logits with jnp.finfo(dtype).min (not -inf), no zeroing",
            "torch": "additive mask with torch.finfo(dtype).min instead of a bool SDPA mask",
        },
        "nan": {"flax": "fill masked logits with -jnp.inf", "torch": "fill masked logits with float('-inf')"},
    }
    return site.finding("mask_fill", msg, ev, fixes[c_ref.empty_rows])


def _inverted_finding(site, a, c_ref, c_port, ev):
    msg = "The port reads the boolean attention mask the other way round (True = ignore vs True = attend)."
    fix = {
        "flax": "mask = ~key_padding_mask  # flax: True = attend",
        "torch": "key_padding_mask = ~mask  # nn.MultiheadAttention: True = ignore",
    }
    return site.finding("inverted_mask", msg, ev, fix)


def _scale_finding(site, a, c_ref, c_port, ev):
    hd = a.flat(a.q.ref).shape[-1] // c_ref.heads
    ev.update({"reference_scale": 1 / math.sqrt(hd), "port_scale": c_port.scale})
    msg = f"The port scales attention logits by {c_port.scale:.4g} where the reference uses 1/sqrt({hd})."
    fix = {
        "flax": f"logits = q @ k.T * {1 / math.sqrt(hd):.6g}  # 1/sqrt(head_dim)",
        "torch": f"scale={1 / math.sqrt(hd):.6g}  # 1/sqrt(head_dim)",
    }
    return site.finding("attention_scale", msg, ev, fix)


_FINDERS = {
    "rope_layout": _rope_finding,
    "gqa_mapping": _gqa_finding,
    "mask_fill": _mask_fill_finding,
    "inverted_mask": _inverted_finding,
    "attention_scale": _scale_finding,
}
