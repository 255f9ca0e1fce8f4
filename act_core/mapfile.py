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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch

from .files import atomic_write_bytes
from .mapfile_reader import MapParts, read_map_bytes, read_map_file
from .mapformat import FORMAT, FORMAT_VERSION, MapFileError, MapWriteError, check_module_name
from .transport import BAND_NAMES, FLAG_CONSTANT_SOURCE, LAYOUTS, UnitTransport, normalize_support

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
    ) -> None:
        """Raise MapFileError unless every module exists in ``model`` with the right unit count.

        ``architecture`` is compared with the map's recorded architecture when both are set.
        ``name_map`` translates canonical names to the model's own names.
        """
        if architecture and self.architecture and architecture != self.architecture:
            raise MapFileError(
                f"this map was fitted on architecture {self.architecture!r} but the model is {architecture!r}; "
                "fit a map on this model type or load the matching map"
            )
        problems = []
        for name, t in self.maps.items():
            local = name_map(name) if name_map else name
            try:
                module = model.get_submodule(local)
            except AttributeError:
                problems.append(f"module {local!r} not found in the model")
                continue
            units = module_units(module)
            if units is not None and units != t.units:
                problems.append(f"module {local!r} has {units} units but the map has {t.units}")
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise MapFileError(
                "the map does not fit this model: " + "; ".join(problems[:5]) + more
                + ". Was it fitted on a different model or layer set?"
            )

    # -- serialisation -------------------------------------------------------------------------

    def to_metadata(self) -> Dict[str, Any]:
        modules = {}
        for n, t in self.maps.items():
            modules[n] = {
                "units": t.units,
                "layout": self.layouts[n],
                "output_index": self.output_index[n],
                "method": t.method,
                "default_support": t.default_support,
                "degenerate_units": torch.nonzero(t.degenerate).flatten().tolist(),
            }
        meta = {k: v for k, v in self.meta.items() if k != "modules"}
        methods = {t.method for t in self.maps.values()}
        meta.setdefault("method", methods.pop() if len(methods) == 1 else "mixed")
        meta.setdefault("pooling", "mean")
        meta.setdefault("architecture", None)
        meta.setdefault("default_strength", 1.0)
        if self.maps:
            meta.setdefault("default_support", next(iter(self.maps.values())).default_support)
        meta.update(format=FORMAT, format_version=FORMAT_VERSION, bands=list(BAND_NAMES), modules=modules)
        meta.setdefault("library_version", _library_version())
        return meta

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {}
        for n, t in self.maps.items():
            for k, v in t.to_tensors().items():
                tensors[f"{n}/{k}"] = v.detach().cpu().contiguous()
        try:
            header = json.dumps(self.to_metadata(), ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise MapWriteError(f"the map's metadata cannot be stored as JSON ({e}): keep meta values to strings, "
                                "numbers, booleans, lists and dicts") from None
        return save(tensors, metadata={"act": header})

    def save(self, path) -> Path:
        """Write the map atomically (temp file in the same folder, fsync, rename)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"map files use the .safetensors extension, got {path.name!r}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist; create it first")
        data = self.to_bytes()
        try:
            atomic_write_bytes(path, data)
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
        tmap = cls(meta=parts.meta)
        for name, transport, layout, index in parts.modules:
            tmap.add(name, transport, layout=layout, output_index=index)
        return tmap


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
    "map_meta_defaults",
    "prompts_digest",
    "FLAG_CONSTANT_SOURCE",
]
