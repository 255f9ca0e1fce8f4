"""A ComfyUI Runner for ``act_core.fit_map``: prompts in, hooked activations out.

Each prompt is encoded with the CLIP (text-encoder hooks fire there) and, when UNet modules
are hooked, sampled with ComfyUI's own sampler at ``cfg = 1`` (ComfyUI then runs only the
conditional batch) from the same seeded noise for every prompt. The collector stops the
forward pass after the last hooked module, so only the first denoising step runs, and only
up to that module.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from act_core.hooks import ActivationCollector, run_until_stop

from . import comfy_compat as cc
from .steering import UNET_ROOT


class ComfyRunner:
    def __init__(self, model, clip, seed: int, width: int, height: int, steps: int,
                 on_prompt: Optional[Callable[[], None]] = None, sampler_name: str = "euler", scheduler: str = "normal"):
        self.comfy_model, self.clip = model, clip
        self.model = cc.model_tree(model, clip)
        self.architecture = cc.architecture(model)
        self.seed, self.steps = int(seed), int(steps)
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.latent = cc.empty_latent(model, width, height)
        self.on_prompt = on_prompt or (lambda: None)
        # encoded once, before any collector or steering hook is attached
        self._negative = cc.encode(clip, "")

    def run(self, inputs: Sequence[str], collector: ActivationCollector) -> None:
        needs_unet = any(n.startswith(UNET_ROOT + ".") for n in collector.modules)
        for text in inputs:
            cc.check_interrupted()
            collector.attention_mask = None
            if needs_unet:
                run_until_stop(self._sample, text)
            else:
                run_until_stop(cc.encode, self.clip, text)
            self.on_prompt()

    def _sample(self, text: str):
        positive = cc.encode(self.clip, text)
        return cc.sample(self.comfy_model, positive, self._negative, self.latent, self.seed, self.steps, 1.0,
                         self.sampler_name, self.scheduler)
