"""Strict reader for map files: the only code that parses untrusted bytes.

A map file is data only. Reading one never executes code (safetensors, no pickle), and
every field is checked before anything is built, with the rules of :mod:`act_core.mapformat`:
the file is a regular file of at most ``MAX_FILE_BYTES``; the 8-byte header length is checked
against the file size before the header is read; the header and metadata JSON are parsed with
limits (nesting depth, number size, no NaN); the metadata follows its schema; the tensor set
matches the metadata exactly, every tensor's dtype, shape and offsets are checked and the
data must be exactly as long as the header says before any of it is read; then every value
is range-checked (ω, β, band order, flags) in a few passes over all modules at once. Any
failure is a :class:`~act_core.mapformat.MapFileError` that says what is wrong (a missing file
is a ``FileNotFoundError``).

Cost: linear in the file size. A file in the writer's canonical layout is recognised without
parsing its tensor index (the index is rebuilt from the metadata and compared), so a map with
tens of thousands of modules loads in about a second; a file from another writer (e.g.
safetensors' own ``save``) is parsed in full.

The result is a :class:`MapParts` (validated metadata and transports) from which
:meth:`act_core.mapfile.TransportMap.load` builds the map.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .mapformat import (FLOATS_PER_UNIT, HEADER_PREFIX, MAX_FILE_BYTES, MAX_HEADER_BYTES, TENSOR_KEYS, MapFileError,
                        ModuleEntry, canonical_index, check_values, data_bytes, no_gc, parse_json, read_metadata)
from .transport import BAND_NAMES, UnitTransport

#: safetensors dtype names this reader knows (for messages), and the two a map uses
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_NP = {"F32": "<f4", "U8": "u1"}


@dataclass
class MapParts:
    """A validated map file: its metadata (without the per-module table) and, per module in
    file order, ``(name, transport, layout, tuple-output index)``."""

    meta: Dict[str, Any]
    modules: List[Tuple[str, UnitTransport, str, Optional[int]]]


def _fail(msg: str):
    raise MapFileError(msg)


# -- files -----------------------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _shown(path: Path) -> str:
    s = str(path)
    return repr(s) if len(s) <= 200 else repr(s[:100] + "..." + s[-60:])


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def read_map_file(path: Path) -> MapParts:
    """Read and check the map file at ``path`` (see the module docstring)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"map file {_shown(path)} does not exist") from None
    except (OSError, ValueError) as e:  # name too long, permission, loop of links, NUL in the name ...
        raise MapFileError(f"cannot open map file {_shown(path)}: {_why(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MapFileError(f"{_shown(path)} is {_kind(st.st_mode)}, not a map file")
    if st.st_size > MAX_FILE_BYTES:
        raise MapFileError(f"{path.name}: {st.st_size} bytes is larger than any map file ({MAX_FILE_BYTES} max)")
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO swapped in after the stat does not block the open
    except (OSError, ValueError) as e:
        raise MapFileError(f"cannot open map file {_shown(path)}: {_why(e)}") from None
    try:
        with open(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise MapFileError(f"it is {_kind(st.st_mode)}, not a map file")
            if st.st_size > MAX_FILE_BYTES:
                raise MapFileError(f"{st.st_size} bytes is larger than any map file ({MAX_FILE_BYTES} max)")
            with no_gc():
                return _read(_FileSource(f, st.st_size))
    except MapFileError as e:
        raise MapFileError(f"{path.name}: {e}") from None
    except OSError as e:  # EIO, EISDIR, EINVAL from special files ...
        raise MapFileError(f"{path.name}: could not read the file: {_why(e)}") from None


def read_map_bytes(data) -> MapParts:
    """Read and check a map held in memory (``bytes``, ``bytearray`` or ``memoryview``)."""
    with no_gc():
        return _read(_BytesSource(memoryview(data).cast("B")))


class _FileSource:
    def __init__(self, f, size: int):
        self.f, self.size, self.pos = f, size, 0

    def read_into(self, buf: bytearray) -> None:
        view, got = memoryview(buf), 0
        while got < len(buf):
            k = self.f.readinto(view[got:])
            if not k:
                _fail(f"the file ended after {self.pos + got} of its {self.size} bytes (it changed while being read?)")
            got += k
        self.pos += got


class _BytesSource:
    def __init__(self, data: memoryview):
        self.data, self.size, self.pos = data, len(data), 0

    def read_into(self, buf: bytearray) -> None:
        buf[:] = self.data[self.pos : self.pos + len(buf)]
        self.pos += len(buf)


def _read(src) -> MapParts:
    if src.size < 8:
        _fail(f"not a safetensors file: {src.size} bytes is too short (truncated?)")
    head = bytearray(8)
    src.read_into(head)
    (n,) = struct.unpack("<Q", head)
    rest = src.size - 8
    if n > MAX_HEADER_BYTES:
        _fail(f"not a valid safetensors file: the header length field says {n} bytes, more than the "
              f"{MAX_HEADER_BYTES} a map file may have (corrupt, or not a safetensors file)")
    if n > rest:
        _fail(f"not a valid safetensors file: the header length field says {n} bytes but only {rest} bytes follow it "
              "(truncated or corrupt)")
    raw = bytearray(n)
    src.read_into(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(f"not a valid safetensors file: the header is not UTF-8 text (byte {e.start})")
    meta, entries, specs, expected = _header(text)
    have = rest - n
    if have != expected:
        _fail(f"the file holds {have} bytes of tensor data but its header describes {expected} (truncated or corrupt)")
    buf = bytearray(expected)
    src.read_into(buf)
    return _build(meta, entries, specs, buf)


# -- the header --------------------------------------------------------------------------------------

_Spec = Tuple[str, Tuple[int, ...], int, int]  # dtype, shape, start, end


def _header(text: str):
    """``(meta, entries, specs, data length)``; ``specs`` is None for the canonical layout."""
    if text.startswith(HEADER_PREFIX + '"'):
        try:
            meta_text, end = scanstring(text, len(HEADER_PREFIX) + 1, True)
        except ValueError:
            meta_text = None
        if meta_text is not None:
            meta, entries = read_metadata(meta_text)
            if text[end:].rstrip(" ") == "}," + canonical_index(entries) + "}":
                return meta, entries, None, data_bytes(entries)
    return _generic_header(text)


def _generic_header(text: str):
    header = parse_json(text, "the safetensors header")
    if not isinstance(header, dict):
        _fail("not a valid safetensors file: header is not a JSON object")
    md = header.get("__metadata__")
    if not isinstance(md, dict) or "act" not in md:
        _fail("no act-steering metadata: this safetensors file is not a transport map (a LoRA or checkpoint?)")
    if not isinstance(md["act"], str):
        _fail("the act-steering metadata must be a JSON string")
    meta, entries = read_metadata(md["act"])
    expected = {f"{e.name}/{k}": (e.units, k) for e in entries for k in TENSOR_KEYS}
    present = set(header) - {"__metadata__"}
    if present != set(expected):
        missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
        _fail(f"tensor set does not match the metadata: missing {_few(missing)}, unexpected {_few(extra)}")
    nb = len(BAND_NAMES)
    specs: Dict[str, _Spec] = {}
    for key, (d, kind) in expected.items():
        want_dtype, want_shape = ("U8", (d,)) if kind == "flags" else ("F32", (nb, 2, d) if kind == "bands" else (d,))
        specs[key] = _spec(key, header[key], want_dtype, want_shape)
    pos = 0
    for dtype, shape, start, end in sorted(specs.values(), key=lambda s: (s[2], s[3])):
        if start != pos:
            _fail(f"corrupt tensor offsets: tensor data {'overlaps' if start < pos else 'has a gap'} at byte {min(start, pos)}")
        pos = end
    return meta, entries, specs, pos


def _few(keys) -> str:
    return repr([k if len(k) <= 80 else k[:77] + "..." for k in keys[:3]]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")


def _spec(key: str, spec: Any, want_dtype: str, want_shape: tuple) -> _Spec:
    if not isinstance(spec, dict):
        _fail(f"tensor {key!r}: its header entry must be an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype != want_dtype:
        shown = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        _fail(f"tensor {key!r} has dtype {str(shown)[:40]}, expected {_DTYPES[want_dtype]}")
    if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in shape):
        _fail(f"tensor {key!r}: shape must be a list of integers")
    if tuple(shape) != want_shape:
        _fail(f"tensor {key!r} has shape {tuple(shape)}, expected {want_shape} (the metadata's unit count)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in offsets)):
        _fail(f"tensor {key!r}: data_offsets must be two non-negative integers")
    start, end = offsets
    size = int(np.prod(want_shape)) * (1 if want_dtype == "U8" else 4)
    if end - start != size:
        _fail(f"tensor {key!r}: data_offsets {offsets} span {end - start} bytes but its shape needs {size}")
    return want_dtype, want_shape, start, end


# -- the tensors ---------------------------------------------------------------------------------------

def _array(buf: bytearray, dtype: str, offset: int, count: int) -> torch.Tensor:
    a = np.frombuffer(buf, dtype=_NP[dtype], count=count, offset=offset)
    if not a.dtype.isnative or offset % a.dtype.itemsize:  # a big-endian host, or data off its alignment
        a = a.astype(a.dtype.newbyteorder("="), copy=True)
    return torch.from_numpy(a)


def _build(meta, entries: List[ModuleEntry], specs: Optional[Dict[str, _Spec]], buf: bytearray) -> MapParts:
    nb = len(BAND_NAMES)
    units = [e.units for e in entries]
    if specs is None:  # canonical: every module's omega, beta, bands, then every module's flags
        total = sum(units)
        pieces = torch.split(_array(buf, "F32", 0, FLOATS_PER_UNIT * total), [s for d in units for s in (d, d, 2 * nb * d)])
        omegas, betas = pieces[0::3], pieces[1::3]
        bands = [p.view(nb, 2, d) for p, d in zip(pieces[2::3], units)]
        flags = torch.split(_array(buf, "U8", 4 * FLOATS_PER_UNIT * total, total), units)
    else:
        def get(key):
            dtype, shape, start, end = specs[key]
            return _array(buf, dtype, start, (end - start) // (1 if dtype == "U8" else 4)).view(shape)

        omegas = [get(f"{e.name}/omega") for e in entries]
        betas = [get(f"{e.name}/beta") for e in entries]
        bands = [get(f"{e.name}/bands") for e in entries]
        flags = [get(f"{e.name}/flags") for e in entries]
    check_values([e.name for e in entries], omegas, betas, bands, flags)
    parts = MapParts({k: v for k, v in meta.items() if k not in ("modules", "bands", "format")}, [])
    for e, o, b, bd, f in zip(entries, omegas, betas, bands, flags):
        parts.modules.append((e.name, UnitTransport._checked(o, b, bd, f, e.method, e.default_support), e.layout,
                              e.output_index))
    return parts


__all__ = ["MapParts", "read_map_file", "read_map_bytes"]
