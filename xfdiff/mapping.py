"""Explicit module pairs given by the user (``compare(..., mapping=...)``).

A mapping is a dict ``{torch_path: flax_path}``. A key that starts with
``re:`` is a regular expression over torch paths whose value is a replacement
template (``{"re:blocks\\.(\\d+)\\.fc1": r"layers_\\1.up"}``). A string or
path-like argument names a JSON file holding such a dict (the format that
:func:`save_mapping` writes).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import MappingError, did_you_mean
from .trace import Trace, canonical_path


def load_mapping(path: str | os.PathLike) -> dict[str, str]:
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
        raise MappingError(f"mapping file {p} must hold a JSON object of torch path -> flax path strings.")
    return data


def save_mapping(mapping: dict[str, str], path: str | os.PathLike) -> str:
    """Write a mapping as JSON that ``compare(mapping=path)`` accepts."""
    Path(path).write_text(json.dumps({"pairs": mapping}, indent=2, sort_keys=True) + "\n")
    return str(path)


def resolve_mapping(mapping: Any, tt: Trace, tf: Trace) -> dict[str, str]:
    """Expand a user mapping into exact ``{torch_path: flax_path}`` pairs of called modules."""
    if isinstance(mapping, (str, os.PathLike)):
        mapping = load_mapping(mapping)
    if not isinstance(mapping, dict):
        raise MappingError(
            f"mapping must be a dict {{torch_path: flax_path}} or a path to a JSON file, got {type(mapping).__name__}."
        )
    t_paths, f_paths = tt.paths(), tf.paths()
    f_set = set(f_paths)
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise MappingError(f"mapping entries must be strings, got {key!r}: {value!r}.")
        if key.startswith("re:"):
            try:
                rx = re.compile(key[3:])
            except re.error as e:
                raise MappingError(f"mapping rule {key!r} is not a valid regular expression: {e}.") from None
            hits = 0
            for tp in t_paths:
                if rx.fullmatch(tp):
                    fp = canonical_path(rx.sub(value, tp))
                    if fp in f_set:
                        out[tp] = fp
                        hits += 1
            if hits == 0:
                raise MappingError(f"mapping rule {key!r} matched no pair of called modules.")
            continue
        tp, fp = canonical_path(key), canonical_path(value)
        if tp not in set(t_paths):
            raise MappingError(f"mapping names torch module {key!r}, which was not called." + did_you_mean(tp, t_paths))
        if fp not in f_set:
            raise MappingError(f"mapping names flax module {value!r}, which was not called." + did_you_mean(fp, f_paths))
        out[tp] = fp
    return out
