"""The map file format: its constants, limits, errors and the rules a stored map obeys.

Both ends use these rules: :mod:`act_core.mapfile` checks a map with them before it writes it
(a :class:`MapWriteError` names what cannot be stored) and :mod:`act_core.mapfile_reader`
checks every file with them (a :class:`MapFileError` names what is wrong), so what ``save``
writes, ``load`` accepts, and what ``load`` refuses, ``save`` refuses first.

A map file is a safetensors file. Its header is one JSON object::

    {"__metadata__": {"act": "<the map's metadata, a JSON document>"},
     "<module>/omega": {"dtype": "F32", "shape": [D], "data_offsets": [s, e]}, ... }

and per module four tensors: ``omega`` and ``beta`` (float32 ``(D,)``), ``bands`` (float32
``(len(BAND_NAMES), 2, D)``) and ``flags`` (uint8 ``(D,)``). The writer lays the data out in
one canonical order (:func:`canonical_layout`): every module's ``omega, beta, bands`` in map
order (all float32, 8-byte aligned), then every module's ``flags``; the reader recognises that
layout without parsing the tensor index (a file from another writer is parsed in full).

Limits (each refused with an error that names it, at save and at load):

=========================  =====================================================
file size                  ``MAX_FILE_BYTES`` (4 GiB)
safetensors header         ``MAX_HEADER_BYTES`` (100 MB, safetensors' own limit)
metadata JSON (UTF-8)      ``MAX_METADATA_BYTES`` (16 MiB)
modules                    1 .. ``MAX_MODULES`` (100,000)
units per module           1 .. ``MAX_UNITS`` (4,194,304)
module name                ``MAX_NAME_CHARS`` (512) characters of ``[A-Za-z0-9_.-]``
architecture               ``MAX_ARCHITECTURE_CHARS`` (256) characters, or null
tuple output index         null or 0 .. ``MAX_OUTPUT_INDEX`` (63)
JSON nesting               ``MAX_JSON_DEPTH`` (32) levels
JSON numbers               ``MAX_NUMBER_CHARS`` (40) characters, finite (no NaN/Infinity)
strings                    valid Unicode (no lone surrogate)
default strength           finite, ``|λ| ≤ STRENGTH_LIMIT`` (1000)
ω, β, bands                see :mod:`act_core.transport` (``|ω| ≤ 1e8``, ``|β| ≤ 1e15``,
                           finite ordered bands)
=========================  =====================================================
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import re
from bisect import bisect_right
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .transport import (BAND_NAMES, BETA_LIMIT, LAYOUTS, OMEGA_LIMIT, STRENGTH_LIMIT, check_strength, normalize_support,
                        range_problem)

FORMAT = "act-steering/transport-map"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 100_000_000
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_MODULES = 100_000
MAX_UNITS = 1 << 22
MAX_NAME_CHARS = 512
MAX_ARCHITECTURE_CHARS = 256
MAX_OUTPUT_INDEX = 63
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 40
#: the estimators a stored map may come from (``mixed`` only at map level, for combined maps)
METHODS = ("linear", "mean", "gaussian", "aura")
#: tensors stored per module, ``"<module>/<key>"``
TENSOR_KEYS = ("omega", "beta", "bands", "flags")
#: bytes per unit: omega, beta (float32), bands (float32 x 2 x len(BAND_NAMES)), flags (uint8)
FLOATS_PER_UNIT = 2 + 2 * len(BAND_NAMES)
BYTES_PER_UNIT = 4 * FLOATS_PER_UNIT + 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_ENTRY_KEYS = ("units", "layout", "output_index", "method", "default_support")


class MapFileError(ValueError):
    """A map file is unreadable, malformed, or does not fit the model it is used with."""


class MapWriteError(OSError):
    """Saving a map failed (disk full, no permission, a map that cannot be stored, ...); any
    existing file is unchanged."""

    @classmethod
    def wrap(cls, path: Path, e: OSError) -> "MapWriteError":
        why = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some disk space or save to another folder"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "choose a writable folder or fix its permissions"
        else:
            fix = "check the folder and try again"
        return cls(e.errno, f"could not write map {str(path)!r}: {why}; the existing file (if any) is unchanged and "
                            f"no partial file was left; {fix}")

    @classmethod
    def refused(cls, problem: str) -> "MapWriteError":
        """The map breaks a format rule (``problem``, from a :class:`MapFileError`): nothing is written."""
        return cls(f"cannot save this map: {problem}; nothing was written")


def _fail(msg: str):
    raise MapFileError(msg)


@contextlib.contextmanager
def no_gc():
    """Pause Python's cyclic garbage collector: reading or writing a map allocates one small,
    acyclic object group per module, and with tens of thousands of modules the collector's
    full passes over a growing heap would make the cost grow faster than the map."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def check_module_name(name: str) -> str:
    """``name`` if it is a dotted module path (letters, digits, ``_``, ``-``), else MapFileError."""
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not _NAME_RE.match(name) or ".." in name:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80]) + "..."
        raise MapFileError(
            f"invalid module name {shown}: module names are dotted paths of at most {MAX_NAME_CHARS} letters, digits, "
            "'_', '.' and '-' (no '..', no '/', not absolute)"
        )
    return name


# -- JSON with limits ------------------------------------------------------------------------------

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_KEEP = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_FIELD_BEFORE = re.compile(r'"([^"\\]{1,60})"\s*:\s*-?(?:NaN|Infinity)\b')
_LONG_NUMBER = re.compile(r"[-+.eE0-9]{%d,}" % (MAX_NUMBER_CHARS + 1))


def json_depth(text: str, skeleton: Optional[str] = None) -> int:
    """Nesting depth of a JSON text (brackets outside strings), computed without recursion;
    ``skeleton``: the text without its strings, when already at hand."""
    brackets = _KEEP.sub("", _STRING.sub("", text) if skeleton is None else skeleton)
    if not brackets:
        return 0
    b = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    return int(np.cumsum(np.where((b == 91) | (b == 123), 1, -1)).max())


class _Refused(Exception):
    pass


def _parse_float(s: str) -> float:
    v = float(s)
    if v in (float("inf"), float("-inf")):
        raise _Refused(f"the number {s} (beyond the float range)")
    return v


def _parse_constant(s: str):
    raise _Refused(f"{s} (not a JSON number)")


def parse_json(text: str, what: str) -> Any:
    """``json.loads`` with limits: at most ``MAX_JSON_DEPTH`` levels, numbers of at most
    ``MAX_NUMBER_CHARS`` characters, finite, no ``NaN``/``Infinity``; MapFileError naming
    ``what`` and the problem otherwise (never a RecursionError or a bare ValueError)."""
    skeleton = _STRING.sub("", text)  # depth and number size are read outside strings, before parsing
    depth = json_depth(text, skeleton)
    if depth > MAX_JSON_DEPTH:
        _fail(f"{what} is nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    long = _LONG_NUMBER.search(skeleton)
    if long:
        _fail(f"{what} holds a number of {len(long.group())} characters (at most {MAX_NUMBER_CHARS}): "
              f"{long.group()[:20]}...")
    try:
        return json.loads(text, parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as e:
        field = _FIELD_BEFORE.search(text, 0) if str(e).split(" ")[0].lstrip("-") in ("NaN", "Infinity") else None
        _fail(f"{what} holds {e}" + (f" in field {field.group(1)!r}" if field else ""))
    except json.JSONDecodeError as e:
        _fail(f"{what} is not valid JSON: {e.msg} at position {e.pos}")
    except (RecursionError, ValueError, OverflowError) as e:  # belt and braces
        _fail(f"{what} cannot be parsed ({type(e).__name__})")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def metadata_text(meta: Dict[str, Any]) -> str:
    """The writer's JSON text of ``meta``, or MapFileError when it cannot be stored as JSON."""
    try:
        text = json.dumps(meta, ensure_ascii=False)  # NaN / Infinity are written, then refused by the reader's rule
    except (TypeError, ValueError, RecursionError) as e:
        _fail(f"the metadata cannot be stored as JSON ({e}): keep meta values to strings, finite numbers, booleans, "
              "lists and dicts")
    return text


# -- the metadata document -------------------------------------------------------------------------

class ModuleEntry(NamedTuple):
    """One module of the metadata's table, checked."""

    name: str
    units: int
    layout: str
    output_index: Optional[int]
    method: str
    default_support: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_metadata(text: str) -> tuple:
    """Parse and check the metadata JSON text; returns ``(meta, entries)``. The one rule for both
    ends: the writer runs it on the text it is about to store."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        _fail(f"the metadata is {size} bytes of JSON, more than the {MAX_METADATA_BYTES} a map file may hold "
              f"(at most {MAX_MODULES} modules; keep extra metadata small)")
    meta = parse_json(text, "the metadata")
    if not isinstance(meta, dict):
        _fail("the metadata must be a JSON object")
    if _has_lone_surrogate(text) or (_SURROGATE_ESCAPE.search(text)
                                     and _has_lone_surrogate(json.dumps(meta, ensure_ascii=False))):
        _fail("the metadata holds a lone surrogate (an unpaired \\ud800-\\udfff escape): strings must be valid Unicode")
    return meta, check_metadata(meta)


def check_metadata(meta: Dict[str, Any]) -> List[ModuleEntry]:
    """The schema of the metadata document (the ``modules`` table included); MapFileError
    naming the first problem."""
    if meta.get("format") != FORMAT:
        _fail(f"metadata format is {_short(meta.get('format'))}, expected {FORMAT!r}")
    v = meta.get("format_version")
    if not _is_int(v) or v < 1:
        _fail(f"format_version must be a positive integer, got {_short(v)}")
    if v > FORMAT_VERSION:
        _fail(f"map format version {v} is newer than this act-steering reads ({FORMAT_VERSION}); upgrade act-steering")
    if meta.get("bands") != list(BAND_NAMES):
        _fail(f"band list {_short(meta.get('bands'))} differs from the supported {list(BAND_NAMES)}")
    for key in ("method", "pooling"):
        if not isinstance(meta.get(key), str):
            _fail(f"metadata field {key!r} must be a string")
    if meta["method"] not in METHODS + ("mixed",):
        _fail(f"unknown method {_short(meta['method'])} (known: {', '.join(METHODS)})")
    arch = meta.get("architecture")
    if arch is not None and (not isinstance(arch, str) or len(arch) > MAX_ARCHITECTURE_CHARS):
        _fail(f"metadata field 'architecture' must be a string of at most {MAX_ARCHITECTURE_CHARS} characters or null")
    s = meta.get("default_strength", 1.0)
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        _fail(f"default_strength must be a number, got {_short(s)}")
    try:
        check_strength(s, "default_strength")
        normalize_support(meta.get("default_support"))
    except ValueError as e:
        _fail(str(e))
    mods = meta.get("modules")
    if not isinstance(mods, dict) or not mods:
        _fail("metadata lists no modules (a map needs at least one)")
    if len(mods) > MAX_MODULES:
        _fail(f"the map has {len(mods)} modules, more than the supported {MAX_MODULES}")
    entries = []
    for name, entry in mods.items():
        check_module_name(name)
        entries.append(_check_entry(name, entry))
    return entries


def _check_entry(name: str, entry: Any) -> ModuleEntry:
    if not isinstance(entry, dict):
        _fail(f"module {name!r}: metadata entry must be an object")
    try:
        u, layout, k, method, support = (entry["units"], entry["layout"], entry["output_index"], entry["method"],
                                         entry["default_support"])
    except KeyError:
        _fail(f"module {name!r}: metadata entry lacks {', '.join(k for k in _ENTRY_KEYS if k not in entry)}")
    if type(u) is not int or not 0 < u <= MAX_UNITS:
        _fail(f"module {name!r}: units must be an integer in 1..{MAX_UNITS}, got {_short(u)}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        _fail(f"module {name!r}: unknown layout {_short(layout)} (known: {', '.join(LAYOUTS)})")
    if k is not None and (not _is_int(k) or not 0 <= k <= MAX_OUTPUT_INDEX):
        _fail(f"module {name!r}: output_index must be null or an integer in 0..{MAX_OUTPUT_INDEX}, got {_short(k)}")
    if not isinstance(method, str) or method not in METHODS:
        _fail(f"module {name!r}: unknown method {_short(method)}")
    try:
        support = normalize_support(support)
    except ValueError as e:
        _fail(f"module {name!r}: {e}")
    return ModuleEntry(name, u, layout, k, method, support)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


# -- the numbers -----------------------------------------------------------------------------------

def check_values(names: Sequence[str], omegas, betas, bands, flags) -> None:
    """Every module's ω, β, bands and flags within the ranges of :mod:`act_core.transport`
    (a few passes over all modules at once); MapFileError naming the module and unit."""
    if not names:
        return
    units = [int(o.shape[0]) for o in omegas]
    starts = np.cumsum([0] + units[:-1]).tolist()
    # quick screens over every module at once; the slow exact check runs on a failing module only
    om, be, fl = torch.cat(list(omegas)), torch.cat(list(betas)), torch.cat(list(flags))
    ba = torch.cat(list(bands), dim=2)
    bad = None
    for v, limit in ((om, OMEGA_LIMIT), (be, BETA_LIMIT)):
        ok = v.abs() <= limit
        if not bool(ok.all()):
            bad = _first(~ok) if bad is None else min(bad, _first(~ok))
    finite = torch.isfinite(ba)
    if not bool(finite.all()):
        bad = _first((~finite).any(dim=0).any(dim=0)) if bad is None else min(bad, _first((~finite).any(0).any(0)))
    elif bool((ba[:, 0] > ba[:, 1]).any()):
        where = _first((ba[:, 0] > ba[:, 1]).any(dim=0))
        bad = where if bad is None else min(bad, where)
    if bad is not None:
        i = bisect_right(starts, bad) - 1
        problem = range_problem(omegas[i], betas[i], bands[i]) or "a value is out of range"
        _fail(f"module {names[i]!r}: {problem}")
    if bool((fl > 3).any()):
        i = bisect_right(starts, _first(fl > 3)) - 1
        _fail(f"module {names[i]!r}: unknown unit flags (values above 3)")


def _first(mask: torch.Tensor) -> int:
    return int(mask.flatten().nonzero()[0, 0])


# -- the canonical layout --------------------------------------------------------------------------

HEADER_PREFIX = '{"__metadata__":{"act":'


def canonical_index(entries: Sequence[ModuleEntry]) -> str:
    """The tensor index (the header after the metadata) of the canonical layout: for each
    module ``omega, beta, bands`` (float32) in map order, then every module's ``flags``."""
    parts = []
    pos = 0
    nb = len(BAND_NAMES)
    for e in entries:
        d = e.units
        parts.append(f'"{e.name}/omega":{{"dtype":"F32","shape":[{d}],"data_offsets":[{pos},{pos + 4 * d}]}},'
                     f'"{e.name}/beta":{{"dtype":"F32","shape":[{d}],"data_offsets":[{pos + 4 * d},{pos + 8 * d}]}},'
                     f'"{e.name}/bands":{{"dtype":"F32","shape":[{nb},2,{d}],"data_offsets":[{pos + 8 * d},'
                     f'{pos + 4 * FLOATS_PER_UNIT * d}]}}')
        pos += 4 * FLOATS_PER_UNIT * d
    for e in entries:
        parts.append(f'"{e.name}/flags":{{"dtype":"U8","shape":[{e.units}],"data_offsets":[{pos},{pos + e.units}]}}')
        pos += e.units
    return ",".join(parts)


def canonical_header(meta_text: str, entries: Sequence[ModuleEntry]) -> bytes:
    """The safetensors header (JSON, padded with spaces to a multiple of 8 bytes so the data
    that follows the 8-byte length and the header is 8-byte aligned)."""
    text = HEADER_PREFIX + json.dumps(meta_text, ensure_ascii=False) + "}," + canonical_index(entries) + "}"
    raw = text.encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def data_bytes(entries: Sequence[ModuleEntry]) -> int:
    return BYTES_PER_UNIT * sum(e.units for e in entries)


__all__ = [
    "FORMAT", "FORMAT_VERSION", "MAX_FILE_BYTES", "MAX_HEADER_BYTES", "MAX_METADATA_BYTES", "MAX_MODULES",
    "MAX_UNITS", "MAX_NAME_CHARS", "MAX_ARCHITECTURE_CHARS", "MAX_OUTPUT_INDEX", "MAX_JSON_DEPTH",
    "MAX_NUMBER_CHARS", "METHODS", "TENSOR_KEYS", "STRENGTH_LIMIT", "MapFileError", "MapWriteError",
    "ModuleEntry", "no_gc", "check_module_name", "parse_json", "json_depth", "metadata_text", "read_metadata",
    "check_metadata", "check_values", "canonical_index", "canonical_header", "data_bytes",
]
