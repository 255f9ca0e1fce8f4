"""FLUX.1 (schnell, dev and fine-tunes with the same keys): canonical names, their ComfyUI
counterparts, layer presets and the packed latents of the collection pass.

Canonical names (diffusers ``FluxPipeline``):

- transformer: ``transformer.<FluxTransformer2DModel name>``. A double-stream block returns
  the text and the image stream: ``transformer.transformer_blocks.{i}.txt`` and ``….img``.
  A single-stream block works on ONE sequence, text tokens then image tokens:
  ``transformer.single_transformer_blocks.{i}`` is that whole sequence (diffusers returns it as
  the pair ``(txt, img)``; it is read as the two joined along the tokens, so a map acts on
  every token as in ComfyUI and in the reference's diffusers);
- text encoders: ``text_encoder.`` (CLIP-L, below ``text_model``), ``text_encoder_2.`` (T5-XXL,
  ``T5EncoderModel`` names: ``encoder.block.{i}.layer.{0,1}…``, ``encoder.final_layer_norm``).

ComfyUI (relative to ``MODEL.model`` = ``comfy.model_base.Flux``, ``CLIP.cond_stage_model`` =
``FluxClipModel``): ``diffusion_model.<Flux name>``, ``clip_l.transformer.text_model.<x>``,
``t5xxl.transformer.<x>``:

=============================================  ===================================================
diffusers ``transformer.``                      ComfyUI ``diffusion_model.``
=============================================  ===================================================
``transformer_blocks.{i}`` (txt, img)           ``double_blocks.{i}`` (img, txt): the other order
``….norm1.norm`` / ``….norm1.linear``           ``….img_norm1`` / ``….img_mod.lin``
``….norm1_context.norm`` / ``.linear``          ``….txt_norm1`` / ``….txt_mod.lin``
``….attn.to_out.0`` / ``….attn.to_add_out``     ``….img_attn.proj`` / ``….txt_attn.proj``
``….norm2`` / ``….norm2_context``               ``….img_norm2`` / ``….txt_norm2``
``….ff.net.0.proj`` / ``ff.net.0`` / ``ff.net.2``  ``….img_mlp.0`` / ``img_mlp.1`` / ``img_mlp.2`` (ff_context: txt_mlp)
``single_transformer_blocks.{i}`` (txt, img)    ``single_blocks.{i}`` (one [txt; img] tensor)
``….norm.norm`` / ``….norm.linear``             ``….pre_norm`` / ``….modulation.lin``
``….act_mlp`` / ``….proj_out``                  ``….mlp_act`` / ``….linear2``
``x_embedder`` / ``context_embedder``           ``img_in`` / ``txt_in``
``time_text_embed.{timestep,guidance,text}_embedder.linear_{1,2}``  ``{time,guidance,vector}_in.{in,out}_layer``
``norm_out.norm`` / ``proj_out``                ``final_layer.norm_final`` / ``final_layer.linear``
=============================================  ===================================================

Fused projections (ComfyUI's ``qkv`` and ``linear1``: diffusers' ``to_q/to_k/to_v`` and
``proj_mlp``), per-head q/k norms (laid out differently) and ``norm_out.linear`` (its halves
in the other order) have no counterpart.

Layer presets:

================================  ===================================================================
``transformer_paper``              both outputs of every double-stream block and the first 15
                                   single-stream blocks (paper App. M.8; default)
``transformer_double_blocks``      both outputs of every double-stream block
``transformer_single_blocks``      every single-stream block
``transformer_norms``              every LayerNorm (norm1/norm2 of both streams, single ``norm.norm``, norm_out)
``transformer_attention_outputs``  attention output projections of the double-stream blocks
``text_encoder_layers``            CLIP-L encoder layers
``t5_blocks`` / ``t5_norms``       T5-XXL blocks / RMS norms
================================  ===================================================================
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..presets import Preset, preset_table
from ..noise import batch_noise
from .base import CLIP_L, T5_XXL, Family, NameTable, StreamRule

D = "transformer_blocks.{i}"
DC = "double_blocks.{i}"
S = "single_transformer_blocks.{i}"
SC = "single_blocks.{i}"
NAMES = NameTable([
    ("x_embedder", "img_in"),
    ("context_embedder", "txt_in"),
    ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
    ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
    ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
    ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
    ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
    ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
    (f"{D}.norm1.norm", f"{DC}.img_norm1"),
    (f"{D}.norm1.linear", f"{DC}.img_mod.lin"),
    (f"{D}.norm1_context.norm", f"{DC}.txt_norm1"),
    (f"{D}.norm1_context.linear", f"{DC}.txt_mod.lin"),
    (f"{D}.attn.to_out.0", f"{DC}.img_attn.proj"),
    (f"{D}.attn.to_add_out", f"{DC}.txt_attn.proj"),
    (f"{D}.norm2", f"{DC}.img_norm2"),
    (f"{D}.norm2_context", f"{DC}.txt_norm2"),
    (f"{D}.ff.net.0.proj", f"{DC}.img_mlp.0"),
    (f"{D}.ff.net.0", f"{DC}.img_mlp.1"),
    (f"{D}.ff.net.2", f"{DC}.img_mlp.2"),
    (f"{D}.ff_context.net.0.proj", f"{DC}.txt_mlp.0"),
    (f"{D}.ff_context.net.0", f"{DC}.txt_mlp.1"),
    (f"{D}.ff_context.net.2", f"{DC}.txt_mlp.2"),
    (f"{S}.norm.norm", f"{SC}.pre_norm"),
    (f"{S}.norm.linear", f"{SC}.modulation.lin"),
    (f"{S}.act_mlp", f"{SC}.mlp_act"),
    (f"{S}.proj_out", f"{SC}.linear2"),
    ("norm_out.norm", "final_layer.norm_final"),
    ("proj_out", "final_layer.linear"),
])

PRESETS = preset_table(
    Preset("transformer_paper", (r"transformer\.transformer_blocks\.\d+\.(img|txt)",
                                 r"transformer\.single_transformer_blocks\.([0-9]|1[0-4])"),
           "both outputs of every double-stream block + the first 15 single-stream blocks (paper)"),
    Preset("transformer_double_blocks", (r"transformer\.transformer_blocks\.\d+\.(img|txt)",),
           "both outputs of every double-stream block"),
    Preset("transformer_single_blocks", (r"transformer\.single_transformer_blocks\.\d+",), "every single-stream block"),
    Preset("transformer_norms", (r"transformer\.transformer_blocks\.\d+\.norm1(_context)?\.norm",
                                 r"transformer\.transformer_blocks\.\d+\.norm2(_context)?",
                                 r"transformer\.single_transformer_blocks\.\d+\.norm\.norm", r"transformer\.norm_out\.norm"),
           "every LayerNorm of the transformer"),
    Preset("transformer_attention_outputs", (r"transformer\.transformer_blocks\.\d+\.attn\.(to_out\.0|to_add_out)",),
           "attention output projections of the double-stream blocks"),
    Preset("text_encoder_layers", (r"text_encoder\.encoder\.layers\.\d+",), "CLIP-L encoder layers"),
    Preset("t5_blocks", (r"text_encoder_2\.encoder\.block\.\d+",), "T5-XXL blocks"),
    Preset("t5_norms", (r"text_encoder_2\.encoder\.block\.\d+\.layer\.\d\.layer_norm", r"text_encoder_2\.encoder\.final_layer_norm"),
           "T5-XXL RMS norms"),
)

#: Structural fields of the FLUX.1 transformer config (dev: guidance_embeds=True)
FLUX1_CONFIG = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
                    axes_dims_rope=(16, 56, 56))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h/2 * w/2, 4C)``: 2x2 patches as tokens, channels then patch
    row then patch column in each token (FLUX's latent sequence)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


class FluxFamily(Family):
    def noise(self, pipe, prompts: Sequence[str], height: Optional[int], width: Optional[int], seed: int) -> torch.Tensor:
        """Packed noise: one seeded ``(C, h, w)`` latent per prompt (``C`` = in_channels / 4,
        ``h = 2 * (height // (2 * vae_scale_factor))``), then :func:`pack`."""
        den = self.denoiser_module(pipe)
        scale = int(pipe.vae_scale_factor)
        height, width = height or self.default_size(pipe), width or self.default_size(pipe)
        h, w = 2 * (int(height) // (scale * 2)), 2 * (int(width) // (scale * 2))
        c = den.config.in_channels // 4
        x = batch_noise(seed, prompts, (c, h, w))
        return pack(x).to(den.device, den.dtype)

    def default_size(self, pipe) -> int:
        return int(getattr(pipe, "default_sample_size", 128)) * int(pipe.vae_scale_factor)

    def collect_guidance(self, pipe) -> float:
        """FLUX.1-dev embeds its (distilled) guidance: collect at the model's default, not 0.
        schnell has no guidance input; neither runs a CFG batch."""
        if getattr(self.denoiser_module(pipe).config, "guidance_embeds", False):
            return float((getattr(pipe, "act_defaults", None) or {}).get("guidance", self.kinds["dev"][1]))
        return 0.0

    def guess_kind(self, pipe, text: str) -> str:
        text = text.lower()
        for kind in ("schnell", "dev"):
            if kind in text:
                return kind
        den = getattr(pipe, "transformer", None)
        return "dev" if den is not None and getattr(den.config, "guidance_embeds", False) else "schnell"

    def matches_pipeline(self, pipe) -> bool:
        if type(pipe).__name__.startswith("Flux"):
            return True
        t = getattr(pipe, "transformer", None)
        return t is not None and hasattr(t, "single_transformer_blocks")


FAMILY = FluxFamily(
    name="flux", title="FLUX.1", denoiser="transformer", text_encoders={"text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
    presets=PRESETS, default_layers="transformer_paper", pipeline_class="FluxPipeline",
    kinds={"schnell": (4, 0.0), "dev": (28, 3.5)}, comfy_models=("Flux", "FluxSchnell", "FluxInpaint"),
    comfy_clips=("FluxClipModel",), flow=True,
    streams=(StreamRule(D, DC, {"txt": (0, 1), "img": (1, 0)}), StreamRule(S, SC, {"": ((0, 1), None)})),
    roles={"norms": ("transformer_norms",), "blocks": ("transformer_double_blocks", "transformer_single_blocks"),
           "attention": ("transformer_attention_outputs",), "text": ("text_encoder_layers",), "t5": ("t5_blocks",)},
    notes="FLUX.1 schnell (the paper's) and dev", _table=NAMES,
)

__all__ = ["FAMILY", "PRESETS", "NAMES", "FLUX1_CONFIG", "pack"]
