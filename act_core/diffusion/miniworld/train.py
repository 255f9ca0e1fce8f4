"""Training the miniature SDXL from scratch on the procedural world (CPU, minutes).

Stages (each resumable from its checkpoint in ``ckpt``):

1. ``vae``: the AutoencoderKL on rendered scenes (L1 + MSE reconstruction, KL weight 1e-5);
   then ``scaling_factor`` = 1 / std of the latent means, as SDXL's VAE config has one.
2. ``data``: a fixed set of scenes, their captions, token ids and scaled latent means.
3. ``unet``: UNet + both text encoders jointly, the standard epsilon-prediction DDPM loss on
   SDXL's noise schedule (min-SNR-5 weighting), 10% of captions dropped to the pipeline's
   unconditional input (all-zero prompt embeddings and pooled embedding, as
   ``force_zeros_for_empty_prompt`` makes them), SDXL micro-conditioning ids for 32×32 images,
   AdamW with warmup + cosine decay, an EMA of the weights (the EMA is what is saved).

The result is saved as a diffusers folder (fp16) that :func:`act_core.diffusion.pipeline.load_sdxl`
loads as a ``StableDiffusionXLPipeline``.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import model as M
from . import world as W

Log = Callable[[str], None]


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,32,32,3) -> float (N,3,32,32) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(pipe, ckpt: Path, steps: int = 800, batch: int = 32, lr: float = 2e-3, seed: int = 0,
              log: Log = print, n_images: int = 8000) -> float:
    vae = pipe.vae
    path = ckpt / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = 0
    if path.exists():
        st = torch.load(path, weights_only=False)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start = st["step"]
        if st.get("done"):
            log(f"[vae] done (checkpoint), scaling_factor {st['scale']:.4f}")
            vae.register_to_config(scaling_factor=st["scale"])
            return st["scale"]
    images, _, _ = W.dataset(n_images, seed=seed + 101)
    x_all = to_tensor(images)
    g = torch.Generator().manual_seed(seed + start)
    sched = lambda s: lr * min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0 = time.time()
    vae.train()
    for s in range(start, steps):
        for gr in opt.param_groups:
            gr["lr"] = sched(s)
        x = x_all[torch.randint(0, len(x_all), (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-5 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (s + 1) % 50 == 0 or s + 1 == steps:
            log(f"[vae] step {s + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (s + 1) % 200 == 0:
            _save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": s + 1}, path)
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, 2048, 256)])
        rec = torch.cat([vae.decode(z[i:i + 256]).sample for i in range(0, len(z), 256)])
    psnr = float(10 * torch.log10(4 / F.mse_loss(rec.clamp(-1, 1), x_all[:2048])))
    scale = float(1.0 / z.std())
    log(f"[vae] reconstruction PSNR {psnr:.1f} dB, latent mean {z.mean():.3f} std {z.std():.3f} -> scaling_factor {scale:.4f}")
    vae.register_to_config(scaling_factor=scale)
    _save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": steps, "done": True, "scale": scale,
           "psnr": psnr}, path)
    return scale


@torch.no_grad()
def make_data(pipe, ckpt: Path, n: int = 20000, seed: int = 0, log: Log = print) -> dict:
    path = ckpt / "data.pt"
    if path.exists():
        d = torch.load(path, weights_only=False)
        if len(d["captions"]) == n:
            return d
    t0 = time.time()
    images, captions, _ = W.dataset(n, seed=seed)
    x = to_tensor(images)
    vae = pipe.vae.eval()
    z = torch.cat([vae.encode(x[i:i + 500]).latent_dist.mean for i in range(0, n, 500)]) * vae.config.scaling_factor
    ids1, ids2 = M.token_ids(pipe, captions)
    d = {"latents": z.half(), "ids1": ids1.int(), "ids2": ids2.int(), "captions": captions}
    _save(d, path)
    log(f"[data] {n} scenes encoded in {time.time() - t0:.0f}s; latents std {z.std():.3f}")
    return d


def _ema_update(ema, model, decay):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def train_unet(pipe, data: dict, ckpt: Path, steps: int = 5000, batch: int = 32, lr: float = 8e-4, seed: int = 0,
               p_uncond: float = 0.1, log: Log = print, max_minutes: Optional[float] = None) -> int:
    """Returns the number of steps done (== steps when finished)."""
    from diffusers import DDPMScheduler

    nets = torch.nn.ModuleDict({"unet": pipe.unet, "te": pipe.text_encoder, "te2": pipe.text_encoder_2})
    ema = copy.deepcopy(nets).requires_grad_(False)
    opt = torch.optim.AdamW(nets.parameters(), lr=lr, weight_decay=0.01)
    path = ckpt / "unet.pt"
    start = 0
    if path.exists():
        st = torch.load(path, weights_only=False)
        nets.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start = st["step"]
        log(f"[unet] resumed at step {start}")
    ab = DDPMScheduler(**{k: v for k, v in M.SCHEDULER.items() if k != "timestep_spacing"}).alphas_cumprod
    snr = ab / (1 - ab)
    weight = torch.clamp(snr, max=5.0) / snr
    z_all, ids1, ids2 = data["latents"].float(), data["ids1"].long(), data["ids2"].long()
    n = len(z_all)
    time_ids = M.add_time_ids(batch)
    sched = lambda s: lr * min(1.0, (s + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    nets.train()
    t0 = time.time()
    done = start
    for s in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + s)  # per-step generator: resume == uninterrupted
        for gr in opt.param_groups:
            gr["lr"] = sched(s)
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = z_all[idx]
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        emb, pooled = M.encode_text(pipe, ids=(ids1[idx], ids2[idx]))
        keep = (torch.rand(batch, generator=g) >= p_uncond).float()
        emb = emb * keep.view(-1, 1, 1)
        pooled = pooled * keep.view(-1, 1)
        pred = pipe.unet(xt, t, emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        loss = ((pred - eps) ** 2).mean((1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets.parameters(), 1.0)
        opt.step()
        _ema_update(ema, nets, min(0.998, (1 + s) / (10 + s)))
        done = s + 1
        if done % 50 == 0 or done == steps:
            el = time.time() - t0
            log(f"[unet] step {done}/{steps} loss {loss.item():.4f} lr {sched(s):.2e} "
                f"({el:.0f}s, {el / (done - start):.2f}s/step)")
        stop = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if done % 250 == 0 or done == steps or stop:
            _save({"model": nets.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": done}, path)
        if stop:
            log(f"[unet] time limit reached at step {done}; rerun to resume")
            break
    nets.load_state_dict(ema.state_dict())  # the EMA weights are the model
    nets.eval()
    return done


def load_checkpoint(pipe, ckpt: Path) -> int:
    """Put the checkpoint's VAE and EMA UNet/text-encoder weights into ``pipe``; returns the UNet step."""
    st = torch.load(Path(ckpt) / "vae.pt", weights_only=False)
    pipe.vae.load_state_dict(st["model"])
    pipe.vae.register_to_config(scaling_factor=st["scale"])
    st = torch.load(Path(ckpt) / "unet.pt", weights_only=False)
    nets = torch.nn.ModuleDict({"unet": pipe.unet, "te": pipe.text_encoder, "te2": pipe.text_encoder_2})
    nets.load_state_dict(st["ema"])
    for m in (pipe.vae, pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        m.eval()
    return st["step"]
