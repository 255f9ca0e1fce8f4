"""Strict reader for map files: the only code that parses untrusted bytes.

A map file is data only. Reading one never executes code (safetensors, no pickle), and
every field is checked before anything is built: header size and JSON, the metadata schema,
the exact tensor key set, every tensor's dtype, shape and finiteness, band ordering. Any
failure is a :class:`~act_core.mapformat.MapFileError` that says what is wrong. The result is
a :class:`MapParts` (validated metadata and transports) from which
:meth:`act_core.mapfile.TransportMap.load` builds the map.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .mapformat import FORMAT, FORMAT_VERSION, MAX_METADATA_BYTES, METHODS, TENSOR_KEYS, MapFileError, check_module_name
from .transport import BAND_NAMES, LAYOUTS, UnitTransport, normalize_support

MAX_FILE_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_UNITS = 1 << 22


@dataclass
class MapParts:
    """A validated map file: its metadata (without the per-module table) and, per module in
    file order, ``(name, transport, layout, tuple-output index)``."""

    meta: Dict[str, Any]
    modules: List[Tuple[str, UnitTransport, str, Optional[int]]]


def read_map_file(path: Path) -> MapParts:
    if not path.exists():
        raise FileNotFoundError(f"map file {str(path)!r} does not exist")
    if not path.is_file():
        raise MapFileError(f"{str(path)!r} is not a file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise MapFileError(f"{path.name}: {size} bytes is larger than any map file ({MAX_FILE_BYTES} max)")
    try:
        return read_map_bytes(path.read_bytes())
    except MapFileError as e:
        raise MapFileError(f"{path.name}: {e}") from None


def _fail(msg: str):
    raise MapFileError(msg)


def _header(data: bytes) -> Dict[str, Any]:
    if len(data) < 8:
        _fail(f"not a safetensors file: {len(data)} bytes is too short (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        _fail(f"not a valid safetensors file: header claims {n} bytes but the file has {len(data) - 8} (truncated or corrupt)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(f"not a valid safetensors file: header is not JSON ({e.__class__.__name__})")
    if not isinstance(header, dict):
        _fail("not a valid safetensors file: header is not a JSON object")
    return header


def _metadata(header: Dict[str, Any]) -> Dict[str, Any]:
    md = header.get("__metadata__")
    if not isinstance(md, dict) or "act" not in md:
        _fail("no act-steering metadata: this safetensors file is not a transport map (a LoRA or checkpoint?)")
    raw = md["act"]
    if not isinstance(raw, str) or len(raw) > MAX_METADATA_BYTES:
        _fail(f"metadata must be a JSON string of at most {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        _fail(f"metadata is not valid JSON: {e.msg} at position {e.pos}")
    if not isinstance(meta, dict):
        _fail("metadata must be a JSON object")
    return meta


def _check_meta(meta: Dict[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        _fail(f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    v = meta.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        _fail(f"format_version must be a positive integer, got {v!r}")
    if v > FORMAT_VERSION:
        _fail(f"map format version {v} is newer than this act-steering reads ({FORMAT_VERSION}); upgrade act-steering")
    if meta.get("bands") != list(BAND_NAMES):
        _fail(f"band list {meta.get('bands')!r} differs from the supported {list(BAND_NAMES)}")
    for key in ("method", "pooling"):
        if not isinstance(meta.get(key), str):
            _fail(f"metadata field {key!r} must be a string")
    if meta["method"] not in METHODS + ("mixed",):
        _fail(f"unknown method {meta['method']!r} (known: {', '.join(METHODS)})")
    arch = meta.get("architecture")
    if arch is not None and (not isinstance(arch, str) or len(arch) > 256):
        _fail("metadata field 'architecture' must be a short string or null")
    s = meta.get("default_strength", 1.0)
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
        _fail(f"default_strength must be a finite number, got {s!r}")
    try:
        normalize_support(meta.get("default_support"))
    except ValueError as e:
        _fail(str(e))
    mods = meta.get("modules")
    if not isinstance(mods, dict) or not mods:
        _fail("metadata lists no modules")


def _check_entry(name: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        _fail(f"module {name!r}: metadata entry must be an object")
    missing = [k for k in ("units", "layout", "output_index", "method", "default_support") if k not in entry]
    if missing:
        _fail(f"module {name!r}: metadata entry lacks {', '.join(missing)}")
    u = entry.get("units")
    if not isinstance(u, int) or isinstance(u, bool) or not 0 < u <= MAX_UNITS:
        _fail(f"module {name!r}: units must be an integer in 1..{MAX_UNITS}, got {u!r}")
    if entry.get("layout") not in LAYOUTS:
        _fail(f"module {name!r}: unknown layout {entry.get('layout')!r}")
    k = entry.get("output_index")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < 64):
        _fail(f"module {name!r}: output_index must be null or a small non-negative integer, got {k!r}")
    if entry.get("method") not in METHODS:
        _fail(f"module {name!r}: unknown method {entry.get('method')!r}")
    try:
        normalize_support(entry.get("default_support"))
    except ValueError as e:
        _fail(f"module {name!r}: {e}")


def _tensor(tensors, key: str, dtype: torch.dtype, shape) -> torch.Tensor:
    t = tensors[key]
    if t.dtype != dtype:
        _fail(f"tensor {key!r} has dtype {t.dtype}, expected {dtype}")
    if tuple(t.shape) != tuple(shape):
        _fail(f"tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)} (the metadata's unit count)")
    if t.is_floating_point() and not torch.isfinite(t).all():
        _fail(f"tensor {key!r} contains NaN or inf")
    return t


def read_map_bytes(data: bytes) -> MapParts:
    header = _header(data)
    meta = _metadata(header)
    _check_meta(meta)
    modules = meta["modules"]
    expected = set()
    for name, entry in modules.items():
        try:
            check_module_name(name)
        except MapFileError as e:
            _fail(str(e))
        _check_entry(name, entry)
        expected.update(f"{name}/{k}" for k in TENSOR_KEYS)
    present = {k for k in header if k != "__metadata__"}
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        _fail(f"tensor set does not match the metadata: missing {missing[:3]}, unexpected {extra[:3]}")
    try:
        from safetensors.torch import load

        tensors = load(data)
    except Exception as e:  # the Rust parser reports malformed offsets, dtypes, sizes
        _fail(f"corrupt tensor data ({type(e).__name__}: {str(e)[:200]})")
    parts = MapParts({k: v for k, v in meta.items() if k not in ("modules", "bands", "format")}, [])
    nb = len(BAND_NAMES)
    for name, entry in modules.items():
        d = entry["units"]
        omega = _tensor(tensors, f"{name}/omega", torch.float32, (d,))
        beta = _tensor(tensors, f"{name}/beta", torch.float32, (d,))
        bands = _tensor(tensors, f"{name}/bands", torch.float32, (nb, 2, d))
        flags = _tensor(tensors, f"{name}/flags", torch.uint8, (d,))
        if (bands[:, 0] > bands[:, 1]).any():
            _fail(f"module {name!r}: a support band has its lower bound above its upper bound")
        if (flags > 3).any():
            _fail(f"module {name!r}: unknown unit flags")
        t = UnitTransport(omega, beta, bands, flags, method=entry["method"], default_support=entry["default_support"])
        parts.modules.append((name, t, entry["layout"], entry["output_index"]))
    return parts
