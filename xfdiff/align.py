"""Pair the modules of two traces, with the reason and confidence of each pair.

Signals, strongest first:

1. an explicit mapping from the user;
2. parameter fingerprints: a port loads the same weights, so the multiset of a
   module's parameter values identifies it up to transpose or reshape
   (numel, sum, sum of squares, min, max in float64);
3. normalised names (``layers_3`` == ``layers.3``; digits must agree);
4. order and parameter shapes between already-aligned neighbours;
5. containers by their aligned descendants (the deepest Flax ancestor that
   holds exactly the partners of a torch container's children);
6. parameter-free modules (activations, dropout, rotary helpers) by name, type,
   then execution order and output shape inside an aligned parent.

Whatever stays unpaired is listed with a reason; it never blocks the rest.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher

import numpy as np

from .align_values import pair_by_values
from .fused import covered, pair_fused
from .report import Unmatched
from .stacked import pair_stacked
from .stats import fingerprint_sums
from .stats.common import to_numpy
from .stats.meet import numel
from .trace import ROOT, ParamToken, Trace, derived, parent_path


@dataclass
class Alignment:
    """Module-level pairs (torch path -> flax path) and what stayed alone."""

    pairs: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    unmatched: list[Unmatched] = field(default_factory=list)
    offset: dict[str, int] = field(default_factory=dict)  # torch path -> first flax call index
    # torch modules that are part of another (a weight-norm parametrization -> the layer it belongs to)
    absorbed: dict[str, str] = field(default_factory=dict)
    # weights-only pairs (torch path -> flax parameter path): the port holds the same weights under a path
    # no compared call owns (a parameter tree entry used in code between taps); nothing to compare, but
    # the module is accounted for (coverage, verdict.md)
    identified: dict[str, str] = field(default_factory=dict)
    # a fused projection on one side, its output-axis blocks as separate modules on the other (xfdiff.fused)
    fused: list = field(default_factory=list)

    def add(self, a: str, b: str, how: str, conf: float) -> None:
        self.pairs[a] = b
        self.how[a] = how
        self.confidence[a] = float(conf)

    @property
    def reverse(self) -> dict[str, str]:
        return {b: a for a, b in self.pairs.items()}

    def to_mapping(self) -> dict[str, str]:
        """The pairs as an editable ``mapping=`` dict (torch path -> flax path)."""
        return dict(sorted(self.pairs.items()))


# --- fingerprints ----------------------------------------------------------------------


@dataclass(frozen=True)
class ParamPrint:
    numel: int
    s1: float
    s2: float
    lo: float
    hi: float

    @property
    def informative(self) -> bool:
        return self.hi != self.lo

    def close(self, o: ParamPrint) -> bool:
        if self.numel != o.numel:
            return False
        scale = np.sqrt(max(self.s2, o.s2, 1e-30))
        return (
            abs(self.s1 - o.s1) <= 1e-5 * scale * np.sqrt(self.numel) + 1e-6 * abs(self.s1)
            and abs(self.s2 - o.s2) <= 1e-5 * max(self.s2, o.s2) + 1e-30
            and abs(self.lo - o.lo) <= 1e-5 * (abs(self.lo) + 1e-12) + 1e-7 * scale
            and abs(self.hi - o.hi) <= 1e-5 * (abs(self.hi) + 1e-12) + 1e-7 * scale
        )


# Fingerprints by array identity while the array lives: confirm_params asks again for
# arrays align() has already fingerprinted, once per candidate pair.
_PRINTS: dict[int, tuple[weakref.ref, ParamPrint]] = {}


def fingerprint(a: np.ndarray, token: ParamToken | None = None) -> ParamPrint:
    """Fingerprint of ``a``; with the token of its source, remembered across comparisons."""
    if token is not None:
        return derived(token, "fingerprint", lambda: fingerprint(a))
    hit = _PRINTS.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    p = _fingerprint(a)
    try:
        _PRINTS[id(a)] = (weakref.ref(a, lambda _, k=id(a): _PRINTS.pop(k, None)), p)
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return p


def _fingerprint(a: np.ndarray) -> ParamPrint:
    return ParamPrint(*fingerprint_sums(a))  # large float32/bf16 weights: one compiled pass (xfdiff.stats)


def fingerprint_score(pa: list[ParamPrint], pb: list[ParamPrint]) -> float:
    """Share of parameter elements (informative ones weigh 1, constant ones 0.1) that match."""
    used = [False] * len(pb)
    matched = 0.0
    total = 0.0
    for p in pa:
        w = p.numel * (1.0 if p.informative else 0.1)
        total += w
        for j, q in enumerate(pb):
            if not used[j] and p.close(q):
                used[j] = True
                matched += w
                break
    total_b = sum(q.numel * (1.0 if q.informative else 0.1) for q in pb)
    if total + total_b == 0:
        return 0.0
    return 2 * matched / (total + total_b)


def confirm_params(pa: dict[str, np.ndarray], pb: dict[str, np.ndarray], fp: float) -> tuple[float, str]:
    """Check a fingerprint match on the values themselves.

    Pairs each reference parameter with a port parameter of the same size
    whose values it becomes under a legal transform (identity, transpose,
    conv kernel layout, reshape, permutation; :func:`xfdiff.layout.param_transform`).
    Constant arrays (a freshly initialised norm) identify nothing: a pair
    confirmed only by them scores below the fingerprint threshold.

    Returns:
        ``(score, layout)``: ``fp`` scaled by the confirmed share of elements,
        and the transform of the largest parameter (``"transpose"``, ``"OIHW->HWIO"``...).
    """
    from .layout import param_transform

    used: set[str] = set()
    found: dict[str, str] = {}
    total = confirmed = 0.0
    informative_hit = False
    for va in pa.values():
        informative = numel(va) > 1 and fingerprint(va).informative
        w = numel(va) * (1.0 if informative else 0.1)
        total += w
        for nb, vb in pb.items():
            if nb not in used and numel(va) == numel(vb):
                t = param_transform(va, vb, full=False)
                if t is not None:
                    used.add(nb)
                    found[nb] = t
                    confirmed += w
                    informative_hit = informative_hit or informative
                    break
    if not informative_hit:
        return min(fp, 0.45), "identity"
    # Name the transform of the largest parameter (the kernel); a bias only reshaped says little.
    biggest = max(found, key=lambda n: numel(pb[n]))
    return fp * confirmed / total, found[biggest]


# --- names -----------------------------------------------------------------------------

_SPLIT = re.compile(r"[._/]")


def tokens(path: str) -> list[str]:
    return [t.lower() for t in _SPLIT.split(path) if t]


def name_similarity(a: str, b: str) -> float:
    """1.0 for equal normalised paths; digits (layer indices) must agree."""
    if a == b:
        return 1.0
    (wa, da), (wb, db) = _name_parts(a), _name_parts(b)
    score = _word_similarity(wa, wb)
    if da != db:
        score *= 0.3
    return score


@functools.lru_cache(maxsize=1 << 16)
def _name_parts(path: str) -> tuple[tuple, tuple]:
    """A path's words and its digits (layer indices), each in order."""
    ts = tokens(path)
    return tuple(t for t in ts if not t.isdigit()), tuple(t for t in ts if t.isdigit())


@functools.lru_cache(maxsize=1 << 16)
def _word_similarity(wa: tuple, wb: tuple) -> float:
    """Similarity of two paths' words (layer indices removed); cached: layers repeat the same words."""
    seq = SequenceMatcher(None, wa, wb).ratio() if (wa or wb) else 1.0
    last = SequenceMatcher(None, wa[-1] if wa else "", wb[-1] if wb else "").ratio()
    return 0.5 * seq + 0.5 * last


def _is_ancestor(anc: str, path: str) -> bool:
    return anc == ROOT and path != ROOT or path.startswith(anc + ".")


@functools.lru_cache(maxsize=1 << 16)
def _ancestors(path: str) -> tuple[str, ...]:
    """The paths above ``path``, deepest first (cached: every alignment walks the same paths)."""
    out = []
    p = parent_path(path)
    while p is not None:
        out.append(p)
        p = parent_path(p)
    return tuple(out)


# --- the algorithm ----------------------------------------------------------------------


def align(ta: Trace, tb: Trace, explicit: dict[str, str] | None = None) -> Alignment:
    """Pair the called modules of ``ta`` (torch side) with those of ``tb`` (flax side)."""
    al = Alignment()
    ta, al.absorbed = fold_parametrizations(ta)
    pa_paths = [p for p in ta.paths() if p not in al.absorbed]
    pb_paths = tb.paths()
    set_b = set(pb_paths)
    # Weights a called module holds as parts of its own, named by the adapter (a Keras layer's
    # variables made under a name scope of their own, e.g. Hugging Face TF embedding tables).
    parts: dict[str, list[str]] = {}
    for p in tb.meta.get("weight_parts", ()):
        if p not in set_b and tb.params.get(p) and parent_path(p) in set_b:
            parts.setdefault(parent_path(p), []).append(p)
    if parts:  # each just before its module (a module completes after what it holds)
        pb_paths = [q for p in pb_paths for q in (*parts.get(p, ()), p)]
        set_b = set(pb_paths)
    if ROOT in pa_paths and ROOT in set_b:
        al.add(ROOT, ROOT, "root", 1.0)
    for a, b in (explicit or {}).items():
        if a in set(pa_paths) and b in set_b:
            al.add(a, b, "mapping", 1.0)
    _pair_parametrised(ta, tb, pa_paths, pb_paths, al)
    _pair_same_path(ta, tb, pa_paths, pb_paths, al)
    pair_fused(ta, tb, pa_paths, pb_paths, al)
    pair_stacked(ta, tb, pa_paths, pb_paths, al)
    pair_by_values(ta, tb, pa_paths, pb_paths, al)
    _pair_containers(ta, tb, pa_paths, pb_paths, al)
    _pair_parameter_free(ta, tb, pa_paths, pb_paths, al)
    _identify_by_weights(ta, tb, pa_paths, al)
    _list_unmatched(ta, tb, pa_paths, pb_paths, al)
    return al


def _identify_by_weights(ta: Trace, tb: Trace, pa_paths: list[str], al: Alignment) -> None:
    """Torch modules left unpaired whose weights the port holds, value for value, under a path of its
    parameter tree that no paired call owns (``Alignment.identified``)."""
    fused_a, fused_b = covered(al)
    A = [a for a in pa_paths if a not in al.pairs and a not in fused_a and ta.params.get(a)]
    taken = set(al.pairs.values()) | fused_b
    B = [b for b, ps in tb.params.items() if ps and b not in taken]
    if not A or not B:
        return
    fb = {b: [fingerprint(v) for v in tb.params[b].values()] for b in B}
    by_sizes: dict[tuple, list[str]] = {}  # only the same parameter sizes can hold the same values
    for b in B:
        by_sizes.setdefault(tuple(sorted(q.numel for q in fb[b])), []).append(b)
    used: set[str] = set()
    for a in A:
        fa = [fingerprint(v) for v in ta.params[a].values()]
        if not any(q.informative and q.numel > 1 for q in fa):
            continue  # constant weights (a fresh norm) identify nothing
        best = None
        for b in by_sizes.get(tuple(sorted(q.numel for q in fa)), ()):
            if b in used or fingerprint_score(fa, fb[b]) < 0.99 or fingerprint_score(fb[b], fa) < 0.99:
                continue
            score, _ = confirm_params(ta.params[a], tb.params[b], 1.0)
            if score >= 0.99 and (best is None or name_similarity(a, b) > best[0]):
                best = (name_similarity(a, b), b)
        if best is not None:
            al.identified[a] = best[1]
            used.add(best[1])


def parametrization_owner(path: str) -> str | None:
    """The module a PyTorch parametrization belongs to (``conv.parametrizations.weight.0`` -> ``conv``)."""
    if path.startswith("parametrizations."):
        return ROOT
    head, sep, _ = path.partition(".parametrizations.")
    return head if sep else None


def fold_parametrizations(ta: Trace) -> tuple[Trace, dict[str, str]]:
    """A view of ``ta`` in which each parametrization's parameters belong to the module that owns it.

    ``weight_norm(conv)`` moves the weight into ``conv.parametrizations.weight``
    (``original0`` = g, ``original1`` = v); a port keeps both in its conv
    (``weight_g``, ``weight_v``). Folded, the conv is identified by all its
    values, and the parametrization modules are pairs of nobody.
    """
    owners = {p: o for p in ta.paths() if (o := parametrization_owner(p)) is not None}
    if not owners:
        return ta, {}
    params = {p: dict(v) for p, v in ta.params.items() if p not in owners}
    tokens = {p: dict(v) for p, v in ta.param_tokens.items() if p not in owners}
    for p, owner in owners.items():
        local = p[len(owner) + 1 :] if owner else p
        local = local.removeprefix("parametrizations.")
        for name, v in ta.params.get(p, {}).items():
            params.setdefault(owner, {})[f"{local}.{name}"] = v
            tok = ta.param_tokens.get(p, {}).get(name)
            if tok is not None:
                tokens.setdefault(owner, {})[f"{local}.{name}"] = tok
    return replace(ta, params=params, param_tokens=tokens), owners


# Recent results of _pair_parametrised, keyed by everything they depend on (see _memo_key).
_MEMO: dict[tuple, tuple[list, list, dict]] = {}
_MEMO_MAX = 8


def _memo_key(ta: Trace, tb: Trace, A: list[str], B: list[str], al: Alignment):
    """What parameter pairing depends on: the module lists, their parameters' tokens, the
    pairs fixed before it, and (for tied weights) call counts and first-call order.

    ``None`` when a parameter has no token (a numpy array can change unseen).
    """
    toks = []
    keys = []
    for trace, paths in ((ta, A), (tb, B)):
        for p in paths:
            own = trace.param_tokens.get(p, {})
            for name in trace.params[p]:
                tok = own.get(name)
                if tok is None:
                    return None, None
                toks.append(tok)
                v = trace.params[p][name]
                keys.append((p, name, tok.key, v.shape if isinstance(v, np.ndarray) else np.shape(v)))
    first = {r.path: r.order for r in reversed(ta.records)}
    calls = (
        tuple(len(tb.calls_of(b)) for b in B),
        tuple(len(ta.calls_of(a)) for a in A),
        tuple(first.get(a, 0) for a in A),
    )
    return (tuple(A), tuple(B), tuple(keys), tuple(sorted(al.pairs.items())), calls), toks


def _pair_parametrised(ta: Trace, tb: Trace, pa_paths, pb_paths, al: Alignment) -> None:
    """Pair modules that own parameters; remembered while both models' parameters are unchanged.

    Everything this step reads is in its memo key, so a repeated comparison
    (a port's code edited, its weights not) reuses the pairing exactly as
    computed the first time.
    """
    A = [p for p in pa_paths if ta.params.get(p) and p not in al.pairs]
    taken = set(al.pairs.values())
    B = [p for p in pb_paths if tb.params.get(p) and p not in taken]
    if not A or not B:
        return
    key, toks = _memo_key(ta, tb, A, B, al)
    hit = _MEMO.get(key) if key is not None else None
    if hit is not None and all(t.alive() for t in hit[0]):
        for a, b, how, conf in hit[1]:
            al.add(a, b, how, conf)
        al.offset.update(hit[2])
        return
    before, offsets_before = dict(al.pairs), dict(al.offset)
    _pair_parametrised_now(ta, tb, A, B, al)
    if key is not None:
        added = [(a, b, al.how[a], al.confidence[a]) for a, b in al.pairs.items() if a not in before]
        offsets = {a: o for a, o in al.offset.items() if offsets_before.get(a) != o}
        if len(_MEMO) >= _MEMO_MAX:
            del _MEMO[next(iter(_MEMO))]
        _MEMO[key] = (toks, added, offsets)


def _pair_parametrised_now(ta: Trace, tb: Trace, A: list[str], B: list[str], al: Alignment) -> None:
    fa = {p: [fingerprint(v, ta.param_tokens.get(p, {}).get(n)) for n, v in ta.params[p].items()] for p in A}
    fb = {p: [fingerprint(v, tb.param_tokens.get(p, {}).get(n)) for n, v in tb.params[p].items()] for p in B}
    rank_a = {p: i / max(len(A) - 1, 1) for i, p in enumerate(A)}
    rank_b = {p: i / max(len(B) - 1, 1) for i, p in enumerate(B)}
    # Candidate pairs: a shared informative fingerprint, or a shared last name token.
    bucket: dict[tuple, list[str]] = {}
    for p in B:
        for q in fb[p]:
            bucket.setdefault((q.numel, round(q.s2, 2)), []).append(p)
    by_last: dict[str, list[str]] = {}
    for p in B:
        w = [t for t in tokens(p) if not t.isdigit()]
        by_last.setdefault(w[-1] if w else "", []).append(p)
    scored = []
    layouts: dict[tuple[str, str], str] = {}
    for a in A:
        cands: set[str] = set()
        for q in fa[a]:
            cands.update(bucket.get((q.numel, round(q.s2, 2)), []))
        w = [t for t in tokens(a) if not t.isdigit()]
        cands.update(by_last.get(w[-1] if w else "", []))
        # Constant parameters alone (freshly initialised norms) identify nothing: confirm_params
        # would cap such a match below 0.5 without looking at the values.
        a_informative = any(q.informative and q.numel > 1 for q in fa[a])
        for b in cands:
            fp = fingerprint_score(fa[a], fb[b])
            if fp >= 0.5 and not a_informative:
                fp, layouts[(a, b)] = min(fp, 0.45), "identity"
            elif fp >= 0.5:  # statistics agree: confirm on the values under a legal parameter transform
                fp, layouts[(a, b)] = confirm_params(ta.params[a], tb.params[b], fp)
            nm = name_similarity(a, b)
            order = 1.0 - abs(rank_a[a] - rank_b[b])
            if fp >= 0.5 or (nm >= 0.6 and _shape_sig(ta.params[a]) == _shape_sig(tb.params[b])):
                scored.append((2 * fp + nm + 0.5 * order, fp, nm, a, b))
    scored.sort(key=lambda s: -s[0])
    used_b: set[str] = set()
    for _total, fp, nm, a, b in scored:
        if a in al.pairs or b in used_b:
            continue
        how = "fingerprint+name" if fp >= 0.5 and nm >= 0.6 else "fingerprint" if fp >= 0.5 else "name"
        if fp >= 0.5 and layouts.get((a, b), "identity") != "identity":
            how += f" ({layouts[(a, b)]})"
        # fp >= 0.99 after confirm_params: the values themselves agree, which names cannot add much to.
        conf = 0.95 + 0.05 * nm if fp >= 0.99 else 0.5 * fp + 0.5 * nm
        al.add(a, b, how, min(1.0, conf))
        used_b.add(b)
    _pair_by_order(ta, tb, A, B, al)
    _pair_tied(ta, tb, A, fa, fb, al)


def _pair_same_path(ta: Trace, tb: Trace, pa_paths, pb_paths, al: Alignment) -> None:
    """A module with parameters whose port of the same path holds none (a tied decoder applied
    with the embedding's matrix, a kernel passed in): the path and output shape decide."""
    from .layout import candidates

    taken = set(al.pairs.values())
    set_b = {b for b in pb_paths if b not in taken and not tb.params.get(b)}
    for a in pa_paths:
        if a in al.pairs or a not in set_b or not ta.params.get(a):
            continue
        sa, sb = _first_shape(ta, a), _first_shape(tb, a)
        if sa is not None and sb is not None and candidates(sa, sb):
            al.add(a, a, "name (port holds no parameters)", 0.6)
            set_b.discard(a)


def _pair_tied(ta: Trace, tb: Trace, A: list[str], fa: dict, fb: dict, al: Alignment) -> None:
    """Torch modules sharing one weight (tied embeddings) vs one Flax module called several times.

    Each torch module gets the Flax module's calls in execution order
    (``Alignment.offset`` says where its calls start).
    """
    first = {r.path: r.order for r in reversed(ta.records)}
    paired_b = set(al.pairs.values())
    for b, prints in fb.items():
        n_b = len(tb.calls_of(b))
        if b not in paired_b or n_b < 2:
            continue  # only a paired module called several times can stand for several torch modules
        tied = [a for a in A if fingerprint_score(fa[a], prints) >= 0.99 and (a not in al.pairs or al.pairs[a] == b)]
        if len(tied) < 2:
            continue
        offset = 0
        for a in sorted(tied, key=lambda p: first.get(p, 0)):
            if offset >= n_b:
                break
            if a not in al.pairs:
                al.add(a, b, "tied weights", 0.9)
            al.offset[a] = offset
            offset += len(ta.calls_of(a))


def _shape_sig(params: dict[str, np.ndarray]) -> list[tuple]:
    return sorted(tuple(sorted(np.shape(v))) for v in params.values())


def _pair_by_order(ta: Trace, tb: Trace, A: list[str], B: list[str], al: Alignment) -> None:
    """Between consecutive aligned modules, pair leftovers with equal parameter shapes in order."""
    used_b = set(al.pairs.values())
    pos_b = {p: i for i, p in enumerate(B)}
    last_b = -1
    pending: list[str] = []

    def flush(upto: int) -> None:
        free_b = [p for p in B[last_b + 1 : upto] if p not in used_b]
        j = 0
        for a in pending:
            sig = _shape_sig(ta.params[a])
            while j < len(free_b) and _shape_sig(tb.params[free_b[j]]) != sig:
                j += 1
            if j < len(free_b):
                b = free_b[j]
                al.add(a, b, "order+shape", 0.5)
                used_b.add(b)
                j += 1

    for a in A:
        if a in al.pairs and al.pairs[a] in pos_b:
            flush(pos_b[al.pairs[a]])
            pending = []
            last_b = max(last_b, pos_b[al.pairs[a]])
        elif a not in al.pairs:
            pending.append(a)
    flush(len(B))


def _pair_containers(ta: Trace, tb: Trace, pa_paths, pb_paths, al: Alignment) -> None:
    set_b = set(pb_paths)
    # Paired paths under each ancestor (pairing order kept), so a container's descendants are a lookup.
    below_a: dict[str, list[str]] = {}
    below_b: dict[str, dict[str, None]] = {}

    def index(a: str, b: str) -> None:
        for anc in _ancestors(a):
            below_a.setdefault(anc, []).append(a)
        for anc in _ancestors(b):
            below_b.setdefault(anc, {})[b] = None

    for a, b in al.pairs.items():
        index(a, b)
    rev = al.reverse
    taken = set(rev)
    for a in sorted(pa_paths, key=lambda p: -p.count(".") if p else 1):
        if a in al.pairs or a == ROOT:
            continue
        desc = below_a.get(a)
        if not desc:
            continue
        partners = [al.pairs[d] for d in desc]
        options = []
        for b in _ancestors(partners[0]):
            under_b = below_b.get(b, {})
            if b not in set_b or not all(p in under_b for p in partners):
                continue
            inside = [rev[p] for p in under_b]
            if any(not _is_ancestor(a, t) for t in inside):
                break  # b also holds partners of modules outside a: no exclusive counterpart above
            if b not in taken:
                options.append((name_similarity(a, b), b.count(".") if b else -1, b, len(inside)))
        if options:
            _, _, b, n_inside = max(options)
            al.add(a, b, "descendants", min(1.0, 0.5 + 0.5 * len(desc) / max(n_inside, 1)))
            index(a, b)
            rev[b] = a
            taken.add(b)


def _first_shape(trace: Trace, path: str) -> tuple | None:
    for r in trace.calls_of(path):
        for v in r.float_outputs().values():
            return tuple(v.shape)
    return None


def _first_float(d: dict) -> np.ndarray | None:
    for v in d.values():
        a = np.asarray(to_numpy(v))  # a device capture's tensor is copied to the host; numpy as is
        if a.dtype.kind == "f":
            return np.asarray(a, dtype=np.float64)
    return None


def _values_agree(ta: Trace, tb: Trace, a: str, b: str, rel: float = 1e-2) -> bool:
    ra, rb = ta.calls_of(a), tb.calls_of(b)
    if not ra or not rb:
        return False
    for side_a, side_b in ((ra[0].inputs, rb[0].inputs), (ra[0].outputs, rb[0].outputs)):
        x, y = _first_float(side_a), _first_float(side_b)
        if x is None or y is None or x.shape != y.shape:
            return False
        den = np.linalg.norm(x) or 1.0
        if not np.linalg.norm(x - y) <= rel * den:
            return False
    return True


def _nearest_paired(path: str, pairs: dict[str, str]) -> str | None:
    for anc in _ancestors(path):
        if anc in pairs:
            return anc
    return None


def _pair_parameter_free(ta: Trace, tb: Trace, pa_paths, pb_paths, al: Alignment) -> None:
    rev = al.reverse
    groups_a: dict[str, list[str]] = {}
    for a in pa_paths:
        if a in al.pairs or ta.params.get(a):
            continue
        anc = _nearest_paired(a, al.pairs)
        if anc is not None:
            groups_a.setdefault(al.pairs[anc], []).append(a)
    groups_b: dict[str, list[str]] = {}
    for b in pb_paths:
        if b in rev or tb.params.get(b):
            continue
        anc = _nearest_paired(b, rev)
        if anc is not None:
            groups_b.setdefault(anc, []).append(b)
    for fb_parent, la in groups_a.items():
        lb = [b for b in groups_b.get(fb_parent, [])]
        if not lb:
            continue
        free = list(lb)
        # 1) same last name or same type
        for a in list(la):
            # the whole last component: ``first_dropout`` is not ``last_dropout``
            ta_last = a.rsplit(".", 1)[-1].lower()
            for b in free:
                tb_last = b.rsplit(".", 1)[-1].lower()
                same_name = ta_last == tb_last and not ta_last.isdigit()
                same_type = ta.module_types.get(a, "").lower() == tb.module_types.get(b, "").lower()
                if (same_name or same_type and a.count(".") - b.count(".") in (-1, 0, 1)) and _first_shape(
                    ta, a
                ) == _first_shape(tb, b):
                    al.add(a, b, "name" if same_name else "type+order", 0.8 if same_name else 0.6)
                    free.remove(b)
                    la.remove(a)
                    break
        # 2) order and output shape, confirmed by values: a parameter-free module has
        # no weights to identify it, and an activation and the dropout after it share
        # shapes, so inputs *and* outputs must agree closely.
        j = 0
        for a in la:
            sa = _first_shape(ta, a)
            k = j
            while k < len(free) and not (_first_shape(tb, free[k]) == sa and _values_agree(ta, tb, a, free[k])):
                k += 1
            if k < len(free) and sa is not None:
                al.add(a, free[k], "order+shape", 0.4)
                j = k + 1


def _list_unmatched(ta: Trace, tb: Trace, pa_paths, pb_paths, al: Alignment) -> None:
    rev = al.reverse
    fused_a, fused_b = covered(al)
    for a in pa_paths:
        if a not in al.pairs and a not in al.identified and a not in fused_a:
            has = bool(ta.params.get(a))
            reason = (
                "no Flax module holds the same parameters or a similar name"
                if has
                else "parameter-free and no Flax module of the same name, type or output shape inside the aligned parent"
            )
            al.unmatched.append(Unmatched("torch", a, ta.module_types.get(a, "?"), reason, has))
    for b in pb_paths:
        if b not in rev and b not in fused_b:
            has = bool(tb.params.get(b))
            reason = (
                "no PyTorch module holds the same parameters or a similar name"
                if has
                else "parameter-free and no PyTorch module of the same name, type or output shape inside the aligned parent"
            )
            al.unmatched.append(Unmatched("flax", b, tb.module_types.get(b, "?"), reason, has))
