"""The same tiny weights in diffusers and in ComfyUI, for every family.

:func:`comfy_from_diffusers` loads a tiny diffusers pipeline (``tests/diffusers_helpers.py``) into
ComfyUI the way ComfyUI loads such weights itself: the denoiser through
``comfy.sd.load_diffusion_model_state_dict`` (ComfyUI's UNETLoader path; a UNet is first written
in the original LDM layout by ``act_core.diffusion.single_file``, SD3 / FLUX transformers go in
diffusers format and ComfyUI converts them), detected as the test pack's tiny type; the text
encoders' transformers state dicts into that type's CLIP. :func:`save_checkpoint` writes the
result with a random TAESD as one file ``CheckpointLoaderSimple`` reads (the server tests).

Also: :func:`denoise_both` runs both denoisers on identical inputs (latent, timestep, text
context, pooled vector, guidance), in each framework's own calling convention.
"""

from __future__ import annotations

import torch

from act_core.diffusion import families


def _clip_sd(encoder) -> dict:
    """A transformers CLIP text model's state dict with the ``text_model.`` prefix ComfyUI expects."""
    out = {}
    for k, v in encoder.state_dict().items():
        if k.endswith("position_ids"):
            continue
        out[k if k.startswith(("text_model.", "text_projection")) else "text_model." + k] = v
    return out


def comfy_from_diffusers(pipe):
    """(MODEL, CLIP) in ComfyUI holding ``pipe``'s denoiser and text-encoder weights."""
    import comfy.sd

    from act_core.diffusion.single_file import _unet_to_ldm

    fam = families.for_pipeline(pipe)
    if fam.denoiser == "unet":
        unet = pipe.unet
        up_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
        sd = _unet_to_ldm(unet.state_dict(), unet.config.layers_per_block, up_attn)
    else:
        sd = dict(pipe.transformer.state_dict())
    # copies: ComfyUI's converters write into the tensors they are given (FLUX's swapped norm_out halves)
    model = comfy.sd.load_diffusion_model_state_dict({k: v.detach().clone() for k, v in sd.items()})
    if model is None:
        raise RuntimeError(f"ComfyUI did not detect the tiny {fam.title} denoiser (is the test pack loaded?)")
    config = model.model.model_config
    # float32 text encoders (ComfyUI's default on CPU is float16) so both frameworks compute alike
    clip = comfy.sd.CLIP(config.clip_target(), model_options={"dtype": torch.float32})
    cm = clip.cond_stage_model
    for canon, te in fam.text_encoders.items():
        encoder = getattr(pipe, canon, None)
        target = getattr(cm, te.comfy, None)
        if encoder is None or target is None:
            continue
        sd = _clip_sd(encoder) if te.kind == "clip" else {k: v for k, v in encoder.state_dict().items()
                                                            if k != "encoder.embed_tokens.weight"}
        missing, unexpected = target.transformer.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
        missing = [k for k in missing if not k.endswith(("logit_scale", "text_projection.weight"))]
        if missing or unexpected:
            raise RuntimeError(f"{te.comfy}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model, clip


def save_checkpoint(path, model, clip, seed: int = 0):
    """MODEL + CLIP + a random TAESD VAE (the model's latent channels) as one checkpoint file."""
    import comfy.sd
    import comfy.taesd.taesd

    channels = int(model.model.latent_format.latent_channels)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in taesd.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    comfy.sd.save_checkpoint(str(path), model, clip=clip, vae=comfy.sd.VAE(sd=taesd.state_dict()))
    return path


def inputs(pipe, seed: int = 0, batch: int = 1, tokens: int = 7):
    """Identical denoiser inputs for both frameworks: latent ``(B, C, 8, 8)``, sigma (0.7),
    text context ``(B, T, D)``, pooled vector ``(B, P)`` and FLUX guidance (3.5)."""
    fam = families.for_pipeline(pipe)
    g = torch.Generator().manual_seed(seed)
    den = fam.denoiser_module(pipe)
    if fam.name == "flux":
        c, d, p = den.config.in_channels // 4, den.config.joint_attention_dim, den.config.pooled_projection_dim
    elif fam.name == "sd3":
        c, d, p = den.config.in_channels, den.config.joint_attention_dim, den.config.pooled_projection_dim
    else:
        c, d = den.config.in_channels, den.config.cross_attention_dim
        p = den.config.projection_class_embeddings_input_dim - 6 * den.config.addition_time_embed_dim if fam.name == "sdxl" else 0
    return {"x": torch.randn(batch, c, 8, 8, generator=g), "sigma": 0.7, "context": torch.randn(batch, tokens, d, generator=g),
            "pooled": torch.randn(batch, p, generator=g) if p else None, "guidance": 3.5}


def _conventions(model, inp):
    """(input the denoiser sees, its timestep) for ``inp`` in ComfyUI's convention, from the
    MODEL's own model_sampling (EPS models scale the input by 1/sqrt(sigma^2 + 1) and use the
    discrete timestep; SD3 sigma x 1000; FLUX sigma)."""
    ms = model.get_model_object("model_sampling")
    sigma = torch.full((inp["x"].shape[0],), inp["sigma"])
    return ms.calculate_input(sigma, inp["x"]), ms.timestep(sigma).float()


@torch.no_grad()
def denoise_diffusers(pipe, model, inp) -> torch.Tensor:
    """The diffusers denoiser's raw output on ``inp`` (input and timestep as ComfyUI's ``model``
    feeds its own; FLUX unpacked to ``(B, C, h, w)``)."""
    from act_core.diffusion.families.flux import pack

    fam = families.for_pipeline(pipe)
    den = fam.denoiser_module(pipe)
    x, t = _conventions(model, inp)
    ctx, b = inp["context"], x.shape[0]
    if fam.denoiser == "unet":
        kw = {}
        if fam.name == "sdxl":
            ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).repeat(b, 1)
            kw["added_cond_kwargs"] = {"text_embeds": inp["pooled"], "time_ids": ids}
        return den(x, t, encoder_hidden_states=ctx, **kw).sample
    if fam.name == "sd3":
        return den(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=inp["pooled"]).sample
    h, w = x.shape[-2:]
    rows = torch.arange(h // 2)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2)[None, :].expand(h // 2, w // 2)
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    guidance = torch.full((b,), inp["guidance"]) if den.config.guidance_embeds else None
    out = den(hidden_states=pack(x), timestep=t, guidance=guidance, encoder_hidden_states=ctx,
              pooled_projections=inp["pooled"], txt_ids=torch.zeros(ctx.shape[1], 3), img_ids=img_ids).sample
    c = x.shape[1]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@torch.no_grad()
def denoise_comfy(model, pipe, inp) -> torch.Tensor:
    """ComfyUI's raw denoiser output on ``inp`` through ``MODEL.model.apply_model`` with the
    MODEL's own transformer options and wrappers (what a sampler step calls): ``(x - denoised) / sigma``."""
    fam = families.for_pipeline(pipe)
    x, ctx, b = inp["x"], inp["context"], inp["x"].shape[0]
    # what a sampler passes: the MODEL's transformer options with its wrappers merged in (as
    # comfy.sampler_helpers does); a fresh dict, since the forward writes into it
    options = {**model.model_options.get("transformer_options", {}), "wrappers": model.wrappers}
    sigma = torch.full((b,), inp["sigma"])
    kw = {}
    if fam.name == "sdxl":
        ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).repeat(b, 1)
        kw["y"] = torch.cat([inp["pooled"], pipe.unet.add_time_proj(ids.flatten()).reshape(b, -1)], -1)
    elif fam.name in ("sd3", "flux"):
        kw["y"] = inp["pooled"]
    if fam.name == "flux":
        kw["guidance"] = torch.full((b,), inp["guidance"])
    denoised = model.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=options, **kw)
    return (x - denoised) / sigma.view(-1, 1, 1, 1)
