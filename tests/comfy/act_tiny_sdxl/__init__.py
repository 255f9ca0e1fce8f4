"""TEST-ONLY ComfyUI pack: tiny random model types of every family, built from ComfyUI's classes.

Stock checkpoint detection matches each family on its real sizes (SDXL: 2.6 B UNet parameters;
FLUX: 24 heads of 128 channels; the text encoders' configs are fixed files). This pack registers
tiny types with the same block layouts so ``CheckpointLoaderSimple`` / ``UNETLoader`` load tiny
checkpoints: ``TinySDXL`` (32 base channels, 1 transformer block per attention, 32-wide CLIP-L /
CLIP-G with 3 layers), ``TinySD15`` / ``TinySD2`` (4 levels of 32-32-64-64 channels), ``TinySD3``
(2 joint blocks of two 64-channel heads; CLIP-L + CLIP-G, no T5), ``TinyFlux`` / ``TinyFluxSchnell``
(1 double + 2 single blocks, 2 heads of 16; CLIP-L + T5 32 wide) and ``TinyChroma`` (a model type
without a family module in act-steering: the generic path). The tiny diffusers pipelines of
``tests/diffusers_helpers.py`` have the same shapes. Copied into ``custom_nodes`` only by the tests.
"""

import torch

import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.pixart_t5
import comfy.text_encoders.sd2_clip
import comfy.text_encoders.sd3_clip

CLIP_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
               "num_hidden_layers": 3, "projection_dim": 32}


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        options = dict(model_options)
        options["clip_l_model_config"] = dict(CLIP_CONFIG)
        options["clip_g_model_config"] = dict(CLIP_CONFIG)
        super().__init__(device=device, dtype=dtype, model_options=options)


class TinySDXL(comfy.supported_models.SDXL):
    # context = clip_l 32 + clip_g 32; adm = pooled 32 + 6 size embeddings of 256
    unet_config = {"model_channels": 32, "use_linear_in_transformer": True,
                   "transformer_depth": [0, 0, 1, 1, 1, 1], "context_dim": 64,
                   "adm_in_channels": 1568, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)


UNET_CONFIG = dict(TinySDXL.unet_config, in_channels=4, out_channels=4, num_res_blocks=[2, 2, 2],
                   channel_mult=[1, 2, 4], transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
                   transformer_depth_middle=1, num_classes="sequential", use_spatial_transformer=True,
                   legacy=False, image_size=32, use_checkpoint=False, use_temporal_resblock=False)

T5_CONFIG = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}


def _tiny_options(model_options, **configs):
    options = dict(model_options)
    for name, config in configs.items():
        options[f"{name}_model_config"] = dict(config)
    return options


class TinySD1ClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
        super().__init__(device=device, dtype=dtype, model_options=_tiny_options(model_options, clip_l=CLIP_CONFIG), **kwargs)


class TinySD15(comfy.supported_models.SD15):
    unet_config = {"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 2, "num_head_channels": -1}

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinySD1ClipModel)


class TinySD2ClipModel(comfy.text_encoders.sd2_clip.SD2ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
        config = dict(CLIP_CONFIG, hidden_act="gelu")
        super().__init__(device=device, dtype=dtype, model_options=_tiny_options(model_options, clip_h=config), **kwargs)


class TinySD2(comfy.supported_models.SD20):
    unet_config = {"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": True,
                   "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16, "attn_precision": torch.float32}

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd2_clip.SD2Tokenizer, TinySD2ClipModel)


class TinySD3ClipModel(comfy.text_encoders.sd3_clip.SD3ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        options = _tiny_options(model_options, clip_l=CLIP_CONFIG, clip_g=dict(CLIP_CONFIG, hidden_act="gelu"))
        super().__init__(clip_l=True, clip_g=True, t5=False, device=device, dtype=dtype, model_options=options)


class TinySD3(comfy.supported_models.SD3):
    unet_config = {"in_channels": 16, "pos_embed_scaling_factor": None, "depth": 2}

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, TinySD3ClipModel)


class TinyFluxClipModel(comfy.text_encoders.flux.FluxClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        options = _tiny_options(model_options, clip_l=CLIP_CONFIG, t5xxl=T5_CONFIG)
        super().__init__(device=device, dtype=dtype, model_options=options)


FLUX_EXTRA = {"num_heads": 2, "axes_dim": [4, 6, 6]}


class TinyFlux(comfy.supported_models.Flux):
    unet_config = {"image_model": "flux", "guidance_embed": True, "hidden_size": 32}
    unet_extra_config = dict(FLUX_EXTRA)

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, TinyFluxClipModel)


class TinyFluxSchnell(comfy.supported_models.FluxSchnell):
    unet_config = {"image_model": "flux", "guidance_embed": False, "hidden_size": 32}
    unet_extra_config = dict(FLUX_EXTRA)

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, TinyFluxClipModel)


class TinyChromaTE(comfy.text_encoders.pixart_t5.PixArtT5XXL):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options=_tiny_options(model_options, t5xxl=T5_CONFIG))


class TinyChroma(comfy.supported_models.Chroma):
    unet_config = {"image_model": "chroma", "hidden_size": 32}
    unet_extra_config = {"num_heads": 2, "axes_dim": [4, 6, 6], "out_dim": 32, "hidden_dim": 32, "n_layers": 1}

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.pixart_t5.PixArtTokenizer, TinyChromaTE)


# stock SD3 / FLUX / Chroma detection matches any size: the tiny types go first
for _cls in (TinyChroma, TinyFluxSchnell, TinyFlux, TinySD3):
    if _cls not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, _cls)
for _cls in (TinySDXL, TinySD15, TinySD2):
    if _cls not in comfy.supported_models.models:
        comfy.supported_models.models.append(_cls)


def init_weights(module, seed):
    """ComfyUI layers skip weight init (torch.empty); give every parameter a seeded value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def build(seed=0):
    """(MODEL, CLIP) of the tiny SDXL: a ModelPatcher and a comfy.sd.CLIP on CPU."""
    config = TinySDXL(dict(UNET_CONFIG))
    base = config.get_model({})
    init_weights(base, seed)
    model = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    clip = comfy.sd.CLIP(config.clip_target())
    init_weights(clip.cond_stage_model, seed + 1)
    return model, clip


def save_tiny_checkpoint(path, seed=0):
    """Write MODEL + CLIP + a random TAESD VAE as one checkpoint CheckpointLoaderSimple can load."""
    import comfy.taesd.taesd

    model, clip = build(seed)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_weights(taesd, seed + 2)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    comfy.sd.save_checkpoint(str(path), model, clip=clip, vae=vae)
    return path


CHROMA_CONFIG = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 32, "hidden_size": 32,
                 "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 2, "axes_dim": [4, 6, 6],
                 "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 32, "hidden_dim": 32,
                 "n_layers": 1}


def build_chroma(seed=0):
    """(MODEL, CLIP) of the tiny Chroma (a model type without an act-steering family module)."""
    config = TinyChroma(dict(CHROMA_CONFIG))
    base = config.get_model({})
    init_weights(base, seed)
    model = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    clip = comfy.sd.CLIP(config.clip_target())
    init_weights(clip.cond_stage_model, seed + 1)
    return model, clip


NODE_CLASS_MAPPINGS = {}
