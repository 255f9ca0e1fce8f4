"""Masks for Apply to model: steer only inside a region of the image (no ComfyUI imports, no math
beyond resizing).

A ComfyUI MASK is ``(H, W)`` or ``(B, H, W)`` in [0, 1] at any resolution (usually the image's).
Every steered layer sees it resized to its own grid, and its output becomes
``lerp(x, T(x), m)``: the transported value where ``m = 1``, the layer's own value where
``m = 0``, a blend in between (see ``act_core.hooks.SteerHandle``'s ``mask``).

Where a layer's grid comes from:

- 4-D outputs ``(N, C, h, w)`` (resnet norms, convs, a transformer's GroupNorm): ``(h, w)``;
- token outputs ``(N, T, C)`` inside SDXL's attention blocks: the tokens are that block's
  feature map flattened row by row (``T = h·w``, token ``i·w + j`` at row ``i``, column ``j``),
  and ``(h, w)`` is the latent's size halved as SDXL's downsamplers halve it
  (``ceil(H / 2^k)``, ``ceil(W / 2^k)``) for the level ``k`` whose ``h·w`` equals ``T``;
- any other output (a time embedding, a pooled vector) has no place in the image: refused.

Resizing: area averaging when the mask is larger than the grid (a binary mask aligned to the
grid stays binary), bilinear when it is smaller. Batches: a mask of batch 1 applies to every
image; otherwise mask ``i`` goes with latent ``i`` (repeated or cut to the latent batch, as
ComfyUI does for noise masks), in every CFG half.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def as_mask_batch(mask) -> torch.Tensor:
    """``(B, 1, H, W)`` float32 from a ComfyUI MASK (``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a ComfyUI MASK tensor, got {type(mask).__name__}")
    m = mask.detach().float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    elif not (m.ndim == 4 and m.shape[1] == 1):
        raise ValueError(f"a MASK has shape (H, W) or (B, H, W), got {tuple(mask.shape)}")
    if m.numel() == 0:
        raise ValueError("the mask is empty")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("mask values must lie in [0, 1] (1 = steer, 0 = leave alone)")
    return m.contiguous()


def levels(latent_hw: Sequence[int]) -> Sequence[Tuple[int, int]]:
    """The feature-map sizes of SDXL's levels for a latent of ``latent_hw``: ``(ceil(H/2^k), ceil(W/2^k))``."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    out = [(h, w)]
    while h > 1 or w > 1:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.append((h, w))
    return out


def token_grid(tokens: int, latent_hw: Sequence[int]) -> Optional[Tuple[int, int]]:
    """``(h, w)`` of the level whose ``h·w == tokens``, or None."""
    return next(((h, w) for h, w in levels(latent_hw) if h * w == tokens), None)


def resize(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, 1, h, w)``: area averaging when shrinking, bilinear when growing."""
    if tuple(mask.shape[-2:]) == (h, w):
        return mask
    if mask.shape[-2] >= h and mask.shape[-1] >= w:
        return F.interpolate(mask, size=(h, w), mode="area")
    return F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def to_batch(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat or cut the mask batch to ``batch`` (mask ``i`` for latent ``i``; batch 1 broadcasts)."""
    if mask.shape[0] in (1, batch):
        return mask
    if mask.shape[0] > batch:
        return mask[:batch]
    return mask.repeat(math.ceil(batch / mask.shape[0]), 1, 1, 1)[:batch]


class LayerMask:
    """The ``mask(name, output)`` callable of one UNet call: the mask resized to each layer's grid.

    ``latent_hw()`` gives the latent's ``(H, W)`` of this call (read lazily: ComfyUI records it
    when the UNet starts); ``chunks`` is the number of conditioning chunks stacked in the batch
    (cond / uncond), each holding the whole latent batch. Resized masks are kept per grid for the
    call, so each resolution is resized once.
    """

    def __init__(self, mask: torch.Tensor, latent_hw: Callable[[], Optional[Sequence[int]]], chunks: int = 1):
        self.mask, self.latent_hw, self.chunks = mask, latent_hw, max(1, int(chunks))
        self._memo: Dict[tuple, torch.Tensor] = {}

    def _grid(self, name: str, x: torch.Tensor) -> Tuple[int, int]:
        if x.ndim == 4:
            return int(x.shape[2]), int(x.shape[3])
        hw = self.latent_hw() if x.ndim == 3 else None
        grid = None if hw is None else token_grid(int(x.shape[1]), hw)
        if grid is None:
            raise ValueError(
                f"the mask cannot be placed on layer {name!r}: its output {tuple(x.shape)} is not a feature map "
                "(N, C, h, w) nor the tokens of an attention block over the image; remove the mask, or steer only "
                "spatial layers (UNet norms, attention outputs) with it"
            )
        return grid

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        h, w = self._grid(name, x)
        n = int(x.shape[0])
        key = (x.ndim, h, w, n, x.device)
        m = self._memo.get(key)
        if m is None:
            chunks = self.chunks if n % self.chunks == 0 else 1
            m = to_batch(resize(self.mask, h, w), n // chunks)
            if m.shape[0] != 1 and chunks > 1:
                m = m.repeat(chunks, 1, 1, 1)
            m = m.to(x.device)
            if x.ndim == 3:  # (N, 1, h, w) -> (N, h·w, 1): row-major tokens
                m = m.flatten(2).transpose(1, 2)
            self._memo[key] = m
        return m
