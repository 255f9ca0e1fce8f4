"""Stable Diffusion 1.x and 2.x (and fine-tunes with the same keys): canonical names, their
ComfyUI counterparts and layer presets.

Both use the same UNet layout (4 levels, attention on down levels 0-2 and up levels 1-3; SD2
projects attention with linear layers instead of 1x1 convolutions, which keeps the names).
They differ in the text encoder: SD1.x reads CLIP-L, SD2.x OpenCLIP-H (transformers
``CLIPTextModel`` layout in diffusers; 23 layers there, the 24th unused, 24 in ComfyUI).

Canonical names (diffusers ``StableDiffusionPipeline``):

- UNet: ``unet.<UNet2DConditionModel name>``, e.g. ``unet.down_blocks.3.resnets.1.norm2``;
- text encoder: ``text_encoder.<name below text_model>``.

ComfyUI (relative to ``MODEL.model`` and ``CLIP.cond_stage_model``): ``diffusion_model.<UNetModel
name>`` (block numbering in :class:`~act_core.diffusion.families.base.LdmUNet`);
``clip_l.transformer.text_model.<x>`` (SD1.x) or ``clip_h.transformer.text_model.<x>`` (SD2.x).

Layer presets: the UNet presets of SDXL (``unet_norms`` is the paper's choice), and
``text_encoder_layers``, ``text_encoder_mlp``, ``text_encoder_norms``, ``text_encoder_fast``
for the one text encoder.
"""

from __future__ import annotations

from ..presets import Preset, preset_table
from .base import CLIP_H, CLIP_L, Family, LdmUNet
from .sdxl import UNET_PRESETS

UNET_LAYOUT = LdmUNet(levels=4, down_attention=(0, 1, 2), up_attention=(1, 2, 3))
ROLES = {"norms": ("unet_norms",), "blocks": ("unet_resnets", "unet_transformer_blocks"),
         "attention": ("unet_attention_outputs",), "text": ("text_encoder_layers",)}

PRESETS = preset_table(
    *UNET_PRESETS,
    Preset("text_encoder_layers", (r"text_encoder\.encoder\.layers\.\d+",), "encoder layers of the text encoder"),
    Preset("text_encoder_mlp", (r"text_encoder\.encoder\.layers\.\d+\.mlp\.fc2",), "MLP outputs of the text encoder"),
    Preset("text_encoder_norms", (r"text_encoder\.encoder\.layers\.\d+\.layer_norm[12]", r"text_encoder\.final_layer_norm"),
           "LayerNorms of the text encoder"),
    Preset("text_encoder_fast", (r"text_encoder\.encoder\.layers\.0\.mlp",), "first-layer MLP (fast, weak)"),
)

#: Structural fields of the SD1.5 UNet config (what builds the real-size tree on the meta device)
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
)
#: SD2.x: linear projections, 64-channel heads, 1024-wide OpenCLIP-H context
SD2_UNET_CONFIG = dict(SD15_UNET_CONFIG, sample_size=96, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                       use_linear_projection=True)


class _SD(Family):
    linear: bool = False

    def matches_pipeline(self, pipe) -> bool:
        unet = getattr(pipe, "unet", None)
        if unet is None or getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "transformer", None) is not None:
            return False
        if type(pipe).__name__ not in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline") and hasattr(pipe, "components"):
            return False
        return bool(getattr(unet.config, "use_linear_projection", False)) == self.linear


class SD15Family(_SD):
    linear = False


class SD2Family(_SD):
    linear = True


FAMILY = SD15Family(
    name="sd15", title="SD1.5", denoiser="unet", text_encoders={"text_encoder": CLIP_L}, presets=PRESETS,
    default_layers="unet_norms", pipeline_class="StableDiffusionPipeline", kinds={"base": (30, 7.5)},
    comfy_models=("SD15", "SD15_instructpix2pix"), comfy_clips=("SD1ClipModel",),
    notes="SD1.x and fine-tunes with the same keys", roles=ROLES, _unet=UNET_LAYOUT,
)

SD2 = SD2Family(
    name="sd2", title="SD2.x", denoiser="unet", text_encoders={"text_encoder": CLIP_H}, presets=PRESETS,
    default_layers="unet_norms", pipeline_class="StableDiffusionPipeline", kinds={"base": (30, 7.5), "turbo": (1, 0.0)},
    comfy_models=("SD20",), comfy_clips=("SD2ClipModel",), notes="SD2.0/2.1 (512 and 768-v), SD-Turbo",
    roles=ROLES, _unet=UNET_LAYOUT,
)

__all__ = ["FAMILY", "SD2", "PRESETS", "UNET_LAYOUT", "SD15_UNET_CONFIG", "SD2_UNET_CONFIG"]
