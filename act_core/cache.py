"""Resumable fits: pooled activations kept on disk in safetensors shards.

``fit_map(..., cache="acts/")`` splits every collection (the source and target sets of a
simultaneous fit; every step of a chunked or reference causal fit) into shards of
``shard_size`` consecutive inputs (default: the runner's batch size, or the chunk size) and
writes each finished shard as one safetensors file, atomically. A fit that is killed and
started again with the same arguments reads the shards that exist and computes only the
others, so finished prompts are never recomputed; the resumed map equals the uninterrupted one
(the same batches give the same rows).

A shard is reused only when everything that determines its rows is unchanged. The **key** is

- the model: every parameter's and buffer's name, shape, dtype and a strided sample of up to
  1,024 of its values (so a different checkpoint or fine-tune gives another key; a change
  that touches none of the sampled values is not seen: pass ``key=`` for such cases);
- the runner's settings: its class and its plain attributes at the start of the fit (image
  size, seed, collection step, device, …; not ``batch_size``, which only changes float
  rounding, nor callbacks or unset (None) attributes), or ``runner.cache_key()`` when it
  defines one;
- the modules (names and tuple indices), the pooling and the procedure; for causal fits also
  the method and support (they shape the upstream maps) and, per step, a digest of the maps
  fitted so far;
- per shard: the exact inputs (their text) and the shard's position.

Shards live in ``<folder>/<sha256 of the key>/``, next to a readable ``key.json``, so fits with
different keys never share a file; each shard also records the full key digest and its
inputs' digest, checked on every read (a mismatch is an error naming the file, never a silent
reuse). Changed prompts change their shards' names: those shards are recomputed, the others
reused. Under ``distributed`` every rank reads and writes its own shards of a shared folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .files import atomic_write_bytes

FORMAT = 1
_PLAIN = (str, int, float, bool, type(None))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8")).hexdigest()


def model_fingerprint(model: torch.nn.Module, sample: int = 1024) -> str:
    """sha256 over every parameter's and buffer's name, shape, dtype and up to ``sample``
    evenly strided values (exact bytes, read in float64)."""
    h = hashlib.sha256()
    seen = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.is_meta or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        values = flat[:: max(flat.numel() // sample, 1)][:sample]
        h.update(values.to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def runner_settings(runner: Any) -> Dict[str, Any]:
    """What a runner does to its inputs, as plain data (``runner.cache_key()`` when defined)."""
    own = getattr(runner, "cache_key", None)
    if callable(own):
        return {"class": type(runner).__qualname__, "key": own()}
    out: Dict[str, Any] = {"class": type(runner).__qualname__}
    for k, v in sorted(vars(runner).items()):
        if k in ("model", "batch_size") or k.startswith("_") or v is None:
            continue  # (None: unset, like an absent callback)
        if isinstance(v, _PLAIN):
            out[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(x, _PLAIN) for x in v):
            out[k] = list(v)
        elif isinstance(v, (torch.device, torch.dtype)):
            out[k] = str(v)
    return out


def maps_digest(tmap) -> str:
    """sha256 of the maps fitted so far (names, layouts and every tensor's bytes)."""
    h = hashlib.sha256()
    for name, t in tmap.maps.items():
        h.update(f"{name}|{tmap.layouts.get(name)}|{tmap.output_index.get(name)}|".encode())
        for v in t.to_tensors().values():
            h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class CacheError(ValueError):
    """A cache file does not belong to this fit (the message names the file and the fix)."""


class ActivationCache:
    """A folder of activation shards; pass it (or just the folder) as ``fit_map(cache=...)``.

    Args:
        path: the folder (created when missing).
        shard_size: inputs per shard (default: the runner's batch size; the chunk size for
            ``causal_chunked``).
        key: extra plain data added to the key (anything else your activations depend on).
    """

    def __init__(self, path: Union[str, os.PathLike], shard_size: Optional[int] = None, key: Any = None):
        self.path = Path(path)
        if shard_size is not None and int(shard_size) < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.shard_size = None if shard_size is None else int(shard_size)
        self.extra = key
        #: shards read from disk and shards computed by the last bound fit (for reports and tests)
        self.hits = 0
        self.misses = 0


def bind_cache(cache: Union[str, os.PathLike, ActivationCache], runner, chosen: Mapping[str, Optional[int]], fit,
               chunk_size: Optional[int] = None) -> "BoundCache":
    """The cache of one fit: ``fit`` carries the pooling, procedure, method and support."""
    if not isinstance(cache, ActivationCache):
        cache = ActivationCache(cache)
    size = chunk_size or cache.shard_size or getattr(runner, "batch_size", None) or 1
    key: Dict[str, Any] = {
        "format": FORMAT,
        "model": model_fingerprint(runner.model),
        "architecture": getattr(runner, "architecture", None),
        "runner": runner_settings(runner),
        "modules": sorted([n, i] for n, i in chosen.items()),
        "pooling": fit.pooling,
        "procedure": fit.procedure,
        "shard_size": int(size),
        "extra": cache.extra,
    }
    if fit.procedure != "simultaneous":  # upstream maps shape the activations of a causal fit
        key.update(method=fit.method, support=fit.support)
    cache.hits = cache.misses = 0
    return BoundCache(cache, key, int(size))


class BoundCache:
    """Shards of one key: ``collect`` reads what exists and computes the rest."""

    def __init__(self, cache: ActivationCache, key: Dict[str, Any], shard_size: int):
        self.cache, self.key, self.shard_size = cache, key, shard_size
        self.key_digest = _digest(key)
        self.dir = cache.path / self.key_digest[:32]
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "key.json"
        if not info.exists():
            atomic_write_bytes(info, json.dumps({"key": key, "sha256": self.key_digest}, indent=1).encode("utf-8"))

    def step(self, index: int, tmap) -> str:
        """The phase prefix of causal step ``index``, given the maps fitted before it."""
        return f"step{index:04d}-{maps_digest(tmap)[:16]}-"

    def shard_path(self, phase: str, index: int, items: Sequence[Any]) -> Tuple[Path, str]:
        inputs = _digest([str(x) for x in items])
        return self.dir / f"{phase}-{index:06d}-{inputs[:16]}.safetensors", inputs

    def load(self, phase: str, index: int, items: Sequence[Any]) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, tuple]]]:
        """The shard's ``(rows, shapes)`` when it was written for exactly this key and these inputs."""
        from safetensors import safe_open

        path, inputs = self.shard_path(phase, index, items)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                info = json.loads((f.metadata() or {}).get("act_cache", "{}"))
                rows = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise CacheError(f"cache shard {path} cannot be read ({type(e).__name__}: {e}); delete it to recompute it") from None
        want = {"key": self.key_digest, "phase": phase, "index": index, "inputs": inputs}
        got = {k: info.get(k) for k in want}
        if got != want:
            raise CacheError(f"cache shard {path} was written for another fit ({got} != {want}); it is never reused: "
                             "delete it, or give this fit another cache folder")
        self.cache.hits += 1
        return rows, {k: tuple(v) for k, v in info.get("shapes", {}).items()}

    def save(self, phase: str, index: int, items: Sequence[Any], rows: Mapping[str, torch.Tensor],
             shapes: Mapping[str, tuple]) -> None:
        from safetensors.torch import save

        path, inputs = self.shard_path(phase, index, items)
        info = {"key": self.key_digest, "phase": phase, "index": index, "inputs": inputs, "count": len(items),
                "shapes": {k: list(v) for k, v in shapes.items()}}
        tensors = {k: v.detach().cpu().contiguous() for k, v in rows.items()}
        atomic_write_bytes(path, save(tensors, metadata={"act_cache": json.dumps(info)}))
        self.cache.misses += 1

    def collect(self, phase: str, items: Sequence[Any], start: int,
                compute: Callable[[list], Tuple[Dict[str, torch.Tensor], Dict[str, tuple]]]):
        """Rows of ``items`` (``everything[start:start + len(items)]``, ``start`` a multiple of the
        shard size): each shard read from disk, or computed with ``compute(shard)`` and written."""
        if start % self.shard_size:
            raise ValueError(f"a cached collection must start at a shard boundary (start {start}, shard size "
                             f"{self.shard_size})")
        items = list(items)
        parts, shapes = [], {}
        for lo in range(0, len(items), self.shard_size):
            shard = items[lo:lo + self.shard_size]
            index = (start + lo) // self.shard_size
            hit = self.load(phase, index, shard)
            if hit is None:
                hit = compute(shard)
                self.save(phase, index, shard, *hit)
            parts.append(hit[0])
            for k, v in hit[1].items():
                shapes.setdefault(k, v)
        if not parts:
            return {}, {}
        return {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}, shapes


__all__ = ["ActivationCache", "BoundCache", "CacheError", "bind_cache", "model_fingerprint", "runner_settings",
           "maps_digest"]
