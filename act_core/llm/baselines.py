"""The baselines a user would reach for instead of AcT, as steering objects.

Each is fitted from the same two text sets as an AcT map (``source`` -> ``target``):

- **Mean-difference vector** (ActAdd / CAA style, "DiffMean"): on the output of ONE decoder
  block ``ℓ`` (the residual stream), ``v = mean(target) - mean(source)`` of the pooled
  activations, added at every token: ``h -> h + λ v``. This is exactly Mean-AcT (``ω = 1``,
  ``β = μ_t - μ_s``) with the unbounded support on one residual layer, so
  :func:`mean_difference_map` returns an ordinary :class:`~act_core.TransportMap`: it steers
  with :func:`act_core.steer` and exports as a llama.cpp control vector.
- **Directional ablation** (Arditi et al. 2024 style): the unit direction
  ``r = (μ_s - μ_t) / |μ_s - μ_t|`` measured at block ``ℓ`` is projected out of the output of
  every block: ``h -> h - α (h·r) r`` (``α = 1``: full ablation; ``α = 2``: reflection). It is
  a rank-one map that mixes units, so it is not a per-unit transport: it is its own steering
  object with the same context-manager use, ``with ablation.steer(model, α): ...``, and
  :func:`act_core.llm.adapter.steer_lm` accepts it too.
- **Instruction prefix** (plain prompting): the prompt is prefixed with an instruction
  (``"Write a positive text. "``); not a model change at all (see :mod:`.harness`).

Pooling defaults to ``mean_nosink`` (token mean without the first token, the attention
sink): with a plain mean the sink's huge activations dominate ``μ`` in small Llama models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from ..fitting import collect
from ..mapfile import TransportMap, map_meta_defaults
from ..text_checks import check_texts
from ..transport import UNBOUNDED, BAND_NAMES, UnitTransport
from .adapter import LMRunner, architecture_of
from .presets import find_blocks, parse_preset


def _block_names(model, spec: str) -> List[str]:
    """Block-output module names of a ``residual[...]`` preset (one per selected block)."""
    name, sl = parse_preset(spec)
    if name != "residual":
        raise ValueError(f"baselines act on the residual stream: give 'residual[k]' (one block) or 'residual[a:b]', got {spec!r}")
    list_name, blocks = find_blocks(model)
    idx = list(range(len(blocks)))
    if sl is not None:
        idx = idx[sl]
    if not idx:
        raise ValueError(f"{spec!r} selects no block: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    return [f"{list_name}.{i}" if list_name else str(i) for i in idx]


def residual_means(model, tokenizer, source: Sequence[str], target: Sequence[str], blocks: str = "residual",
                   pooling: str = "mean_nosink", batch_size: int = 16, max_length: int = 128) -> Dict[str, tuple]:
    """``{block name: (source pooled (N, D), target pooled (M, D))}`` for the selected blocks, one pass each side."""
    src = check_texts(source, "source texts")
    tgt = check_texts(target, "target texts")
    names = _block_names(model, blocks)
    runner = LMRunner(model, tokenizer, batch_size=batch_size, max_length=max_length)
    mods = {n: 0 for n in names}
    was = model.training
    model.eval()
    try:
        a, _ = collect(runner, src, mods, pooling)
        b, _ = collect(runner, tgt, mods, pooling)
    finally:
        model.train(was)
    return {n: (a[n], b[n]) for n in names}


def _shift_unit(beta: torch.Tensor) -> UnitTransport:
    big = float(torch.finfo(torch.float32).max)
    bands = torch.stack([torch.full_like(beta, -big), torch.full_like(beta, big)]).unsqueeze(0).repeat(len(BAND_NAMES), 1, 1)
    return UnitTransport(torch.ones_like(beta), beta.clone(), bands, torch.zeros(beta.shape, dtype=torch.uint8), "mean", UNBOUNDED)


def mean_difference_from_means(means: Dict[str, tuple], layer: str, architecture: Optional[str], pooling: str = "mean_nosink",
                               source: Sequence[str] = (), target: Sequence[str] = ()) -> TransportMap:
    """A mean-difference map on block ``layer`` from :func:`residual_means` output (no model pass)."""
    a, b = means[layer]
    beta = (b.double().mean(0) - a.double().mean(0)).float()
    meta = map_meta_defaults("mean", pooling, "simultaneous", architecture, [str(s) for s in source], [str(t) for t in target],
                             default_support=UNBOUNDED, baseline="mean_difference", layers=layer)
    tmap = TransportMap(meta=meta)
    tmap.add(layer, _shift_unit(beta), "tokens", 0)
    return tmap


def mean_difference_map(model, tokenizer, source: Sequence[str], target: Sequence[str], layer: int,
                        pooling: str = "mean_nosink", batch_size: int = 16) -> TransportMap:
    """ActAdd/CAA-style vector ``μ_t - μ_s`` on the output of block ``layer``, as a TransportMap.

    Steer with ``steer(model, tmap, strength=λ)`` (``h + λ v`` at every token); export with
    :func:`act_core.llm.export.export_control_vector` (block ``layer`` >= 1).
    """
    spec = f"residual[{int(layer)}]"
    means = residual_means(model, tokenizer, source, target, spec, pooling, batch_size)
    (name,) = means
    return mean_difference_from_means(means, name, architecture_of(model), pooling, source, target)


@dataclass
class DirectionalAblation:
    """``h -> h - α (h·r) r`` on the output of every module in ``modules`` (unit ``direction`` r)."""

    direction: torch.Tensor
    modules: List[str]
    architecture: Optional[str] = None
    meta: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        d = torch.as_tensor(self.direction, dtype=torch.float32).reshape(-1)
        n = float(d.norm())
        if not n > 0 or not torch.isfinite(d).all():
            raise ValueError("the ablation direction is zero or not finite: source and target means coincide")
        self.direction = d / n
        if not self.modules:
            raise ValueError("directional ablation needs at least one module")

    @contextlib.contextmanager
    def steer(self, model, strength: float = 1.0) -> Iterator["DirectionalAblation"]:
        """Hooks exist only inside the ``with`` block; ``strength`` is α."""
        alpha = float(strength)
        if alpha != alpha or alpha in (float("inf"), float("-inf")):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        width = int(self.direction.numel())
        mods = [(n, model.get_submodule(n)) for n in self.modules]  # unknown names fail before any hook
        handles = []
        cache: Dict[tuple, torch.Tensor] = {}

        def hook(module, args, output):
            x = output[0] if isinstance(output, (tuple, list)) else output
            if x.shape[-1] != width:
                raise ValueError(f"ablation direction has {width} units but the hooked output has {x.shape[-1]}")
            key = (x.dtype, x.device)
            r = cache.get(key)
            if r is None:
                r = cache[key] = self.direction.to(device=x.device, dtype=x.dtype)
            y = x - alpha * (x @ r).unsqueeze(-1) * r
            if isinstance(output, (tuple, list)):
                items = list(output)
                items[0] = y
                return type(output)(items) if isinstance(output, list) else tuple(items)
            return y

        try:
            if alpha != 0:
                for _, m in mods:
                    handles.append(m.register_forward_hook(hook))
            yield self
        finally:
            for h in handles:
                h.remove()


def ablation_from_means(means: Dict[str, tuple], layer: str, apply_to: Sequence[str], architecture: Optional[str]) -> DirectionalAblation:
    """Directional ablation of ``μ_s - μ_t`` measured at ``layer``, applied to ``apply_to``."""
    a, b = means[layer]
    return DirectionalAblation((a.double().mean(0) - b.double().mean(0)).float(), list(apply_to), architecture,
                               {"baseline": "directional_ablation", "direction_from": layer})


def directional_ablation(model, tokenizer, source: Sequence[str], target: Sequence[str], layer: int,
                         apply_to: str = "residual", pooling: str = "mean_nosink", batch_size: int = 16) -> DirectionalAblation:
    """Fit the ablation direction at block ``layer`` and apply it to the blocks of ``apply_to``
    (a ``residual`` preset, default every block, as Arditi et al.)."""
    spec = f"residual[{int(layer)}]"
    means = residual_means(model, tokenizer, source, target, spec, pooling, batch_size)
    (name,) = means
    return ablation_from_means(means, name, _block_names(model, apply_to), architecture_of(model))


__all__ = ["mean_difference_map", "mean_difference_from_means", "residual_means", "DirectionalAblation",
           "directional_ablation", "ablation_from_means"]
