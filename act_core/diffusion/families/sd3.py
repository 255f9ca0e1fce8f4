"""Stable Diffusion 3 / 3.5 (MMDiT; Large, Medium, Large Turbo): canonical names, their ComfyUI
counterparts and layer presets.

Canonical names (diffusers ``StableDiffusion3Pipeline``):

- transformer: ``transformer.<SD3Transformer2DModel name>``; each joint block returns the text
  and the image stream, named ``transformer.transformer_blocks.{i}.txt`` and ``….img`` (the
  last block has no text output);
- text encoders: ``text_encoder.`` (CLIP-L), ``text_encoder_2.`` (OpenCLIP-G), both below
  ``text_model`` with their ``text_projection``; ``text_encoder_3.`` (T5-XXL, ``T5EncoderModel`` names).

ComfyUI (relative to ``MODEL.model`` = ``comfy.model_base.SD3``, ``CLIP.cond_stage_model`` =
``SD3ClipModel``): ``diffusion_model.<MMDiT name>``, ``clip_l.transformer.text_model.<x>``,
``clip_g.…``, ``t5xxl.transformer.<x>``. Inside a joint block (``joint_blocks.{i}``):

==========================================  ==================================================
diffusers ``transformer_blocks.{i}.``        ComfyUI ``joint_blocks.{i}.``
==========================================  ==================================================
(block output, streams txt / img)           (block output: ``(context, x)``, the same order)
``norm1.norm`` / ``norm1.linear``            ``x_block.norm1`` / ``x_block.adaLN_modulation.1``
``norm1_context.norm``                       ``context_block.norm1``
``attn.to_out.0`` / ``attn.to_add_out``      ``x_block.attn.proj`` / ``context_block.attn.proj``
``attn2.to_out.0`` (3.5 Medium)              ``x_block.attn2.proj``
``norm2`` / ``norm2_context``                ``x_block.norm2`` / ``context_block.norm2``
``ff.net.0.proj`` / ``ff.net.0`` / ``ff.net.2``  ``x_block.mlp.fc1`` / ``mlp.act`` / ``mlp.fc2``
``ff_context.…``                             ``context_block.mlp.…``
==========================================  ==================================================

plus ``pos_embed.proj`` <-> ``x_embedder.proj``, ``time_text_embed.{timestep,text}_embedder.linear_{1,2}``
<-> ``{t,y}_embedder.mlp.{0,2}``, ``context_embedder``, ``norm_out.norm`` <-> ``final_layer.norm_final``,
``proj_out`` <-> ``final_layer.linear``. Fused projections (ComfyUI's ``qkv``: diffusers'
``to_q``/``to_k``/``to_v``) and modulations whose halves are stored in another order
(``norm1_context.linear`` of the last block, ``norm_out.linear``) have no counterpart.

Layer presets:

==============================  ==========================================================
``transformer_blocks``           both streams of every joint block (default; as FLUX's paper setting)
``transformer_image_blocks``     the image stream of every joint block
``transformer_norms``            every LayerNorm of the transformer (norm1/norm2 of both streams, norm_out)
``transformer_attention_outputs``  attention output projections of both streams
``text_encoder_layers``          CLIP-L and OpenCLIP-G encoder layers
``text_encoder_norms``           CLIP-L and OpenCLIP-G LayerNorms
``t5_blocks`` / ``t5_norms``     T5 blocks / T5 RMS norms (both sublayers and the final one)
==============================  ==========================================================
"""

from __future__ import annotations

import torch

from ..presets import Preset, preset_table
from .base import CLIP_G, CLIP_L_PROJ, T5_XXL, Family, NameTable, StreamRule

B = "transformer_blocks.{i}"
J = "joint_blocks.{i}"
NAMES = NameTable([
    ("pos_embed.proj", "x_embedder.proj"),
    ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
    ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
    ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
    ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
    ("context_embedder", "context_embedder"),
    (f"{B}.norm1.norm", f"{J}.x_block.norm1"),
    (f"{B}.norm1.linear", f"{J}.x_block.adaLN_modulation.1"),
    (f"{B}.norm1_context.norm", f"{J}.context_block.norm1"),
    (f"{B}.attn.to_out.0", f"{J}.x_block.attn.proj"),
    (f"{B}.attn.to_add_out", f"{J}.context_block.attn.proj"),
    (f"{B}.attn2.to_out.0", f"{J}.x_block.attn2.proj"),
    (f"{B}.norm2", f"{J}.x_block.norm2"),
    (f"{B}.ff.net.0.proj", f"{J}.x_block.mlp.fc1"),
    (f"{B}.ff.net.0", f"{J}.x_block.mlp.act"),
    (f"{B}.ff.net.2", f"{J}.x_block.mlp.fc2"),
    (f"{B}.norm2_context", f"{J}.context_block.norm2"),
    (f"{B}.ff_context.net.0.proj", f"{J}.context_block.mlp.fc1"),
    (f"{B}.ff_context.net.0", f"{J}.context_block.mlp.act"),
    (f"{B}.ff_context.net.2", f"{J}.context_block.mlp.fc2"),
    ("norm_out.norm", "final_layer.norm_final"),
    ("proj_out", "final_layer.linear"),
])

PRESETS = preset_table(
    Preset("transformer_blocks", (r"transformer\.transformer_blocks\.\d+\.(img|txt)",),
           "both streams (image and text) of every joint block"),
    Preset("transformer_image_blocks", (r"transformer\.transformer_blocks\.\d+\.img",), "image stream of every joint block"),
    Preset("transformer_norms", (r"transformer\.transformer_blocks\.\d+\.norm1(_context)?\.norm",
                                 r"transformer\.transformer_blocks\.\d+\.norm2(_context)?", r"transformer\.norm_out\.norm"),
           "every LayerNorm of the transformer (both streams)"),
    Preset("transformer_attention_outputs", (r"transformer\.transformer_blocks\.\d+\.attn\.(to_out\.0|to_add_out)",),
           "attention output projections of both streams"),
    Preset("text_encoder_layers", (r"text_encoder(_2)?\.encoder\.layers\.\d+",), "CLIP-L and OpenCLIP-G encoder layers"),
    Preset("text_encoder_norms", (r"text_encoder(_2)?\.encoder\.layers\.\d+\.layer_norm[12]",
                                  r"text_encoder(_2)?\.final_layer_norm"), "CLIP-L and OpenCLIP-G LayerNorms"),
    Preset("t5_blocks", (r"text_encoder_3\.encoder\.block\.\d+",), "T5-XXL blocks"),
    Preset("t5_norms", (r"text_encoder_3\.encoder\.block\.\d+\.layer\.\d\.layer_norm", r"text_encoder_3\.encoder\.final_layer_norm"),
           "T5-XXL RMS norms"),
)

#: Structural fields of the SD3.5 Large transformer config (real-size tree on the meta device)
SD35_LARGE_CONFIG = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                         num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")


class SD3Family(Family):
    def has_stream(self, block: torch.nn.Module, suffix: str) -> bool:
        """The last joint block only updates the image stream (diffusers ``context_pre_only``,
        ComfyUI ``context_block.pre_only``)."""
        if suffix != "txt":
            return True
        if getattr(block, "context_pre_only", False):
            return False
        ctx = getattr(block, "context_block", None)
        return not getattr(ctx, "pre_only", False)

    def matches_pipeline(self, pipe) -> bool:
        if type(pipe).__name__.startswith("StableDiffusion3"):
            return True
        t = getattr(pipe, "transformer", None)
        return t is not None and hasattr(t, "pos_embed") and hasattr(t, "transformer_blocks") \
            and not hasattr(t, "single_transformer_blocks")


FAMILY = SD3Family(
    name="sd3", title="SD3.5",
    denoiser="transformer", text_encoders={"text_encoder": CLIP_L_PROJ, "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL},
    presets=PRESETS, default_layers="transformer_blocks", pipeline_class="StableDiffusion3Pipeline",
    kinds={"base": (28, 4.5), "turbo": (4, 0.0)}, comfy_models=("SD3",), comfy_clips=("SD3ClipModel",), flow=True,
    streams=(StreamRule(B, J, {"txt": (0, 0), "img": (1, 1)}),),
    roles={"norms": ("transformer_norms",), "blocks": ("transformer_blocks",),
           "attention": ("transformer_attention_outputs",), "text": ("text_encoder_layers",), "t5": ("t5_blocks",)},
    notes="SD3 Medium, SD3.5 Large / Medium / Large Turbo", _table=NAMES,
)

__all__ = ["FAMILY", "PRESETS", "NAMES", "SD35_LARGE_CONFIG"]
