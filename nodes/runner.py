"""A ComfyUI Runner for ``act_core.fit_map``: prompts in, hooked activations out.

Each prompt is encoded with the CLIP, one prompt at a time (text-encoder hooks fire there).
When UNet modules are hooked, up to ``batch_size`` prompts are then sampled together with
ComfyUI's own sampler at ``cfg = 1`` (ComfyUI then runs only the conditional batch): their
conditionings are stacked into one batch (:func:`comfy_compat.concat_conditioning`) and every
row starts from its prompt's own noise, :func:`act_core.diffusion.noise.prompt_noise` (seeded
with ``seed`` and the prompt's text: the rule of the diffusers runner too), so the activations
equal those of one-prompt-at-a-time sampling up to float rounding. The collector stops the forward pass after the last hooked
module, so only the first denoising step runs, and only up to that module.

``batch_size`` is writable: act_core's one-pass ``causal`` procedure sets it to the number
of inputs so that every source and target prompt goes through the UNet in one forward batch.
Memory of a UNet batch grows linearly with ``batch_size`` (activations of every row at once).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from act_core.diffusion.noise import batch_noise
from act_core.hooks import ActivationCollector, StopForward, run_until_stop
from act_core.selection import ordered

from . import comfy_compat as cc
from .steering import UNET_ROOT


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1 (got {batch_size!r}); "
                         "1 samples one prompt at a time, larger values are faster and use more memory")
    return batch_size


class ComfyRunner:
    def __init__(self, model, clip, seed: int, width: int, height: int,
                 on_prompts: Optional[Callable[[int], None]] = None, sampler_name: str = "euler",
                 scheduler: str = "normal", batch_size: int = 1):
        self.comfy_model, self.clip = model, clip
        self.model = cc.model_tree(model, clip)
        self.architecture = cc.architecture(model)
        self.seed = int(seed)
        self.batch_size = check_batch_size(batch_size)
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.latent = cc.empty_latent(model, width, height)
        self.on_prompts = on_prompts or (lambda n: None)
        # encoded once, before any collector or steering hook is attached (unused at cfg 1)
        self._negative = cc.encode(clip, "")

    def run(self, inputs: Sequence[str], collector: ActivationCollector) -> None:
        inputs = list(inputs)
        collector.attention_mask = None
        if not any(n.startswith(UNET_ROOT + ".") for n in collector.modules):
            for text in inputs:  # text-encoder modules only: no sampling at all
                cc.check_interrupted()
                run_until_stop(cc.encode, self.clip, text)
                self.on_prompts(1)
            return
        size = check_batch_size(self.batch_size)
        for start in range(0, len(inputs), size):
            chunk = inputs[start:start + size]
            conds = []
            for text in chunk:
                cc.check_interrupted()
                conds.append(cc.encode(self.clip, text))
            cc.check_interrupted()
            run_until_stop(self._sample, cc.concat_conditioning(conds), chunk)
            self.on_prompts(len(chunk))

    def order(self, names: Sequence[str]) -> List[str]:
        """``names`` in the order their forward hooks complete, measured on the empty prompt.

        ``named_modules()`` order is not forward order in ComfyUI (a transformer block defines
        ``norm2`` before ``norm1``), and the reference causal procedure fits layer by layer in
        this order. One CLIP encoding and, with UNet modules, one batch-1 first-step UNet pass
        stopped after the last module. Modules never reached keep their tree order, last.
        """
        names = list(names)
        seen: List[str] = []

        def make_hook(name):
            def hook(module, args, output):
                if name not in seen:
                    seen.append(name)
                    if len(seen) == len(names):
                        raise StopForward()
            return hook

        handles = [self.model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
        try:
            cond = run_until_stop(cc.encode, self.clip, "")
            if cond is not None and any(n.startswith(UNET_ROOT + ".") for n in names):
                run_until_stop(self._sample, cond, [""])
        finally:
            for h in handles:
                h.remove()
        return seen + [n for n in ordered(self.model, names) if n not in seen]

    def _sample(self, positive, texts: Sequence[str]):
        latent = self.latent.repeat(len(texts), 1, 1, 1)
        noise = batch_noise(self.seed, texts, cc.noise_shape(self.comfy_model, self.latent))
        # the collector stops the pass inside the first step, whose noise level (the schedule's
        # largest sigma) does not depend on the step count: one step is the whole schedule here
        return cc.sample(self.comfy_model, positive, self._negative, latent, self.seed, 1, 1.0,
                         self.sampler_name, self.scheduler, noise=noise)
