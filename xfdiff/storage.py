"""Saving and loading reports: a zip holding JSON and safetensors, never pickle.

Layout of an ``.xfd`` file (a zip archive):

- ``report.json``: schema version, meta, layers (scalars), findings, unmatched.
- ``arrays.safetensors``: the small per-layer arrays (histograms, heatmaps, ...)
  keyed ``<row>/<detail|local_detail>/<name>``.

Loading validates every field it reads, so a truncated, corrupted, hostile or
newer-version file raises :class:`~xfdiff.errors.ReportFileError` and nothing
in it is executed.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ReportFileError
from .report import STATUSES, Finding, LayerDiff, Report, Unmatched

SCHEMA_VERSION = 1
FORMAT = "xfdiff-report"
_MAX_JSON = 256 * 1024 * 1024
_MAX_ARRAYS = 2 * 1024 * 1024 * 1024
_ALLOWED_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I8", "U8", "BOOL"}


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return {"__float__": "nan"}
        if math.isinf(v):
            return {"__float__": "inf" if v > 0 else "-inf"}
        return v
    if isinstance(v, (np.floating,)):
        return _jsonable(float(v))
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def _unjson(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"__float__"}:
            return float(v["__float__"])
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    return v


def report_to_payload(report: Report) -> tuple[dict, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    rows = []
    for i, lyr in enumerate(report.layers):
        rows.append(_jsonable(lyr.scalar_dict()))
        for kind in ("detail", "local_detail"):
            for name, arr in getattr(lyr, kind).items():
                arrays[f"{i}/{kind}/{name}"] = np.ascontiguousarray(np.asarray(arr))
    final = None
    if report.final is not None:
        final = _jsonable(report.final.scalar_dict())
        for name, arr in report.final.detail.items():
            arrays[f"final/detail/{name}"] = np.ascontiguousarray(np.asarray(arr))
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "meta": _jsonable(report.meta),
        "layers": rows,
        "final": final,
        "findings": [_jsonable(f.to_dict()) for f in report.findings],
        "unmatched": [_jsonable(u.to_dict()) for u in report.unmatched],
    }
    return doc, arrays


def save_report(report: Report, path: str | os.PathLike) -> str:
    """Write ``report`` to ``path`` atomically (a temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(report_bytes(report))
    os.replace(tmp, path)
    return str(path)


def _bad(path, what: str) -> ReportFileError:
    return ReportFileError(
        f"{path}: {what}. The file is not a readable xfdiff report; re-create it with "
        "Report.save(path) or `xfdiff` from the run that produced it."
    )


def load_report(path: str | os.PathLike) -> Report:
    """Read a report written by :func:`save_report`."""
    path = Path(path)
    if not path.exists():
        raise ReportFileError(f"{path}: no such file. Check the path; reports are written by Report.save().")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "report.json" not in names:
                raise _bad(path, "report.json is missing from the archive")
            info = zf.getinfo("report.json")
            if info.file_size > _MAX_JSON:
                raise _bad(path, "report.json is implausibly large")
            raw = zf.read("report.json")
            blob = b""
            if "arrays.safetensors" in names:
                ainfo = zf.getinfo("arrays.safetensors")
                if ainfo.file_size > _MAX_ARRAYS:
                    raise _bad(path, "arrays.safetensors is implausibly large")
                blob = zf.read("arrays.safetensors")
    except ReportFileError:
        raise
    except Exception as e:  # zipfile, zlib, lzma and bz2 each raise their own kinds on damaged data
        head = path.read_bytes()[:2]
        if (
            head[:1] == b"\x80"
            and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
            or path.suffix in (".pkl", ".pickle")
        ):
            raise _bad(path, "it looks like a pickle, which xfdiff never loads") from None
        raise _bad(path, f"not a valid zip archive ({type(e).__name__}: {e}); it may be truncated") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad(path, f"report.json is not valid JSON ({e})") from None
    return _doc_to_report(path, doc, _load_arrays(path, blob))


def _load_arrays(path, blob: bytes) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    if len(blob) < 8:
        raise _bad(path, "arrays.safetensors is truncated")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len <= 0 or 8 + header_len > len(blob):
        raise _bad(path, "arrays.safetensors has a broken header")
    try:
        header = json.loads(blob[8 : 8 + header_len])
        for k, v in header.items():
            if k != "__metadata__" and v.get("dtype") not in _ALLOWED_DTYPES:
                raise _bad(path, f"array {k!r} has unsupported dtype {v.get('dtype')!r}")
        from safetensors.numpy import load as st_load

        return st_load(blob)
    except ReportFileError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise _bad(path, f"arrays.safetensors could not be read ({type(e).__name__}: {e})") from None


def _typed(path, value, types, what):
    if not isinstance(value, types):
        raise _bad(path, f"{what} has the wrong type ({type(value).__name__})")
    return value


_LAYER_FIELDS = {f.name: f for f in fields(LayerDiff)}
_SIMPLE = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "tuple": (tuple,)}


def _fits(annotation: Any, value: Any) -> bool:
    """Whether a JSON value fits a dataclass field annotation such as ``float | None``."""
    for part in (p.strip() for p in str(annotation).split("|")):
        if part == "Any" or part == "None" and value is None or part.startswith("dict") and isinstance(value, dict):
            return True
        kinds = _SIMPLE.get(part)
        if kinds is None or not isinstance(value, kinds) or isinstance(value, bool) and part != "bool":
            continue
        if part == "tuple" and not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            continue
        return True
    return False


def _check_fields(path, cls: type, values: dict, what: str) -> dict:
    """Refuse values whose type does not fit ``cls``'s field (a views' format call would fail later)."""
    types = {f.name: f.type for f in fields(cls)}
    for name, value in values.items():
        if not _fits(types[name], value):
            raise _bad(path, f"{what} field {name!r} has the wrong type ({type(value).__name__})")
    return values


def _layer_from(path, row: dict, arrays: dict, prefix: str) -> LayerDiff:
    _typed(path, row, dict, "a layer row")
    kwargs: dict[str, Any] = {}
    for name, value in row.items():
        if name not in _LAYER_FIELDS or name in ("detail", "local_detail"):
            continue  # unknown fields from a compatible writer are ignored
        if isinstance(value, list):
            value = tuple(value)
        if value is not None and not isinstance(value, (str, int, float, bool, tuple)):
            raise _bad(path, f"layer field {name!r} has the wrong type")
        kwargs[name] = value
    for key in ("torch_path", "flax_path"):
        if key not in kwargs:
            raise _bad(path, f"a layer row lacks {key!r}")
    if kwargs.get("status", "ok") not in STATUSES:
        raise _bad(path, f"unknown layer status {kwargs.get('status')!r}")
    lyr = LayerDiff(**_check_fields(path, LayerDiff, kwargs, "layer"))
    for kind in ("detail", "local_detail"):
        pre = f"{prefix}/{kind}/"
        setattr(lyr, kind, {k[len(pre) :]: v for k, v in arrays.items() if k.startswith(pre)})
    return lyr


# Types of the meta entries the views read; other entries are kept as loaded.
_META_TYPES = {
    "tolerance": dict,
    "reference": str,
    "notes": list,
    "alignment": dict,
    "torch_model": str,
    "flax_model": str,
    "flax_framework": str,
    "torch_meta": dict,
    "flax_meta": dict,
}


def _check_meta(path, meta: dict) -> dict:
    for key, kind in _META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise _bad(path, f"meta entry {key!r} has the wrong type ({type(meta[key]).__name__})")
    tol = meta.get("tolerance", {})
    if any(not _fits("float | None", tol.get(k)) for k in ("atol", "rtol")):
        raise _bad(path, "meta tolerance holds a non-number")
    if not all(isinstance(n, str) for n in meta.get("notes", [])):
        raise _bad(path, "meta notes must be strings")
    if not all(isinstance(v, dict) for v in meta.get("alignment", {}).values()):
        raise _bad(path, "meta alignment entries must be objects")
    return meta


def _doc_to_report(path, doc: Any, arrays: dict[str, np.ndarray]) -> Report:
    _typed(path, doc, dict, "the document")
    if doc.get("format") != FORMAT:
        raise _bad(path, "it is not an xfdiff report (format marker missing)")
    ver = doc.get("schema_version")
    if not isinstance(ver, int):
        raise _bad(path, "schema_version is missing")
    if ver > SCHEMA_VERSION:
        raise ReportFileError(
            f"{path}: written by a newer xfdiff (schema {ver}, this one reads up to "
            f"{SCHEMA_VERSION}). Upgrade xfdiff: pip install -U xfdiff."
        )
    try:
        doc = _unjson(doc)
        layers = [
            _layer_from(path, row, arrays, str(i))
            for i, row in enumerate(_typed(path, doc.get("layers", []), list, "layers"))
        ]
        final = doc.get("final")
        final = _layer_from(path, final, arrays, "final") if final is not None else None
        findings = []
        for f in _typed(path, doc.get("findings", []), list, "findings"):
            _typed(path, f, dict, "a finding")
            known = {
                k: f[k]
                for k in (
                    "pitfall",
                    "torch_path",
                    "flax_path",
                    "message",
                    "evidence",
                    "fix",
                    "call_index",
                    "confidence",
                    "splice_share",
                    "fix_share",
                    "fix_final_after",
                )
                if k in f
            }
            if not isinstance(known.get("pitfall"), str) or not isinstance(known.get("message", ""), str):
                raise _bad(path, "a finding lacks its pitfall id or message")
            _check_fields(path, Finding, known, "finding")
            findings.append(Finding(**{"torch_path": None, "flax_path": None, "message": "", **known}))
        unmatched = []
        for u in _typed(path, doc.get("unmatched", []), list, "unmatched"):
            _typed(path, u, dict, "an unmatched entry")
            known = {k: u[k] for k in ("side", "path", "module_type", "reason", "has_params") if k in u}
            unmatched.append(Unmatched(**_check_fields(path, Unmatched, known, "unmatched entry")))
        meta = _check_meta(path, _typed(path, doc.get("meta", {}), dict, "meta"))
    except ReportFileError:
        raise
    except (TypeError, ValueError, KeyError, RecursionError) as e:
        raise _bad(path, f"a field is malformed ({e})") from None
    return Report(layers=layers, findings=findings, unmatched=unmatched, meta=meta, final=final)


def report_bytes(report: Report) -> bytes:
    """The ``.xfd`` file content as bytes (used by the dashboard's download)."""
    buf = io.BytesIO()
    from safetensors.numpy import save as st_save

    doc, arrays = report_to_payload(report)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.json", json.dumps(doc, allow_nan=False))
        zf.writestr("arrays.safetensors", st_save(arrays) if arrays else b"")
    return buf.getvalue()
