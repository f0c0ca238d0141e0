"""Explicit module pairs given by the user (``compare(..., mapping=...)``).

A mapping is a dict ``{torch_path: flax_path}``. A key that starts with
``re:`` is a regular expression over torch paths (matched in full) whose value
is a replacement template::

    {"embed": "tok_emb",
     r"re:blocks\\.(\\d+)\\.mlp\\.fc1": r"layers.\\1.ffn.up"}

A string or path-like argument names a JSON file holding such a dict, either
bare or under ``"pairs"`` (the format :func:`save_mapping` and
``Report.save_mapping`` write: the pairs found, plus how each was found, so
the file can be reviewed, edited and passed back).

Explicit pairs win over every automatic signal; modules they do not name are
still aligned automatically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import MappingError, did_you_mean
from .trace import Trace, canonical_path, user_path

FORMAT = "xfdiff-mapping/1"


def load_mapping(path: str | os.PathLike) -> dict[str, str]:
    """Read a mapping file (JSON) into ``{torch_path_or_rule: flax_path}``.

    Raises:
        MappingError: the file is missing, not JSON, or not a dict of strings.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise MappingError(f"mapping file {p} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MappingError(f"mapping file {p} is not valid JSON: {e}.") from None
    if isinstance(data, dict) and "pairs" in data:
        data = data["pairs"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise MappingError(
            f'mapping file {p} must hold a JSON object of torch path -> flax path strings (bare, or under "pairs").'
        )
    return data


def save_mapping(mapping: dict[str, Any], path: str | os.PathLike) -> str:
    """Write a mapping as an editable JSON file that ``compare(mapping=path)`` accepts.

    Args:
        mapping: ``{torch_path: flax_path}``, or an alignment as stored in
            ``Report.meta["alignment"]`` (``{torch_path: {"flax": ..., "how": ...,
            "confidence": ...}}``); then each pair's reason is written beside it
            under ``"found_by"`` (informational; only ``"pairs"`` is read back).
        path: the file to write.

    Returns:
        The path written, as a string.
    """
    pairs: dict[str, str] = {}
    found_by: dict[str, str] = {}
    for t, v in mapping.items():
        if t == "":
            continue  # the two roots always pair
        if isinstance(v, dict):
            pairs[t] = v["flax"]
            found_by[t] = f"{v.get('how', '?')}, confidence {float(v.get('confidence', 0.0)):.2f}"
        elif isinstance(v, str):
            pairs[t] = v
        else:
            raise MappingError(f"mapping entry {t!r}: expected a flax path string, got {type(v).__name__}.")
    doc: dict[str, Any] = {"format": FORMAT, "pairs": dict(sorted(pairs.items()))}
    if found_by:
        doc["found_by"] = dict(sorted(found_by.items()))
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
    return str(path)


def resolve_mapping(mapping: Any, tt: Trace, tf: Trace) -> dict[str, str]:
    """Expand a user mapping into exact ``{torch_path: flax_path}`` pairs of called modules.

    Raises:
        MappingError: a malformed rule, or a path that names no called module
            (with close names suggested).
    """
    if isinstance(mapping, (str, os.PathLike)):
        mapping = load_mapping(mapping)
    if not isinstance(mapping, dict):
        raise MappingError(
            f"mapping must be a dict {{torch_path: flax_path}} or a path to a JSON file, got {type(mapping).__name__}."
        )
    t_paths, f_paths = tt.paths(), tf.paths()
    t_set, f_set = set(t_paths), set(f_paths)
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise MappingError(f"mapping entries must be strings, got {key!r}: {value!r}.")
        if key.startswith("re:"):
            out.update(_expand_rule(key, value, t_paths, f_set))
            continue
        tp, fp = _resolve(key, t_set), _resolve(value, f_set)
        if tp not in t_set:
            raise MappingError(f"mapping names torch module {key!r}, which was not called." + did_you_mean(tp, t_paths))
        if fp not in f_set:
            raise MappingError(
                f"mapping names flax module {value!r}, which was not called." + did_you_mean(fp, f_paths)
            )
        out[tp] = fp
    return out


def _resolve(path: str, called: set[str]) -> str:
    """A user's path as called: as written (tap names keep ``ln_1``), else canonical (``layers_3`` -> ``layers.3``)."""
    written = user_path(path)
    return written if written in called else canonical_path(path)


def _expand_rule(key: str, template: str, t_paths: list[str], f_set: set[str]) -> dict[str, str]:
    try:
        rx = re.compile(key[3:])
    except re.error as e:
        raise MappingError(f"mapping rule {key!r} is not a valid regular expression: {e}.") from None
    out: dict[str, str] = {}
    missed: list[str] = []
    for tp in t_paths:
        if rx.fullmatch(tp):
            try:
                fp = _resolve(rx.sub(template, tp), f_set)
            except (re.error, IndexError) as e:
                raise MappingError(f"mapping rule {key!r}: replacement {template!r} is invalid: {e}.") from None
            if fp in f_set:
                out[tp] = fp
            else:
                missed.append(fp)
    if not out:
        hint = (
            f" It produced {missed[:3]}, which no called flax module has." if missed else " It matched no torch path."
        )
        raise MappingError(f"mapping rule {key!r} matched no pair of called modules.{hint}")
    return out
