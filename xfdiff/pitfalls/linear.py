"""Linear/Dense layers: weight layout (P12) and missing or extra bias (P25).

``torch.nn.Linear.weight`` is ``(out, in)``; ``flax.linen.Dense.kernel`` is
``(in, out)``. A square matrix loads without a shape error when the transpose
is forgotten, and ``W.reshape(in, out)`` loads too. Hugging Face GPT-2's
``Conv1D`` already stores ``(in, out)``.
https://flax.readthedocs.io/en/stable/migrating/convert_pytorch_to_flax.html
"""

from __future__ import annotations

import numpy as np

from .numerics import f64, linear, rel
from .registry import register
from .sites import Site, numbers


class LinearSite:
    """A Linear/Dense call: input ``x`` (..., in), weight ``(out, in)``, bias."""

    def __init__(self, site: Site):
        self.site = site
        self.w = site.ref_params.get("weight")
        self.b = site.ref_params.get("bias")
        self.x = None
        if site.kind != "call" or self.w is None or self.w.ndim != 2 or "conv" in site.ref_type.lower():
            return
        x = site.main_input()
        if x is not None and x.shape[-1] == self.w.shape[1] and site.y_ref.shape[-1] == self.w.shape[0]:
            self.x = x

    def ok(self) -> bool:
        return self.x is not None

    def control(self, fmt: str = "fp32") -> float:
        return rel(linear(self.x, self.w, self.b, fmt), self.site.y_ref)

    def explain(self, y_h: np.ndarray) -> float:
        return rel(self.site.y_port, y_h, self.site.y_ref)


def _variants(lin: LinearSite) -> list[tuple[str, str, np.ndarray]]:
    """(pitfall id, description, recomputed output) for the layout and bias hypotheses."""
    x, w, b = f64(lin.x), f64(lin.w), None if lin.b is None else f64(lin.b)
    out_dim, in_dim = w.shape
    bias = 0.0 if b is None else b
    out = []
    if out_dim == in_dim:
        out.append(("transposed_weight", "kernel = weight (not weight.T)", x @ w + bias))
    out.append(("transposed_weight", "kernel = weight.reshape(in, out)", x @ w.reshape(in_dim, out_dim) + bias))
    if b is not None:
        out.append(("missing_bias", "bias dropped", x @ w.T))
        out.append(("missing_bias", "bias added twice", x @ w.T + 2 * b))
    pb = lin.site.port_params.get("bias")
    if b is None and pb is not None and pb.shape == (out_dim,):
        out.append(("missing_bias", "extra bias", x @ w.T + f64(pb)))
    return out


@register("linear", ids=("transposed_weight", "missing_bias"), stage=0)
def detect_linear(site: Site):
    """Layout and bias hypotheses of a Linear/Dense layer (pitfalls.md P12, P25)."""
    lin = LinearSite(site)
    if not lin.ok():
        return None
    control = lin.control()
    if control > 3 * site.tau:
        return None
    scored = sorted(((lin.explain(y), pid, what) for pid, what, y in _variants(lin)), key=lambda t: t[0])
    eh, pid, what = scored[0]
    if not site.confirmed(eh, control):
        return None
    ev = numbers(site, eh, control)
    ev["variant"] = what
    ev.update(_weight_evidence(lin))
    if pid == "missing_bias":
        return _bias_finding(site, lin, what, ev)
    msg = (
        "The port multiplies by the Linear weight without transposing it: torch stores (out, in), "
        f"flax Dense kernels are (in, out) ({what})."
    )
    fix = {
        "flax": "kernel = weight.T  # torch (out, in) -> flax (in, out)",
        "torch": "linear.weight.copy_(torch.from_numpy(kernel.T))  # flax (in, out) -> torch (out, in)",
    }
    return site.finding("transposed_weight", msg, ev, fix)


def _bias_finding(site: Site, lin: LinearSite, what: str, ev: dict):
    delta = f64(site.y_ref) - f64(site.y_port)
    flat = delta.reshape(-1, delta.shape[-1])
    ev["delta_std_over_tokens"] = float(flat.std(axis=0).max())
    if lin.b is not None:
        ev["delta_minus_bias"] = float(np.abs(flat.mean(axis=0) - f64(lin.b)).max())
    if what == "extra bias":
        msg = "The port adds a bias that the reference layer does not have (its output is shifted at every token)."
        fix = {
            "flax": "nn.Dense(features, use_bias=False)",
            "torch": "nn.Linear(in_features, out_features, bias=False)",
        }
    elif what == "bias dropped":
        msg = "The port's Linear/Dense has no bias: its output is off by exactly the reference bias at every token."
        fix = {
            "flax": "nn.Dense(features, use_bias=True) and load the bias",
            "torch": "nn.Linear(in_features, out_features, bias=True) and load the bias",
        }
    else:
        msg = "The port adds the Linear bias twice."
        fix = {"flax": "add the bias once (nn.Dense already adds it)", "torch": "add the bias once"}
    return site.finding("missing_bias", msg, ev, fix)


def _weight_evidence(lin: LinearSite) -> dict:
    """Compare the port's own parameters with the reference weight (a loading bug shows there)."""
    pw = lin.site.port_params.get("weight")
    out = {"port_has_bias": "bias" in lin.site.port_params}
    if pw is not None and pw.shape == lin.w.shape[::-1]:
        out["port_weight_equals_weight_T"] = bool(np.allclose(f64(pw), f64(lin.w).T, rtol=1e-6, atol=1e-7))
    if pw is not None and pw.shape == lin.w.shape:
        out["port_weight_matches"] = bool(np.allclose(f64(pw), f64(lin.w), rtol=1e-6, atol=1e-7))
        if lin.w.shape[0] == lin.w.shape[1]:
            out["port_weight_is_transposed"] = bool(np.allclose(f64(pw), f64(lin.w).T, rtol=1e-6, atol=1e-7))
    x = f64(lin.x).reshape(-1, lin.w.shape[1])
    if x.shape[0] > x.shape[1] + 1:  # enough tokens: the port's effective weight by least squares
        a = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        sol, *_ = np.linalg.lstsq(a, lin.site.y_port.reshape(x.shape[0], -1), rcond=None)
        w_eff = sol[:-1].T
        nw = np.linalg.norm(f64(lin.w))
        out["w_eff_vs_weight"] = float(np.linalg.norm(w_eff - f64(lin.w)) / nw)
        if lin.w.shape[0] == lin.w.shape[1]:
            out["w_eff_vs_weight_T"] = float(np.linalg.norm(w_eff - f64(lin.w).T) / nw)
    return out
