"""TEST-ONLY ComfyUI pack: load the miniature SDXL's single-file checkpoints (act_core.diffusion.miniworld).

The miniature has SDXL's block layout, but at sizes ComfyUI's stock SDXL does not describe:
level widths 32/48/64 (ComfyUI derives widths as integer multiples of the first, so 48 reads
as 32), GroupNorms of 8 groups (ComfyUI builds 32), 16-wide size embeddings in the
``text_time`` conditioning (ComfyUI: 256), CLIP-L/CLIP-G of width 32/48 with 3 layers, a
2×-downsampling VAE with 16/32 channels and its own latent scaling factor. This pack registers
``MiniworldSDXL`` (matched on the detected UNet config) that builds exactly that model out of
ComfyUI's own classes, and wraps the checkpoint's VAE (diffusers ``AutoencoderKL``) as a
ComfyUI ``VAE``. The tests copy it into ``custom_nodes`` next to the node pack; it is not
part of the pack. Real SDXL-family checkpoints (SDXL-Lightning, Turbo) load natively.
"""

import json

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

GROUPS = 8
TIME_EMBED = 16
VAE_FACTOR = 2  # the miniature's VAE downsamples by 2 (ComfyUI assumes 8 for SDXL)
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
          "projection_dim": 32, "hidden_act": "quick_gelu"}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 3,
          "projection_dim": 48, "hidden_act": "gelu"}


def _miniworld():
    from act_core.diffusion import miniworld  # the node pack's bundled copy (loaded before this pack)

    return miniworld


class _Width(float):
    """A channel multiplier whose product with the base width is an int (1.5 × 32 = 48)."""

    def __mul__(self, other):
        r = float(self) * other
        return int(r) if isinstance(other, int) and float(r).is_integer() else r

    __rmul__ = __mul__


class _Ops(comfy.ops.manual_cast):
    class GroupNorm(comfy.ops.manual_cast.GroupNorm):
        def __init__(self, num_groups=None, num_channels=None, *args, **kwargs):
            super().__init__(GROUPS, num_channels, *args, **kwargs)


class MiniworldLatent(comfy.latent_formats.LatentFormat):
    def __init__(self):
        cfg = json.loads((_miniworld().MODEL / "vae" / "config.json").read_text())
        self.scale_factor = float(cfg["scaling_factor"])


class MiniworldSDXLModel(comfy.model_base.SDXL):
    def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
        super().__init__(model_config, model_type, device=device)
        self.embedder = Timestep(TIME_EMBED)

    def encode_adm(self, **kwargs):
        noise = kwargs["noise"]
        h, w = noise.shape[2] * VAE_FACTOR, noise.shape[3] * VAE_FACTOR  # the image size, as diffusers uses it
        return super().encode_adm(**{**kwargs, "width": w, "height": h, "crop_w": 0, "crop_h": 0,
                                     "target_width": w, "target_height": h})


class MiniworldClip(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options={**model_options, "clip_l_model_config": dict(CLIP_L),
                                                                    "clip_g_model_config": dict(CLIP_G)})


class MiniworldSDXL(comfy.supported_models.SDXL):
    unet_config = {"model_channels": 32, "use_linear_in_transformer": True, "transformer_depth": [0, 1, 1],
                   "context_dim": 80, "adm_in_channels": 6 * TIME_EMBED + 48, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 2, "num_head_channels": -1}
    latent_format = MiniworldLatent
    _ops = None

    @property
    def custom_operations(self):  # the checkpoint loader resets it to None: keep the 8-group norms
        return self._ops or _Ops

    @custom_operations.setter
    def custom_operations(self, value):
        self._ops = value

    def __init__(self, unet_config):
        super().__init__(unet_config)
        self.unet_config["channel_mult"] = [_Width(1), _Width(1.5), _Width(2)]

    def get_model(self, state_dict, prefix="", device=None):
        return MiniworldSDXLModel(self, model_type=self.model_type(state_dict, prefix), device=device)

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, MiniworldClip)


if MiniworldSDXL not in comfy.supported_models.models:
    comfy.supported_models.models.insert(0, MiniworldSDXL)


# -- the VAE ---------------------------------------------------------------------------------------


class _DiffusersVAE(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def decode(self, z, **kwargs):
        return self.vae.decode(z).sample

    def encode(self, x):
        return self.vae.encode(x).latent_dist.mean


def _is_miniworld_vae(sd) -> bool:
    w = sd.get("encoder.conv_in.weight")
    return w is not None and tuple(w.shape) == (16, 3, 3, 3) and "encoder.down.2.block.0.norm1.weight" not in sd


def _diffusers_vae(sd):
    """The checkpoint's VAE (original key layout) as a diffusers AutoencoderKL of the miniature's config."""
    from diffusers import AutoencoderKL

    from act_core.diffusion.miniworld import model as M
    from act_core.diffusion.single_file import _vae_to_ldm

    vae = AutoencoderKL(**M.VAE)
    ref = vae.state_dict()
    names = list(_vae_to_ldm(ref, len(M.VAE["up_block_types"])))  # same order as ref
    new = {}
    for dk, lk in zip(ref, names):
        t = sd[lk[len("first_stage_model."):]]  # ComfyUI hands the VAE its keys without the prefix
        new[dk] = t.reshape(ref[dk].shape).to(ref[dk].dtype)
    vae.load_state_dict(new)
    return vae.eval()


_StockVAE = comfy.sd.VAE


class MiniworldAwareVAE(_StockVAE):
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None):
        if sd is None or config is not None or not _is_miniworld_vae(sd):
            super().__init__(sd=sd, device=device, config=config, dtype=dtype, metadata=metadata)
            return
        import comfy.taesd.taesd

        # every attribute ComfyUI's VAE needs, from a stand-in; then the miniature's own model
        super().__init__(sd=comfy.taesd.taesd.TAESD(latent_channels=4).state_dict(), device=device, dtype=dtype)
        self.first_stage_model = _DiffusersVAE(_diffusers_vae(sd)).to(self.vae_dtype)
        self.downscale_ratio = self.upscale_ratio = VAE_FACTOR
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=self.patcher.offload_device)
        self.size = None


comfy.sd.VAE = MiniworldAwareVAE

NODE_CLASS_MAPPINGS = {}
