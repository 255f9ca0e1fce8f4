"""Causal fitting in bounded memory: module by module over chunks, resuming at the last block.

The causal maps (paper Def. 3.2) fit module ℓ on activations produced with every upstream map
applied. The one-pass procedure gets them from ONE forward pass over every input at once
(memory of all inputs); the reference re-runs the model from the input up to each module
(≈ L/2 passes). This procedure keeps the memory of one chunk and skips most of the re-running:

1. A probe pass (one input) finds the model's **block sequence**: the longest run of leading
   children of a ``ModuleList`` / ``Sequential`` that run one after another, each taking the
   previous one's output and nothing else reading it (a transformer's layers, a CLIP encoder's
   layers, a diffusion transformer's blocks). The probe checks this on the real call graph:
   every child runs once, in order, nothing else runs between them, the first tensor of child
   j's output is an input of child j + 1, and no module call and no torch operation outside
   child j + 1 reads any tensor of child j's output (a text encoder whose penultimate layer
   feeds a UNet keeps its layers up to the penultimate one that way). Without such a sequence
   every step re-runs from the input, as the reference does.
2. Modules are fitted one at a time in forward order. For module ℓ every chunk runs once with
   the maps fitted so far attached; the children that finished before ℓ starts are **stubbed**:
   they return the chunk's recorded output of the last finished child instead of computing
   (so the model's own loop hands that state to the first live child). The pass records the
   newest finished child's output for the next step (on CPU, or in ``state_dir`` on disk) and
   stops right after ℓ. ℓ's map is fitted on the pooled rows of all chunks (of all ranks when
   distributed), then the next module follows.

The maps equal ``causal_reference`` run with the same batches bit for bit (every chunk sees
exactly the computation it would see from the input), and the one-pass maps up to the float
rounding of batch composition. Memory: on the model's device, one chunk; elsewhere, one block
output per chunk (``inputs × tokens × width`` floats for a transformer) in CPU memory, or on
disk with ``state_dir`` (then one chunk in memory). Work: each step computes from the last
finished block to ℓ, ≈ one to two full passes over all inputs in total for a transformer with
one map per layer.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from .hooks import ActivationCollector, steer


@dataclass
class Chain:
    """A verified block sequence: ``blocks`` (module names, in call order) and, per fitted
    module, the index of the last block that finishes before it starts (-1: none)."""

    name: str
    blocks: List[str]
    frontier: Dict[str, int]


def _inside(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def _tensor_ids(obj: Any) -> set:
    return {id(t) for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)}


class _Trace(TorchFunctionMode):
    """Records every torch operation's tensor inputs, in order with the module events. The
    blocks' outputs stay referenced in the events, so their ids are unique during the probe."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ids = _tensor_ids((args, kwargs))
        if ids:
            self.events.append(("op", None, ids))
        return func(*args, **kwargs)


def probe(runner, names: Sequence[str], probe_inputs: Sequence[Any]) -> Tuple[Optional[Chain], str, List[str]]:
    """Run ``probe_inputs`` once with every module observed; return the best block sequence
    for ``names`` (None and the reason when the model has none) and ``names`` in forward
    (completion) order."""
    model = runner.model
    events: list = []  # ("start", name, input ids) | ("end", name, block output) | ("op", None, input ids)
    counts: Dict[str, int] = {}
    handles = []
    lists = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))
             and len(m) >= 2}
    children = {f"{ln}.{c}" for ln, m in lists.items() for c, _ in m.named_children()}

    def pre(name):
        def hook(module, args, kwargs):
            counts[name] = counts.get(name, 0) + 1
            events.append(("start", name, _tensor_ids((args, kwargs))))
        return hook

    def post(name):
        def hook(module, args, output):
            events.append(("end", name, output if name in children else None))
        return hook

    try:
        for n, m in model.named_modules():
            if n:
                handles.append(m.register_forward_pre_hook(pre(n), with_kwargs=True))
                handles.append(m.register_forward_hook(post(n)))
        with _Trace(events):
            runner.run(list(probe_inputs), ActivationCollector(model, {}, stop_after=False))
    finally:
        for h in handles:
            h.remove()
    start, end = {}, {}
    readers: Dict[int, List[int]] = {}  # tensor id -> events (module calls, torch operations) reading it
    for i, (kind, name, used) in enumerate(events):
        if kind == "start":
            start.setdefault(name, i)
        elif kind == "end":
            end[name] = i
        if kind != "end":
            for t in used:
                readers.setdefault(t, []).append(i)
    missing = [n for n in names if n not in end]
    if missing:
        raise RuntimeError(f"the probe pass never reached {missing[:3]}; nothing can be fitted for them")
    best, best_score, reasons = None, 0, []
    for list_name, module in lists.items():
        blocks = [f"{list_name}.{c}" for c, _ in module.named_children()]
        if blocks[0] not in start:
            continue  # never runs
        if not any(end[n] > start[blocks[0]] for n in names):
            continue  # every fitted module finishes before it
        length, why = _valid_prefix(blocks, events, counts, start, end, readers)
        if why:
            reasons.append(f"{list_name}: {why}")
        if length < 2:
            continue
        blocks = blocks[:length]
        frontier = {n: max([j for j, b in enumerate(blocks) if end[b] < start[n]], default=-1) for n in names}
        # the work the stubs save: torch operations of the skipped blocks, summed over the steps
        ops = [sum(1 for kind, _, _ in events[start[b]:end[b]] if kind == "op") for b in blocks]
        done = [sum(ops[:j + 1]) for j in range(len(blocks))]
        score = sum(done[f] for f in frontier.values() if f >= 0)
        if score > best_score:
            best, best_score = Chain(list_name, blocks, frontier), score
    why = "; ".join(reasons[:3]) or "no ModuleList of two or more blocks around the fitted modules"
    return best, why, sorted(names, key=end.__getitem__)


def _valid_prefix(blocks: List[str], events: list, counts, start, end, readers) -> Tuple[int, str]:
    """How many leading ``blocks`` form a sequence (module docstring, point 1), and why the next
    one does not. The last block of a prefix may be read by anything after it (it is the state
    the stubs hand on); an earlier one only by the block after it. ``readers``: tensor id ->
    indices of the events that read it."""
    n, why = len(blocks), ""

    def cut(k: int, reason: str) -> None:
        nonlocal n, why
        if k < n:
            n, why = k, reason

    for i, b in enumerate(blocks):
        if counts.get(b, 0) != 1:
            cut(i, f"{b} runs {counts.get(b, 0)} times per forward pass")
            break
    for j in range(n - 1):
        if not end[blocks[j]] < start[blocks[j + 1]]:
            cut(j + 1, f"{blocks[j + 1]} starts before {blocks[j]} ends")
            break
    if n == 0:
        return 0, why
    spec = tree_flatten(events[end[blocks[0]]][2])[1]
    for j in range(1, n):
        if tree_flatten(events[end[blocks[j]]][2])[1] != spec:
            cut(j, f"{blocks[j]} returns a differently structured output")
            break
    for i in range(start[blocks[0]], end[blocks[n - 1]] + 1):
        kind, name, _ = events[i]
        if kind != "op" and not any(_inside(name, b) for b in blocks[:n]):
            cut(sum(end[b] < i for b in blocks[:n]), f"{name} runs between the blocks")
            break
    for j in range(n - 1):
        a, b = blocks[j], blocks[j + 1]
        leaves = [t for t in tree_flatten(events[end[a]][2])[0] if isinstance(t, torch.Tensor)]
        if not leaves or id(leaves[0]) not in events[start[b]][2]:
            cut(j + 1, f"{b} does not take {a}'s output")
            break
        reader = None
        for i in sorted(i for t in leaves for i in readers.get(id(t), ()) if i > end[a]):
            kind, name, _ = events[i]
            if start[b] <= i <= end[b] and (kind == "op" or _inside(name, b)):
                continue  # read by the next block
            reader = name or "a torch operation"
            break
        if reader is not None:
            cut(j + 1, f"{a}'s output is read outside {b} (by {reader})")
            break
    return n, why


# -- states --------------------------------------------------------------------------------------


class StateStore:
    """One recorded block output per chunk: in CPU memory, or in a folder (safetensors files,
    removed afterwards) with only the structure and non-tensor parts in memory. ``get`` gives
    every tensor back on the device it was recorded on."""

    def __init__(self, folder: Optional[str] = None):
        self.dir = Path(tempfile.mkdtemp(prefix="act-chunks-", dir=str(folder))) if folder is not None else None
        self.items: Dict[int, tuple] = {}

    def put(self, chunk: int, output: Any) -> None:
        leaves, spec = tree_flatten(output)
        devices = [t.device if isinstance(t, torch.Tensor) else None for t in leaves]
        cpu = [t.detach().to("cpu", copy=True).contiguous() if isinstance(t, torch.Tensor) else t for t in leaves]
        if self.dir is not None:
            from safetensors.torch import save

            from .files import atomic_write_bytes

            tensors = {str(i): t for i, t in enumerate(cpu) if isinstance(t, torch.Tensor)}
            atomic_write_bytes(self._path(chunk), save(tensors))
            cpu = [None if isinstance(t, torch.Tensor) else t for t in cpu]
        self.items[chunk] = (cpu, spec, devices)

    def get(self, chunk: int) -> Any:
        leaves, spec, devices = self.items[chunk]
        if self.dir is not None:
            from safetensors.torch import load_file

            tensors = load_file(str(self._path(chunk)))
            leaves = [tensors[str(i)] if d is not None else x for i, (x, d) in enumerate(zip(leaves, devices))]
        # always a copy: the model's code may write into the state it receives
        out = [t.to(d, copy=True) if d is not None else t for t, d in zip(leaves, devices)]
        return tree_unflatten(out, spec)

    def _path(self, chunk: int) -> Path:
        return self.dir / f"chunk{chunk:06d}.safetensors"

    def close(self) -> None:
        self.items.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def _stubbed(model: torch.nn.Module, blocks: Sequence[str], value: Any) -> Iterator[None]:
    """Every block in ``blocks`` returns ``value`` instead of computing (an instance ``forward``,
    deleted afterwards)."""
    done = []
    try:
        for b in blocks:
            m = model.get_submodule(b)
            if "forward" in m.__dict__:
                raise RuntimeError(f"{b}.forward is already replaced on this instance; cannot resume at this block")
            m.forward = lambda *a, **k: value
            done.append(m)
        yield
    finally:
        for m in done:
            del m.forward


class _Recorder:
    """Keeps the output of one block (a forward hook registered after the steering hooks, so a
    map on the block itself is applied first)."""

    def __init__(self, module: Optional[torch.nn.Module]):
        self.module, self.output, self.calls, self.handle = module, None, 0, None

    def __enter__(self) -> "_Recorder":
        if self.module is not None:
            self.handle = self.module.register_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output):
        self.output, self.calls = output, self.calls + 1

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


def _chunks(items: list, size: int) -> List[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def fit_causal_chunked(ctx, source, target, names, tmap, chunk_size=None, state_dir=None):
    """The ``causal_chunked`` procedure of :func:`act_core.fitting.fit_map` (see the module docstring)."""
    runner, chosen, comm = ctx.runner, ctx.chosen, ctx.comm
    if not hasattr(runner, "batch_size"):
        raise ValueError(f"procedure 'causal_chunked' needs a runner with a batch_size attribute "
                         f"({type(runner).__name__} has none); use procedure='causal_reference'")
    size = int(chunk_size or (ctx.cache.shard_size if ctx.cache is not None else runner.batch_size))
    if size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {size}")
    chain, why, order = probe(runner, names, source[:1])
    if not callable(getattr(runner, "order", None)):
        names = order
    ctx.tick(0, len(names), f"block sequence {chain.name} ({len(chain.blocks)} blocks)" if chain
             else f"no block sequence to resume from ({why}): every step runs from the input")
    mine_src, mine_tgt = comm.shard(source, size), comm.shard(target, size)
    # (side, global chunk index, inputs); local chunk ids index the state store
    work = [("source", mine_src.start // size + i, c) for i, c in enumerate(_chunks(mine_src.items, size))]
    work += [("target", mine_tgt.start // size + i, c) for i, c in enumerate(_chunks(mine_tgt.items, size))]
    frontier = {k: -1 for k in range(len(work))}  # last block recorded per chunk
    store = StateStore(state_dir)
    saved = runner.batch_size
    runner.batch_size = size
    try:
        for i, n in enumerate(names):
            ctx.tick(i, len(names), f"causal fit of {n} ({i + 1}/{len(names)})")
            f = chain.frontier[n] if chain else -1
            step = ctx.cache.step(i, tmap) if ctx.cache is not None else ""
            rows: Dict[str, list] = {"source": [], "target": []}
            shapes: Dict[str, tuple] = {}
            for k, (side, index, items) in enumerate(work):
                hit = ctx.cache.load(step + side, index, items) if ctx.cache is not None else None
                if hit is None:
                    hit = _run_chunk(ctx, tmap, chain, store, frontier, k, items, n, f)
                    if ctx.cache is not None:
                        ctx.cache.save(step + side, index, items, *hit)
                rows[side].append(hit[0][n])
                shapes.update(hit[1])
            local = {s: torch.cat(r, 0) for s, r in rows.items() if r}
            everyone, shapes = comm.gather(local, shapes)
            t = ctx.estimate(everyone["source"], everyone["target"])
            tmap.add(n, t, ctx.layout(shapes[n]), chosen[n])
    finally:
        runner.batch_size = saved
        store.close()
    ctx.tick(len(names), len(names), "done")
    return tmap


def _run_chunk(ctx, tmap, chain, store, frontier, k, items, target, f):
    """One chunk's pass for ``target``: stubs up to the chunk's recorded block, records block
    ``f`` when it is newer, stops after ``target``. Returns ``({target: rows}, {target: shape})``."""
    model = ctx.runner.model
    r = frontier[k]
    stubbed = chain.blocks[: r + 1] if chain and r >= 0 else []
    record = chain.blocks[f] if chain and f > r else None
    value = store.get(k) if stubbed else None
    skip = set(stubbed)
    # a map on a stubbed block itself must not act again on the state it returns
    gate = (lambda name, x: name not in skip) if skip & set(tmap.maps) else None
    collector = ActivationCollector(model, {target: ctx.chosen[target]}, pooling=ctx.pooling, stop_after=True)
    steering = steer(model, tmap, strength=1.0, support=ctx.support, gate=gate) if len(tmap) else contextlib.nullcontext()
    with _stubbed(model, stubbed, value), steering, _Recorder(model.get_submodule(record) if record else None) as rec, \
            collector:
        ctx.runner.run(items, collector)
    if record is not None:
        if rec.calls != 1:
            raise RuntimeError(f"block {record} ran {rec.calls} times for one chunk: the runner must run a chunk of "
                               f"{len(items)} inputs as one forward pass")
        store.put(k, rec.output)
        frontier[k] = f
    return collector.take(), dict(collector.shapes)


__all__ = ["Chain", "probe", "StateStore", "fit_causal_chunked"]
