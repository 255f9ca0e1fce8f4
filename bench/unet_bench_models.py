"""SDXL-structured UNets with random weights for benchmarks (no download).

The UNet keeps SDXL's real block structure (3 stages, transformer depth 1/2/10, text_time
conditioning, 2048-wide cross-attention); ``width`` scales the channel counts:
``full`` = SDXL (2.6 B params), ``half``, ``quarter`` (≈ 158 M, the CPU default).
Weights are created on the meta device and filled with N(0, 0.02) (norms 1/0): timing does
not depend on the values and building is fast.
"""

from __future__ import annotations

from typing import Sequence

import torch

from act_core.diffusion.families.sdxl import SDXL_UNET_CONFIG

WIDTHS = {
    "full": {},
    "half": dict(block_out_channels=(160, 320, 640)),
    "quarter": dict(block_out_channels=(64, 128, 256), attention_head_dim=(1, 2, 4)),
}


def build_unet(width: str = "quarter", device: str = "cpu", dtype=torch.float32, seed: int = 0):
    from diffusers import UNet2DConditionModel

    cfg = dict(SDXL_UNET_CONFIG, **WIDTHS[width])
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    unet.to_empty(device=device)
    # drawn on the target device (a CPU generator for 2.6 B values takes long on a GPU host);
    # values differ between devices, timings do not depend on them
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype) * 0.02)
        for _, b in unet.named_buffers():
            if b.is_floating_point():
                b.zero_()
    return unet.to(dtype).eval()


class UNetRunner:
    """Runner: each input is an integer seed that fixes that sample's latent and text condition.

    ``shift`` offsets the text condition of every input (source vs target distributions);
    inputs are seeds so a batch's composition never changes a sample's values.
    """

    def __init__(self, unet, latent: int = 32, batch_size: int = 8, device="cpu", dtype=torch.float32):
        self.model, self.architecture = unet, "sdxl-unet-bench"
        self.latent, self.batch_size, self.device, self.dtype = latent, batch_size, device, dtype

    def inputs(self, seeds: Sequence[int], shift: float):
        lat, ctx, pooled = [], [], []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            lat.append(torch.randn(4, self.latent, self.latent, generator=g))
            ctx.append(torch.randn(77, 2048, generator=g) + shift)
            pooled.append(torch.randn(1280, generator=g) + shift)
        cast = dict(device=self.device, dtype=self.dtype)
        cond = {"text_embeds": torch.stack(pooled).to(**cast),
                "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * len(seeds)).to(**cast)}
        return torch.stack(lat).to(**cast), torch.stack(ctx).to(**cast), cond

    @torch.no_grad()
    def step(self, seeds: Sequence[int], shift: float = 0.0):
        return self.step_on(self.inputs(seeds, shift))

    @torch.no_grad()
    def step_on(self, inputs):
        """One denoising step (t = 999) on ``inputs`` made by :meth:`inputs` (timed without
        drawing them)."""
        lat, ctx, cond = inputs
        t = torch.full((lat.shape[0],), 999, device=self.device)
        return self.model(lat, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample

    def run(self, inputs, collector) -> None:
        from act_core.hooks import run_until_stop

        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i : i + self.batch_size]
            seeds = [s for s, _ in chunk]
            shift = chunk[0][1]
            if any(sh != shift for _, sh in chunk):  # mixed source/target batch (one-pass causal)
                lat, ctx, cond = zip(*(self.inputs([s], sh) for s, sh in chunk))
                lat, ctx = torch.cat(lat), torch.cat(ctx)
                cond = {k: torch.cat([c[k] for c in cond]) for k in cond[0]}
                t = torch.full((len(chunk),), 999, device=self.device)
                with torch.no_grad():
                    run_until_stop(self.model, lat, t, encoder_hidden_states=ctx, added_cond_kwargs=cond)
                continue
            with torch.no_grad():
                run_until_stop(self.step, seeds, shift)
