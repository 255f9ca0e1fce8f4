"""The initial noise of a prompt during fitting: one rule for diffusers and ComfyUI.

Every prompt gets its own standard-normal latent, drawn on the CPU from a generator seeded with
``seed`` and a stable hash (CRC-32) of the prompt's text. Like the reference, which draws fresh
latents for every collection call, source and target activations are spread over many noise
draws (so the fitted bands cover the noise, not one draw); unlike it, a fit is reproducible and
a prompt's noise does not depend on the batch it is in (one-pass causal fitting batches every
prompt together; batched and one-at-a-time collection give the same activations).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch


def prompt_noise(seed: int, prompt: str, shape: Sequence[int]) -> torch.Tensor:
    """``(*shape)`` float32 standard-normal noise for ``prompt`` under ``seed`` (CPU)."""
    g = torch.Generator("cpu").manual_seed((int(seed) * 1_000_003 + zlib.crc32(str(prompt).encode("utf-8"))) % (2**63))
    return torch.randn(*shape, generator=g)


def batch_noise(seed: int, prompts: Sequence[str], shape: Sequence[int]) -> torch.Tensor:
    """``(len(prompts), *shape)``: :func:`prompt_noise` of each prompt, stacked."""
    return torch.stack([prompt_noise(seed, p, shape) for p in prompts])
