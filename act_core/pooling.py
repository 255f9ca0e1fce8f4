"""Pooling: reduce one module output to one vector per sample.

Shapes: ``(B, D)`` passes through; ``(B, T, D)`` is reduced over tokens, skipping padding
when an attention mask ``(B, T)`` (1 = real token) is given; ``(B, C, H, W)`` is reduced over
space (the unit is the channel). Reductions run in float32. ``"none"`` keeps every
token / pixel as its own row (``(rows, D)``) and is the only op whose memory grows with
sequence length.

``"mean_nosink"`` is the token mean without each sequence's first real token. In decoder LMs
the first position is an *attention sink* (the BOS token, or the first word when the
tokenizer adds none): its activations are many times larger than the others' in a few
dimensions, so a plain mean over a short text is dominated by it and a shift fitted on such
means (Mean-AcT, a mean-difference vector) carries that token's noise into every position.
A sequence with one real token keeps that token. On ``(B, D)`` and ``(B, C, H, W)`` inputs it
is the plain mean.
"""

from __future__ import annotations

from typing import Optional

import torch

POOLINGS = ("mean", "max", "min", "last", "none", "mean_nosink")


def pool(x: torch.Tensor, pooling: str = "mean", attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pool ``x`` to ``(B, D)`` float32 (``(rows, D)`` for ``"none"``); always a new tensor."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    x = x.detach()
    if x.ndim == 2:
        return x.to(torch.float32, copy=True)
    tokens = False
    if x.ndim == 4:
        b, c = x.shape[:2]
        x = x.float().flatten(2).transpose(1, 2)  # (B, HW, C)
        if pooling == "last":
            raise ValueError("pooling 'last' has no meaning for a (B, C, H, W) feature map; use 'mean'")
        attention_mask = None
    elif x.ndim == 3:
        x = x.float()
        tokens = True
    else:
        raise ValueError(f"cannot pool an activation of shape {tuple(x.shape)}: expected (B, D), (B, T, D) or (B, C, H, W)")
    mask = None
    if attention_mask is not None and tuple(attention_mask.shape) == tuple(x.shape[:2]):
        mask = attention_mask.to(device=x.device).bool()
    if pooling == "mean_nosink":
        if tokens:  # (B, T, D): drop each sequence's first real token unless it is the only one
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            first = mask.int().argmax(1)  # first real token, whatever the padding side
            many = mask.sum(1) > 1
            rows = torch.arange(x.shape[0], device=x.device)[many]
            mask = mask.clone()
            mask[rows, first[many]] = False
        pooling = "mean"
    if pooling == "none":
        rows = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])
        return rows.contiguous()
    if mask is None:
        if pooling == "mean":
            return x.mean(1)
        if pooling == "max":
            return x.amax(1)
        if pooling == "min":
            return x.amin(1)
        return x[:, -1].clone()
    empty = ~mask.any(1)
    if bool(empty.any()):
        raise ValueError(f"sample {int(empty.nonzero()[0])} of the batch has no real token in its attention mask "
                         "(an empty text?): every input needs at least one token")
    m = mask.unsqueeze(-1)
    if pooling == "mean":  # padding is left out, also when it holds NaN or inf
        return x.masked_fill(~m, 0).sum(1) / m.sum(1)
    if pooling == "max":
        return x.masked_fill(~m, float("-inf")).amax(1)
    if pooling == "min":
        return x.masked_fill(~m, float("inf")).amin(1)
    # last real token, whatever the padding side
    t = mask.shape[1]
    idx = (t - 1) - mask.flip(1).int().argmax(1)
    return x[torch.arange(x.shape[0], device=x.device), idx].clone()
