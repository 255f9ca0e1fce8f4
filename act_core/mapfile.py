"""TransportMap: one fitted map per module, plus metadata, in one safetensors file.

File layout (safetensors, never pickle):

- tensors ``"<module>/omega"``, ``"<module>/beta"`` (float32 ``(D,)``), ``"<module>/bands"``
  (float32 ``(len(BAND_NAMES), 2, D)``) and ``"<module>/flags"`` (uint8 ``(D,)``) per module;
- ``__metadata__["act"]``: a JSON document with the format version, method, pooling,
  procedure, architecture, default support and strength, prompt provenance, library
  version, band names and, per module, units, layout, tuple output index and degenerate units.

Module names are *canonical* names (diffusers names for SDXL, Hugging Face names for LLMs);
adapters translate them to their own module trees when attaching.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .files import atomic_write_bytes
from .hookguard import GuardedHooks, mark
from .mapfile_reader import MapParts, read_map_bytes, read_map_file
from .mapformat import (FORMAT, FORMAT_VERSION, MAX_FILE_BYTES, MAX_HEADER_BYTES, MapFileError, MapWriteError,
                        canonical_header, check_module_name, check_values, data_bytes, metadata_text, no_gc,
                        read_metadata)
from .transport import BAND_NAMES, FLAG_CONSTANT_SOURCE, LAYOUTS, UnitTransport, check_strength, normalize_support

#: which part of a module output a hook reads: None (the tensor, or item 0 of a tuple), item k
#: of a tuple, or a tuple of items joined along dim 1 (one token sequence; only in memory, fixed
#: by a naming view: a map file stores None or an int)
Index = Union[int, Tuple[int, ...], None]

def _library_version() -> str:
    from ._version import __version__

    return __version__


def prompts_digest(prompts: Sequence[str]) -> str:
    """sha256 of a prompt list (JSON-encoded), to record which data a map was fitted on."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False, default=repr).encode("utf-8")).hexdigest()


@dataclass
class TransportMap:
    """Fitted transports keyed by canonical module name, with metadata.

    Attributes:
        maps: module name -> :class:`UnitTransport`, in fitting (= forward) order.
        layouts: module name -> layout used at apply time (``"tokens"``, ``"spatial_mean"``, …).
        output_index: module name -> index into a tuple output, or None for tensor outputs.
        meta: method, pooling, procedure, architecture, default_support, default_strength,
            prompts provenance and anything else an adapter records (JSON-serialisable).
    """

    maps: Dict[str, UnitTransport] = field(default_factory=dict)
    layouts: Dict[str, str] = field(default_factory=dict)
    output_index: Dict[str, Optional[int]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    # -- construction --------------------------------------------------------------------------

    def add(self, name: str, transport: UnitTransport, layout: str = "auto", output_index: Optional[int] = None) -> None:
        check_module_name(name)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
        self.maps[name] = transport
        self.layouts[name] = layout
        self.output_index[name] = output_index

    def __len__(self) -> int:
        return len(self.maps)

    def __contains__(self, name: str) -> bool:
        return name in self.maps

    def __getitem__(self, name: str) -> UnitTransport:
        return self.maps[name]

    @property
    def modules(self):
        return list(self.maps)

    @property
    def architecture(self) -> Optional[str]:
        return self.meta.get("architecture")

    @property
    def default_strength(self) -> float:
        return float(self.meta.get("default_strength", 1.0))

    def module_strengths(self, strength: Union[float, Mapping[str, float], None] = None) -> Dict[str, float]:
        """``{module: λ}`` for every module of the map: ``None`` -> the map's default strength, a number
        -> that λ everywhere, a mapping -> per-module λ (the default elsewhere; a name not in the map is
        a ValueError). Every λ must be finite and within ±STRENGTH_LIMIT (:func:`check_strength`)."""
        default = self.default_strength
        if strength is None:
            strengths = {n: default for n in self.maps}
        elif isinstance(strength, Mapping):
            unknown = [n for n in strength if n not in self.maps]
            if unknown:
                raise ValueError(f"per-module strengths name modules that are not in the map: {unknown[:5]}")
            strengths = {n: strength.get(n, default) for n in self.maps}
        else:
            strengths = {n: strength for n in self.maps}
        for n, v in strengths.items():
            try:
                strengths[n] = check_strength(v)
            except ValueError as e:
                raise ValueError(f"{e} (module {n!r})") from None
        return strengths

    @property
    def default_support(self) -> Optional[str]:
        return self.meta.get("default_support")

    def subset(self, names: Iterable[str]) -> "TransportMap":
        names = list(names)
        missing = [n for n in names if n not in self.maps]
        if missing:
            raise ValueError(f"modules not in this map: {missing[:5]}")
        return TransportMap(
            {n: self.maps[n] for n in names},
            {n: self.layouts[n] for n in names},
            {n: self.output_index[n] for n in names},
            dict(self.meta),
        )

    def renamed(self, fn: Callable[[str], str]) -> "TransportMap":
        """A copy with every module name passed through ``fn`` (e.g. canonical -> ComfyUI)."""
        out = TransportMap(meta=dict(self.meta))
        for n, t in self.maps.items():
            out.maps[fn(n)] = t
            out.layouts[fn(n)] = self.layouts[n]
            out.output_index[fn(n)] = self.output_index[n]
        return out

    def summary(self) -> Dict[str, Any]:
        """Plain-data description (what ``act-steer inspect`` and the Map info node show)."""
        units = {n: t.units for n, t in self.maps.items()}
        return {
            **{k: v for k, v in self.meta.items() if k != "modules"},
            "modules": len(self.maps),
            "units": sum(units.values()),
            "degenerate_units": int(sum(int(t.degenerate.sum()) for t in self.maps.values())),
            "first_modules": list(self.maps)[:5],
        }

    # -- validation against a model ------------------------------------------------------------

    def check_model(
        self,
        model: torch.nn.Module,
        architecture: Optional[str] = None,
        name_map: Optional[Callable[[str], str]] = None,
        probe: Optional[Callable[[], Any]] = None,
    ) -> None:
        """Raise MapFileError unless the map fits ``model``; nothing is attached.

        Checked for every module: it exists (a name that reaches a raising property is reported,
        not raised); its unit count, where the module type tells it (``out_features``,
        ``out_channels``, ``num_channels``, ``normalized_shape``, ...); the layout against the
        module's unit axis (``tokens`` steers the last axis, so it is refused on a convolution,
        whose units are on axis 1; ``spatial_mean``/``per_pixel`` steer axis 1 of a 4-D output,
        refused on a Linear, LayerNorm or Embedding); a tuple index on a module that returns a
        tensor. ``probe``: a function that runs the model once (e.g. ``lambda: model(x)``); its
        forward is recorded and every module's real output is checked too (tuple index, unit
        axis and width, layout vs rank; :func:`output_problem`). Without a probe the same
        check runs at the first steered forward, before any output is changed.

        ``architecture`` is compared with the map's recorded architecture when both are set.
        ``name_map`` translates canonical names to the model's own names.
        """
        if architecture and self.architecture and architecture != self.architecture:
            raise MapFileError(
                f"this map was fitted on architecture {self.architecture!r} but the model is {architecture!r}; "
                "fit a map on this model type or load the matching map"
            )
        problems, found = [], {}
        for name, t in self.maps.items():
            local = name_map(name) if name_map else name
            try:
                module = find_module(model, local)
            except AttributeError as e:
                problems.append(f"module {local!r} not found in the model ({e})")
                continue
            index = tree_index(model, local, self.output_index.get(name))
            problem = module_problem(local, module, t.units, self.layouts.get(name, "auto"), index)
            if problem:
                problems.append(problem)
            else:
                found[name] = (local, module, index)
        if not problems and probe is not None:
            problems = self._probe(found, probe)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise MapFileError(
                "the map does not fit this model: " + "; ".join(problems[:5]) + more
                + ". Was it fitted on a different model or layer set?"
            )

    def _probe(self, found: Dict[str, tuple], probe: Callable[[], Any]) -> List[str]:
        """Run ``probe`` once with recording hooks on the mapped modules; the problems found."""
        seen: Dict[str, Optional[str]] = {}

        def recorder(name, local, index):
            t, layout = self.maps[name], self.layouts.get(name, "auto")

            def hook(module, args, output):
                if name not in seen:
                    seen[name] = output_problem(local, module, output, t.units, layout, index)

            return mark(hook)

        owner = _ProbeOwner()
        guard = GuardedHooks(owner, "checked")
        guard.attach([(m, recorder(n, local, i)) for n, (local, m, i) in found.items()], None, None)
        try:
            with torch.no_grad():
                probe()
        finally:
            guard.remove()
        problems = [p for p in seen.values() if p]
        missed = [found[n][0] for n in found if n not in seen]
        if missed:
            problems.append(f"the probe forward did not reach {len(missed)} mapped module(s), e.g. {missed[0]!r}")
        return problems

    # -- serialisation -------------------------------------------------------------------------

    def to_metadata(self) -> Dict[str, Any]:
        modules = {}
        degenerate = _degenerate_units(list(self.maps.values()))
        for (n, t), dead in zip(self.maps.items(), degenerate):
            modules[n] = {
                "units": t.units,
                "layout": self.layouts.get(n, "auto"),
                "output_index": self.output_index.get(n),
                "method": t.method,
                "default_support": t.default_support,
                "degenerate_units": dead,
            }
        meta = {k: v for k, v in self.meta.items() if k not in _FIXED}
        methods = {t.method for t in self.maps.values()}
        meta.setdefault("method", methods.pop() if len(methods) == 1 else "mixed")
        meta.setdefault("pooling", "mean")
        meta.setdefault("architecture", None)
        meta.setdefault("default_strength", 1.0)
        if self.maps:
            meta.setdefault("default_support", next(iter(self.maps.values())).default_support)
        meta.setdefault("library_version", _library_version())
        # one key order (the format's fields first), so a loaded map saves to the same bytes
        out = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update((k, meta.pop(k)) for k in _HEAD if k in meta)
        out.update(meta)
        out.update(bands=list(BAND_NAMES), modules=modules)
        return out

    def _encode(self) -> List[memoryview]:
        """The file as buffers (length + header, float32 data, flags), checked with the reader's
        own rules (:mod:`act_core.mapformat`) first; MapWriteError naming what cannot be stored."""
        with no_gc():
            return self._encode_checked()

    def _encode_checked(self) -> List[memoryview]:
        try:
            if not self.maps:
                raise MapFileError("the map has no modules")
            names = list(self.maps)
            tensors = [_stored(n, self.maps[n]) for n in names]
            text = metadata_text(self.to_metadata())
            _, entries = read_metadata(text)  # the reader's rules, on the very text that is written
            check_values(names, *zip(*tensors))
            header = canonical_header(text, entries)
            if len(header) > MAX_HEADER_BYTES:
                raise MapFileError(f"its header would be {len(header)} bytes, more than the {MAX_HEADER_BYTES} a map "
                                   "file may have (fewer modules or less metadata)")
            size = 8 + len(header) + data_bytes(entries)
            if size > MAX_FILE_BYTES:
                raise MapFileError(f"the file would be {size} bytes, more than the {MAX_FILE_BYTES} a map file may have")
        except MapFileError as e:
            raise MapWriteError.refused(str(e)) from None
        floats = torch.cat([p for o, b, bd, _ in tensors for p in (o, b, bd.reshape(-1))]).numpy()
        flags = torch.cat([f for *_, f in tensors]).numpy()
        return [memoryview(struct.pack("<Q", len(header)) + header), _little_endian(floats), memoryview(flags)]

    def to_bytes(self) -> bytes:
        """The map file's bytes (what :meth:`save` writes)."""
        return b"".join(self._encode())

    def save(self, path) -> Path:
        """Write the map atomically (temp file in the same folder, fsync, rename). A map that
        breaks a format rule is refused with MapWriteError before anything is written."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"map files use the .safetensors extension, got {path.name!r}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist; create it first")
        chunks = self._encode()
        try:
            atomic_write_bytes(path, chunks)
        except OSError as e:
            raise MapWriteError.wrap(path, e) from e
        return path

    @classmethod
    def load(cls, path) -> "TransportMap":
        """Read a map file strictly (see :mod:`act_core.mapfile_reader`); MapFileError if malformed."""
        return cls._from_parts(read_map_file(Path(path)))

    @classmethod
    def from_bytes(cls, data: bytes) -> "TransportMap":
        return cls._from_parts(read_map_bytes(data))

    @classmethod
    def _from_parts(cls, parts: MapParts) -> "TransportMap":
        with no_gc():
            return cls._build(parts)

    @classmethod
    def _build(cls, parts: MapParts) -> "TransportMap":
        tmap = cls(meta=parts.meta)
        for name, transport, layout, index in parts.modules:  # names and layouts were checked by the reader
            tmap.maps[name], tmap.layouts[name], tmap.output_index[name] = transport, layout, index
        return tmap


_FIXED = ("modules", "format", "format_version", "bands")
_HEAD = ("method", "pooling", "architecture", "default_strength", "default_support", "library_version")


def _degenerate_units(transports: List[UnitTransport]) -> List[List[int]]:
    """Per transport, the indices of its constant-source units (one pass over all flags)."""
    flags = [t.flags.reshape(-1) for t in transports]
    if not flags:
        return []
    sizes = [int(f.shape[0]) for f in flags]
    hits = torch.nonzero((torch.cat([f.to("cpu", torch.int64) for f in flags]) & FLAG_CONSTANT_SOURCE) != 0).flatten()
    out: List[List[int]] = [[] for _ in transports]
    if hits.numel():
        starts = torch.tensor([0] + sizes[:-1]).cumsum(0)
        owner = torch.searchsorted(starts, hits, right=True) - 1
        for i, k in zip(owner.tolist(), (hits - starts[owner]).tolist()):
            out[i].append(k)
    return out


class _ProbeOwner:
    """Owns the recording hooks of one :meth:`TransportMap.check_model` probe."""


def _stored(name: str, t: UnitTransport):
    """``(omega, beta, bands, flags)`` of ``t`` as stored (float32 / uint8, CPU, contiguous), or
    MapFileError when their shapes or kinds cannot be."""
    if not isinstance(t, UnitTransport):
        raise MapFileError(f"module {name!r} holds a {type(t).__name__}, not a UnitTransport")
    nb = len(BAND_NAMES)
    o, b, bd, f = t.omega, t.beta, t.bands, t.flags
    if not all(isinstance(v, torch.Tensor) for v in (o, b, bd, f)) or o.ndim != 1:
        raise MapFileError(f"module {name!r}: omega, beta, bands and flags must be tensors, omega of shape (D,)")
    d = o.shape[0]
    if d == 0:
        raise MapFileError(f"module {name!r} has 0 units (an empty transport cannot be stored)")
    if b.shape != (d,) or bd.shape != (nb, 2, d) or f.shape != (d,):
        raise MapFileError(f"module {name!r}: shapes omega {tuple(o.shape)}, beta {tuple(b.shape)}, bands "
                           f"{tuple(bd.shape)}, flags {tuple(f.shape)} do not fit (D,), (D,), ({nb}, 2, D), (D,)")
    if not all(v.is_floating_point() for v in (o, b, bd)) or f.is_floating_point() or f.is_complex():
        raise MapFileError(f"module {name!r}: omega, beta and bands must be floating point and flags integers")
    if f.dtype != torch.uint8 and bool(((f < 0) | (f > 3)).any()):  # uint8 flags are range-checked in bulk
        raise MapFileError(f"module {name!r}: unknown unit flags (values outside 0..3)")
    return tuple(v if v.dtype == dtype and v.device.type == "cpu" and v.is_contiguous() and not v.requires_grad
                 else v.detach().to("cpu", dtype).contiguous()
                 for v, dtype in ((o, torch.float32), (b, torch.float32), (bd, torch.float32), (f, torch.uint8)))


def _little_endian(a) -> memoryview:
    return memoryview(a if a.dtype.byteorder in ("<", "=", "|") and struct.pack("=H", 1) == b"\x01\x00"
                      else a.astype("<f4"))


def module_units(module: torch.nn.Module) -> Optional[int]:
    """Best-effort unit count of a module's output (channels / features), or None if unknown."""
    for attr in ("out_features", "out_channels", "num_channels", "embedding_dim"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1]) if isinstance(shape, (tuple, list)) else int(shape)
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.ndim == 1:
        return int(w.shape[0])
    return None


def find_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at dotted ``path`` (``""``: ``root``). Registered submodules are looked up in
    the modules' own tables, so no property runs for them; another attribute is read with
    ``getattr``, and an error it raises (a property that raises) becomes an AttributeError
    naming the path, as does a missing name or an attribute that is not a module."""
    if path == "":
        return root
    if type(root).get_submodule is not torch.nn.Module.get_submodule:  # a naming view resolves its own names
        try:
            mod = root.get_submodule(path)
        except AttributeError as e:
            raise AttributeError(str(e)) from None
        if not isinstance(mod, torch.nn.Module):
            raise AttributeError(f"{path!r} is a {type(mod).__name__}, not a module")
        return mod
    mod = root
    atoms = path.split(".")
    for i, atom in enumerate(atoms):
        table = mod.__dict__.get("_modules")
        nxt = table.get(atom) if isinstance(table, dict) else None
        if nxt is None:
            where = ".".join(atoms[: i + 1])
            try:
                nxt = getattr(mod, atom)
            except AttributeError:
                raise AttributeError(f"{type(mod).__name__} has no submodule {atom!r}") from None
            except Exception as e:  # a property or __getattr__ that raises
                raise AttributeError(f"reading {where!r} raised {type(e).__name__}: {str(e)[:200]}") from None
            if not isinstance(nxt, torch.nn.Module):
                raise AttributeError(f"{where!r} is a {type(nxt).__name__}, not a module")
        mod = nxt
    return mod


_CHANNEL_FIRST = (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)
_CHANNEL_LAST = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding, torch.nn.Bilinear) + (
    (torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ())
_TENSOR_OUT = _CHANNEL_FIRST + _CHANNEL_LAST


def _channel_first(module: torch.nn.Module) -> bool:
    return isinstance(module, _CHANNEL_FIRST)


def tree_index(model: torch.nn.Module, name: str, index: Index) -> Index:
    """The tuple index a hook on ``name`` reads: ``index`` when given, else the one the tree
    fixes for that name, else None. A naming view may name one tuple element of a module
    (e.g. a block's image stream) by providing ``act_output_index(name) -> index``."""
    if index is not None:
        return index
    fixed = getattr(model, "act_output_index", None)
    return fixed(name) if callable(fixed) else None


def module_problem(name: str, module: torch.nn.Module, units: int, layout: str, index: Index) -> Optional[str]:
    """What the module's type alone shows does not fit the map (unit count, layout vs the
    module's unit axis, a tuple index on a tensor output), or None."""
    have = module_units(module)
    if have is not None and have != units:
        return f"module {name!r} has {have} units but the map has {units}"
    kind = type(module).__name__
    if layout == "tokens" and isinstance(module, torch.nn.modules.conv._ConvNd):
        return (f"module {name!r} is a {kind} (its units are on axis 1) but the map's layout 'tokens' steers the last "
                "axis")
    if layout in ("spatial_mean", "per_pixel") and isinstance(module, _CHANNEL_LAST):
        return (f"module {name!r} is a {kind} (its units are on the last axis) but the map's layout {layout!r} steers "
                "axis 1 of a 4-D output")
    if index not in (None, 0) and isinstance(module, _TENSOR_OUT):
        return f"module {name!r} is a {kind}, which returns a tensor, but the map steers item {index} of a tuple output"
    return None


def output_problem(name: str, module: Optional[torch.nn.Module], output: Any, units: Optional[int], layout: str,
                   index: Index) -> Optional[str]:
    """What does not fit between a module's real ``output`` and its map, or None: the tuple
    index (past the end, or an item that is not a tensor; for a tuple index, items that cannot
    be joined along dim 1), a tensor output with an index above 0, the layout vs the output's
    rank and vs the module's unit axis, the unit count (``units`` None: not checked)."""
    if isinstance(output, torch.Tensor):
        if index not in (None, 0):
            return f"module {name!r} returns a tensor but the map steers item {index} of a tuple output"
        x = output
    elif isinstance(output, (tuple, list)):
        ks = index if isinstance(index, tuple) else (0 if index is None else index,)
        if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in ks):
            return f"module {name!r}: output index {index!r} is not an item number or a tuple of them"
        for k in ks:
            if k >= len(output):
                return (f"module {name!r} returns a {type(output).__name__} of {len(output)} items but the map steers "
                        f"item {k}")
            if not isinstance(output[k], torch.Tensor):
                return f"module {name!r}: item {k} of its output is {type(output[k]).__name__}, not a tensor to steer"
        x = output[ks[0]]
        if len(ks) > 1:
            shapes = [tuple(output[k].shape) for k in ks]
            if any(len(s) < 2 or len(s) != len(shapes[0]) or s[:1] + s[2:] != shapes[0][:1] + shapes[0][2:]
                   for s in shapes):
                return (f"module {name!r}: items {index} of its output have shapes {shapes}, which do not join into "
                        "one token sequence (dim 1)")
    else:
        return f"module {name!r} returns a {type(output).__name__}; steering needs a tensor or a tuple of tensors"
    if units is None:
        return None
    if not x.is_floating_point():
        return f"module {name!r}: its output is {x.dtype}, not floating point"
    lay = layout if layout != "auto" else ("spatial_mean" if x.ndim == 4 else "tokens")
    shape = tuple(x.shape)
    if lay != "tokens" and x.ndim != 4:
        return f"module {name!r}: layout {lay!r} needs a 4-D (B, C, H, W) output, got shape {shape}"
    if lay == "tokens" and x.ndim >= 3 and _channel_first(module):
        return (f"module {name!r} is a {type(module).__name__} whose units are on axis 1 of its output {shape}, but "
                "layout 'tokens' would steer the last axis")
    if lay != "tokens" and isinstance(module, _CHANNEL_LAST):
        return (f"module {name!r} is a {type(module).__name__} whose units are on the last axis of its output "
                f"{shape}, but layout {lay!r} would steer axis 1")
    axis = -1 if lay == "tokens" else 1
    if x.ndim == 0 or shape[axis] != units:
        return (f"module {name!r} outputs {shape[axis] if x.ndim else 0} units on axis {axis} (shape {shape}) but the "
                f"map has {units}")
    return None


def map_meta_defaults(
    method: str,
    pooling: str,
    procedure: str,
    architecture: Optional[str],
    source_prompts: Sequence[str] = (),
    target_prompts: Sequence[str] = (),
    **extra: Any,
) -> Dict[str, Any]:
    """The standard metadata block recorded by every fit."""
    from .estimators import DEFAULT_SUPPORT

    if method not in DEFAULT_SUPPORT:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(DEFAULT_SUPPORT)}")
    meta = {
        "method": method,
        "pooling": pooling,
        "procedure": procedure,
        "architecture": architecture,
        "default_support": normalize_support(extra.pop("default_support", None) or DEFAULT_SUPPORT[method]),
        "default_strength": float(extra.pop("default_strength", 1.0)),
        "prompts": {
            "source_count": len(source_prompts),
            "target_count": len(target_prompts),
            "source_sha256": prompts_digest(source_prompts),
            "target_sha256": prompts_digest(target_prompts),
        },
        "library_version": _library_version(),
    }
    meta.update(extra)
    return meta


__all__ = [
    "TransportMap",
    "MapFileError",
    "MapWriteError",
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "module_units",
    "find_module",
    "module_problem",
    "output_problem",
    "map_meta_defaults",
    "prompts_digest",
    "FLAG_CONSTANT_SOURCE",
]
