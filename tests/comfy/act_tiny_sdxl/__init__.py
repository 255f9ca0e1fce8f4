"""TEST-ONLY ComfyUI pack: a tiny random SDXL-architecture model type built from ComfyUI's classes.

Stock checkpoint detection matches SDXL on its real sizes (2.6 B UNet parameters); this pack
registers ``TinySDXL`` (same block layout, 32 base channels, 1 transformer block per attention,
32-wide CLIP-L/CLIP-G with 3 layers) so ``CheckpointLoaderSimple`` can load a tiny checkpoint
written by :func:`save_tiny_checkpoint`. It is copied into ``custom_nodes`` only by the tests.
"""

import torch

import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base

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

if TinySDXL not in comfy.supported_models.models:
    comfy.supported_models.models.append(TinySDXL)


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


NODE_CLASS_MAPPINGS = {}
