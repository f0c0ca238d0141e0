"""Report, LayerDiff and Finding: the result of :func:`xfdiff.compare`.

A report is plain data (numbers, strings, small numpy arrays) so it can be
saved, loaded, rendered as text, HTML or a dashboard without either framework
installed. Its rendering methods delegate to :mod:`xfdiff.views`, which never
imports this module at run time (see that package's docstring for the import
rule); saving delegates to :mod:`xfdiff.storage` and :mod:`xfdiff.mapping`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import LayerNotFound, did_you_mean
from .mapping import save_mapping
from .trace import display_path
from .views.html_report import write_html
from .views.notebook import notebook_card
from .views.text import summary_text

STATUSES = ("ok", "diverged", "nonfinite", "shape_mismatch", "unmatched")


@dataclass
class LayerDiff:
    """One aligned module call (or one unmatched module) and its error.

    The error columns (``max_abs`` ...) measure the port against the reference
    on the layer's output as propagated through the whole model. ``local_*``
    measure the same layer when it is fed the reference's own inputs (teacher
    forcing): that is the error the layer's code adds by itself.

    ``floor`` is what float rounding alone does to the layer's own step (the
    reference's RMSE against a float64 recomputation, or the port dtype's when
    lower); ``floor_error`` the port's own RMSE against the same float64
    result. Both are None where the row was within the plain tolerance
    (see :mod:`xfdiff.floor`).
    """

    torch_path: str | None
    flax_path: str | None
    call_index: int = 0
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    rel_l2: float = float("nan")
    cosine: float = float("nan")
    local_max_abs: float | None = None
    status: str = "ok"
    # --- beyond the firm contract -------------------------------------------------
    local_rel_l2: float | None = None
    local_mean_abs: float | None = None
    local_tol_needed: float | None = None
    local_status: str | None = None
    input_max_abs: float | None = None
    blame_order: float | None = None
    tol_needed: float = float("nan")
    frac_outside: float = float("nan")
    n_nonfinite: int = 0
    atol: float = float("nan")
    rtol: float = float("nan")
    torch_type: str | None = None
    flax_type: str | None = None
    torch_shape: tuple | None = None
    flax_shape: tuple | None = None
    torch_dtype: str | None = None
    flax_dtype: str | None = None
    output_key: str | None = None
    layout: str = "identity"
    match: str = ""
    confidence: float = 0.0
    order: int = 0
    depth: int = 0
    note: str = ""
    floor: float | None = None
    floor_error: float | None = None
    # paired by output values, but its inputs do not correspond to the reference call's: no own error measured
    unverified_inputs: bool = False
    # splice confirmation (xfdiff.splice): the final output's max_abs with this row's output
    # replaced by the reference's, the share of the final error that removes, and the share
    # the suggested fix removes (its finding's recomputation spliced in instead)
    splice_final_after: float | None = None
    splice_share: float | None = None
    fix_share: float | None = None
    # the final row when it holds logits over a vocabulary (xfdiff.lm_metrics)
    lm_kl_mean: float | None = None
    lm_kl_max: float | None = None
    lm_top1: float | None = None
    lm_top5: float | None = None
    lm_near_ties: int | None = None
    detail: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    local_detail: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> str:
        """Reference-side path if there is one, else the port's."""
        p = self.torch_path if self.torch_path is not None else self.flax_path
        return display_path(p)

    @property
    def label(self) -> str:
        base = self.path
        return base if self.call_index == 0 else f"{base}#{self.call_index}"

    @property
    def decisive_error(self) -> float:
        """Local max_abs where measured, else propagated max_abs."""
        return self.local_max_abs if self.local_max_abs is not None else self.max_abs

    def scalar_dict(self) -> dict[str, Any]:
        """All fields except the arrays, JSON-ready."""
        out = {}
        for f in fields(self):
            if f.name in ("detail", "local_detail"):
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass
class Finding:
    """A diagnosed pitfall at a layer, with the numbers that support it."""

    pitfall: str
    torch_path: str | None
    flax_path: str | None
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    call_index: int = 0
    confidence: str = "confirmed"
    splice_share: float | None = None  # share of the final error removed by the reference's output here
    fix_share: float | None = None  # share removed by the port's output recomputed under the fix
    fix_final_after: float | None = None  # the final output's max_abs with the fix spliced in

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Unmatched:
    """A module present on one side only, and why it was not paired."""

    side: str
    path: str
    module_type: str
    reason: str
    has_params: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Report:
    """What :func:`xfdiff.compare` found.

    Attributes:
        layers: one :class:`LayerDiff` per aligned call, in execution
            (completion) order, followed by nothing else; unmatched modules are
            listed in :attr:`unmatched`.
        findings: diagnosed pitfalls, most decisive first.
        meta: tolerance, reference side, frameworks, versions, notes.
    """

    layers: list[LayerDiff] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    final: LayerDiff | None = None

    # --- the answer ---------------------------------------------------------------
    @property
    def verdict(self) -> str:
        """``"match"``, ``"diverged"`` or ``"inconclusive"`` (see :mod:`xfdiff.verdict`)."""
        return self._verdict()["verdict"]

    @property
    def verdict_reason(self) -> str:
        """One line saying why :attr:`verdict` is what it is."""
        return self._verdict()["reason"]

    @property
    def coverage(self) -> dict[str, Any]:
        """Share of the reference's parameterised modules (``modules``) and parameters (``parameters``) compared."""
        return dict(self.meta.get("coverage") or {})

    @property
    def boundaries(self) -> list[dict[str, Any]]:
        """Boundary differences: rows that differ but agree again downstream (label, agrees_again_at, why)."""
        return list(self.meta.get("boundaries") or [])

    def _verdict(self) -> dict[str, str]:
        v = self.meta.get("verdict")
        if isinstance(v, dict) and v.get("verdict") in ("match", "diverged", "inconclusive"):
            return {"verdict": v["verdict"], "reason": str(v.get("reason", ""))}
        from .verdict import decide

        return decide(self)

    @property
    def first_divergence(self) -> LayerDiff | None:
        """The earliest call whose own (local) error exceeds tolerance and its rounding floor.

        None unless :attr:`verdict` is ``"diverged"``.

        "Own" error includes the code of a module between its children: when
        a child's input is already off under teacher forcing while every
        earlier call was within tolerance, the parent is the culprit. Rows
        where local error could not be measured fall back to propagated error
        (their ``note`` says so).
        """
        blamed = [lyr for lyr in self.layers if lyr.blame_order is not None]
        if blamed and self.verdict == "diverged":
            return min(blamed, key=lambda lyr: lyr.blame_order)
        return None

    @property
    def diverged(self) -> bool:
        """True when any aligned layer (or the final output) is outside tolerance."""
        final_bad = self.final is not None and self.final.status != "ok"
        return final_bad or any(lyr.status in ("diverged", "nonfinite", "shape_mismatch") for lyr in self.layers)

    @property
    def splice(self) -> dict[str, Any] | None:
        """Splice confirmation of the out-of-tolerance sites (:mod:`xfdiff.splice`), or None.

        Keys: ``final_before`` (the final output's max_abs), ``sites`` (labels,
        in order), ``first_suffices`` (replacing the first divergence's output
        brings the final output within tolerance), ``sufficient_set`` (the
        sites whose outputs together do, or None), ``set_final_after``,
        ``runs`` and ``seconds`` (the re-runs' cost).
        """
        return self.meta.get("splice")

    @property
    def lm(self) -> dict[str, Any] | None:
        """Language-model metrics at the final logits (:mod:`xfdiff.lm_metrics`), or None."""
        return self.meta.get("lm")

    @property
    def reference(self) -> str:
        return self.meta.get("reference", "torch")

    def layer(self, path: str, call_index: int = 0) -> LayerDiff:
        """Look a row up by torch or flax path (``KeyError`` suggests close names)."""
        for lyr in self.layers:
            if path in (lyr.torch_path, lyr.flax_path) and lyr.call_index == call_index:
                return lyr
        names = [p for lyr in self.layers for p in (lyr.torch_path, lyr.flax_path) if p]
        raise LayerNotFound(f"No layer {path!r} (call {call_index}) in this report." + did_you_mean(path, names))

    # --- views ----------------------------------------------------------------------
    def to_dataframe(self):
        """One row per LayerDiff (pandas)."""
        import pandas as pd

        rows = [lyr.scalar_dict() for lyr in self.layers]
        cols = [f.name for f in fields(LayerDiff) if f.name not in ("detail", "local_detail")]
        return pd.DataFrame(rows, columns=cols)

    def summary(self, max_rows: int = 12) -> str:
        """Plain-text summary for a terminal."""
        return summary_text(self, max_rows=max_rows)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        fd = self.first_divergence
        where = fd.label if fd else "none"
        return f"<xfdiff.Report {self.verdict}, {len(self.layers)} layers, first divergence: {where}, {len(self.findings)} finding(s)>"

    def _repr_html_(self) -> str:
        """The notebook card: verdict, findings and an inline SVG depth plot (no plotly.js)."""
        return notebook_card(self)

    def to_html(self, path) -> str:
        """Write a self-contained HTML report (opens offline) and return its path."""
        return write_html(self, path)

    def save(self, path) -> str:
        """Save as ``.xfd`` (a zip of JSON + safetensors; no pickle). Returns the path."""
        from .storage import save_report  # storage builds Reports, so it imports this module: not at module level

        return save_report(self, path)

    def save_mapping(self, path) -> str:
        """Write the module pairs found as an editable JSON mapping; ``compare(mapping=path)`` reads it back.

        Each pair's reason and confidence are written beside it (``found_by``).
        Returns the path.
        """
        return save_mapping(self.meta.get("alignment", {}), path)
