"""Fitting across processes with ``torch.distributed``: shard the prompts, gather the statistics.

Launch any fitting script with ``torchrun --nproc_per_node N script.py`` (or ``accelerate
launch``; both set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and pass
``distributed=True`` to :func:`act_core.fitting.fit_map`. Every rank then

1. runs its share of the prompts: a contiguous block of whole batches (or cache shards) of the
   source list and of the target list, so every batch is the batch one process would run;
2. pools its activations as one process would, and
3. gathers every rank's pooled rows **in prompt order** (``(rows, D)`` float32 per module), so
   the estimator sees the very tensor a single process would have collected and every rank fits
   the same map. The maps equal the single-process maps bit for bit when each rank runs the
   same batches as one process (the default sharding); with other batchings they differ by
   the float rounding of batch composition (about 1e-6).

With a quantile sketch (``sketch=k``) the ranks' sketches are merged instead
(:meth:`act_core.streaming.QuantileSketch.merge`): the merge keeps each level's weights, so the
merged sketch has the rank error of one sketch over all rows, ``O(log2(N / k) / k)``, and exact
min / max / moments (see :mod:`act_core.streaming`).

The one-pass causal procedure works across ranks: inside the forward pass the hook of module ℓ
gathers ℓ's pooled statistics from every rank, every rank fits ℓ's map on all of them, and
only then transports its own batch's output (so downstream modules see the same upstream maps
on every rank).

Failures: every exchange begins with a status exchange. A rank whose work raises (an error,
an out-of-memory, a cancel from the progress callback) tells the others at its next exchange
and re-raises its own error; the others raise :class:`RankFailed` naming that rank and its
error. :func:`act_core.fitting.fit_map` ends with one more exchange, so no rank returns a map
unless every rank succeeded; write the map on rank 0 only (:func:`is_main`; the CLI does), and
:meth:`TransportMap.save` writes atomically. A rank that dies without raising (killed, a
segfault) is reported by the launcher: ``torchrun`` ends the other ranks.

Data moves over a CPU (gloo) group: the pooled statistics are small CPU tensors, and a CUDA
(NCCL) default group gets a gloo group next to it. This module imports ``torch.distributed``
only (no launcher library).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


class RankFailed(RuntimeError):
    """Another rank failed; this rank stops too and returns no map."""


@dataclass
class Shard:
    """This rank's share of a list: ``items == everything[start:start + len(items)]``."""

    items: list
    start: int


def launched() -> bool:
    """True when this process was started by a distributed launcher with more than one process
    (``WORLD_SIZE > 1``; ``torchrun`` and ``accelerate launch`` set it) or a process group exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that reports progress and writes files."""
    return rank() == 0


def local_device() -> Optional[str]:
    """``cuda:LOCAL_RANK`` when CUDA is available under a launcher, else None (the caller's default)."""
    if launched() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return None


def init(timeout_s: float = 1800.0) -> None:
    """Join the process group the launcher describes (no-op when one exists already).

    Backend: ``cpu:gloo,cuda:nccl`` when CUDA is available, else ``gloo``.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; fit in one process (distributed=False)")
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed fitting needs a launcher: {', '.join(missing)} not set. Start the script with "
            "`torchrun --nproc_per_node N script.py` or `accelerate launch --num_processes N script.py`, "
            "or fit in one process (distributed=False)"
        )
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


_GLOO: Dict[int, Any] = {}


def _cpu_group():
    """The group CPU tensors travel in: the default group when it has a gloo backend, else one
    gloo group beside it (created once per default group: ``new_group`` is itself collective)."""
    if "gloo" in str(dist.get_backend()):
        return None
    key = id(dist.group.WORLD)
    if key not in _GLOO:
        _GLOO[key] = dist.new_group(backend="gloo")
    return _GLOO[key]


# -- communicators -------------------------------------------------------------------------------


class Local:
    """The single-process communicator: every method is the identity (what ``fit_map`` uses
    unless ``distributed=True``)."""

    rank, world = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[Any], unit: int = 1) -> Shard:
        return Shard(list(items), 0)

    def gather(self, rows: Dict[str, Any], shapes: Optional[Dict[str, tuple]] = None) -> Tuple[Dict[str, Any], Dict[str, tuple]]:
        return rows, dict(shapes or {})

    def check(self) -> None:
        """A status exchange without data (raises :class:`RankFailed` if a rank failed)."""

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        yield


class Ranks(Local):
    """Every process of the default group (see the module docstring)."""

    def __init__(self):
        init()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.group = _cpu_group()
        self.exchanges = 0

    # which share is mine ------------------------------------------------------------------------
    def shard(self, items: Sequence[Any], unit: int = 1) -> Shard:
        """A contiguous block of whole ``unit``-sized pieces (batches, cache shards) of ``items``;
        blocks are in rank order, so concatenating every rank's share gives ``items`` back."""
        items = list(items)
        unit = max(int(unit), 1)
        pieces = (len(items) + unit - 1) // unit
        lo = pieces * self.rank // self.world
        hi = pieces * (self.rank + 1) // self.world
        return Shard(items[lo * unit:hi * unit], lo * unit)

    # status ---------------------------------------------------------------------------------------
    def _exchange(self, status: Tuple[bool, str, Any]) -> List[Tuple[bool, str, Any]]:
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, status, group=self.group)
        self.exchanges += 1
        return out

    def _exchange_ok(self, payload: Any = None) -> List[Any]:
        everyone = self._exchange((True, "", payload))
        failed = [(r, msg) for r, (ok, msg, _) in enumerate(everyone) if not ok]
        if failed:
            r, msg = failed[0]
            raise RankFailed(f"rank {r} of {self.world} failed: {msg}. Every rank stops; no map is returned or written")
        return [p for _, _, p in everyone]

    def check(self) -> None:
        self._exchange_ok()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run this rank's work; on an exception, tell the other ranks (at the exchange they are
        waiting in) before re-raising it."""
        try:
            yield
        except RankFailed:
            raise
        except BaseException as e:
            msg = f"{type(e).__name__}: {e}".strip()
            try:
                self._exchange((False, msg[:2000], None))
            except Exception:  # noqa: BLE001 - the group itself is broken: the original error matters more
                pass
            raise

    # data -----------------------------------------------------------------------------------------
    def gather(self, rows: Dict[str, Any], shapes: Optional[Dict[str, tuple]] = None) -> Tuple[Dict[str, Any], Dict[str, tuple]]:
        """Every rank's ``{module: (rows, D) tensor}`` concatenated in rank order (or, for
        :class:`~act_core.streaming.QuantileSketch` values, merged), plus the union of ``shapes``.

        A rank with no share of the inputs passes ``{}``."""
        from .streaming import QuantileSketch

        sketches = any(isinstance(v, QuantileSketch) for v in rows.values())
        meta = {n: (int(v.shape[0]), int(v.shape[1]), str(v.dtype)) for n, v in rows.items()} if not sketches else None
        everyone = self._exchange_ok((sorted(rows), meta, dict(shapes or {}), sketches))
        names: List[str] = []
        for names_r, _, _, _ in everyone:
            names += [n for n in names_r if n not in names]
        merged_shapes: Dict[str, tuple] = {}
        for _, _, shapes_r, _ in everyone:
            for n, s in shapes_r.items():
                merged_shapes.setdefault(n, s)
        if any(sk for *_, sk in everyone):
            return self._gather_sketches(rows, names), merged_shapes
        out = {}
        for n in names:
            sizes = [m[n][0] if n in m else 0 for _, m, _, _ in everyone]
            width, dtype = next((m[n][1], m[n][2]) for _, m, _, _ in everyone if n in m)
            dtype = getattr(torch, dtype.replace("torch.", ""))
            local = rows.get(n)
            if local is None:
                local = torch.zeros(0, width, dtype=dtype)
            padded = torch.zeros(max(sizes), width, dtype=dtype)
            padded[: local.shape[0]] = local.detach().cpu()
            parts = [torch.empty_like(padded) for _ in range(self.world)]
            dist.all_gather(parts, padded, group=self.group)
            out[n] = torch.cat([p[:k] for p, k in zip(parts, sizes)], 0)
        return out, merged_shapes

    def _gather_sketches(self, rows: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
        parts: List[Any] = [None] * self.world
        dist.all_gather_object(parts, rows, group=self.group)
        out = {}
        for n in names:
            merged = None
            for part in parts:
                if n in part:
                    merged = part[n] if merged is None else merged.merge(part[n])
            out[n] = merged
        return out


def communicator(distributed: bool) -> Local:
    """:class:`Ranks` (joining the launcher's process group) when ``distributed``, else :class:`Local`."""
    return Ranks() if distributed else Local()


__all__ = ["RankFailed", "Shard", "Local", "Ranks", "communicator", "init", "launched", "rank", "is_main",
           "local_device"]
