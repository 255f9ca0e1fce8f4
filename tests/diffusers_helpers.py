"""Builders for SDXL-structured models in tests: full-size on the meta device (names and
shapes only, no memory) and a tiny random pipeline (real forward passes in milliseconds).

All of it is built from configs written here; nothing is downloaded.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from act_core.diffusion.miniworld.model import clip_byte_chars  # noqa: E402
from act_core.diffusion.families.sdxl import SDXL_UNET_CONFIG  # noqa: E402

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)


class MetaSDXL:
    """Attribute bag shaped like a pipeline: ``unet``, ``text_encoder``, ``text_encoder_2``."""

    def __init__(self, unet, text_encoder, text_encoder_2):
        self.unet, self.text_encoder, self.text_encoder_2 = unet, text_encoder, text_encoder_2


_META = None


def meta_sdxl() -> MetaSDXL:
    """Full-size SDXL UNet (2.57 B params) and both text encoders on the meta device (cached)."""
    global _META
    if _META is None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        with torch.device("meta"):
            _META = MetaSDXL(
                UNet2DConditionModel(**SDXL_UNET_CONFIG),
                CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
            )
    return _META


# --------------------------------------------------------------------------- tiny pipeline
def make_clip_tokenizer(model_max_length: int = 77):
    """CLIPTokenizer with a 514-id byte-level vocab and no merges (one token per byte)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in clip_byte_chars():
        vocab[ch] = len(vocab)
    for ch in clip_byte_chars():
        vocab[ch + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tok.model_max_length = model_max_length
    return tok


def tiny_sdxl_components(seed: int = 0, time_cond_proj_dim=None) -> dict:
    """Components of a tiny random SDXL pipeline (cross-attention 32 + 48 = 80 like SDXL's 768 + 1280)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=80, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=96,  # 6 time ids x 8 + pooled text_encoder_2 (48)
        norm_num_groups=2, time_cond_proj_dim=time_cond_proj_dim,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=[8, 16],
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, sample_size=32, norm_num_groups=4)
    # widths differ (32 vs 48, like 768 vs 1280) so single-file loading tells the encoders apart
    common = dict(vocab_size=1000, num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu", bos_token_id=0,
                  eos_token_id=1, pad_token_id=1, max_position_embeddings=77)
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, projection_dim=32, **common))
    torch.manual_seed(seed + 1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, intermediate_size=53, projection_dim=48, **common))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    return dict(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=make_clip_tokenizer(),
                tokenizer_2=make_clip_tokenizer(), unet=unet, scheduler=sched)


def tiny_sdxl_pipeline(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed), image_encoder=None, feature_extractor=None,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_clip(seed: int = 0):
    """Tiny random CLIPModel saved-able with a PIL image processor and the byte tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=77)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, proc, make_clip_tokenizer()


# single-file export: the library's converter (act_core.diffusion.single_file)
from act_core.diffusion.single_file import save_single_file  # noqa: E402,F401


# --------------------------------------------------------------------------- tiny pipelines, every family
# Sizes follow each family's block layout (levels, streams) at tiny widths, and match the tiny
# ComfyUI model types of tests/comfy/act_tiny_sdxl (same weights load in both frameworks).
# Vocabularies are the real ones (CLIP 49408, T5 32128) so ComfyUI's own tokenizers can feed
# them; the diffusers tests use the byte-level tokenizer above (ids < 514).

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3, projection_dim=32)
TINY_T5 = dict(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)


def tiny_clip(seed: int, projection: bool = False, hidden_act: str = "quick_gelu", **overrides):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = {**TINY_CLIP, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": hidden_act, "bos_token_id": 0,
           "eos_token_id": 1, "pad_token_id": 1, **overrides}
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**cfg)).eval()


def tiny_t5(seed: int, **overrides):
    from transformers import T5Config, T5EncoderModel

    cfg = {**TINY_T5, "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, **overrides}
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(**cfg)).eval()


def tiny_vae(seed: int, latent_channels: int = 4, flow: bool = False):
    """A 2-level AutoencoderKL (scale factor 2); flow models' VAEs have no quant convs and a shift."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    extra = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0) if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=[8, 16],
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=latent_channels, sample_size=32, norm_num_groups=4, **extra)


def _euler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  steps_offset=1, timestep_spacing="leading")


def tiny_sd15_pipeline(seed: int = 0, sd2: bool = False):
    """SD1.5 layout (4 levels 32-32-64-64, attention on down 0-2 / up 1-3, 2 resnets per level);
    ``sd2=True``: SD2.x (linear attention projections, 16-channel heads)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 2, 4, 4) if sd2 else 2, use_linear_projection=sd2, cross_attention_dim=32,
    )
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=tiny_clip(seed + 1, hidden_act="gelu" if sd2 else "quick_gelu"),
                                   tokenizer=make_clip_tokenizer(), unet=unet, scheduler=_euler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_comfy_pipeline(seed: int = 0):
    """SDXL layout at ComfyUI-compatible sizes (the test pack's TinySDXL: 32-64-128 channels,
    1 transformer block per attention, 16-channel heads, CLIP-L/CLIP-G 32 wide)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), use_linear_projection=True, transformer_layers_per_block=1,
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + 32,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed), text_encoder=tiny_clip(seed + 1), text_encoder_2=tiny_clip(seed + 2, projection=True, hidden_act="gelu"),
        tokenizer=make_clip_tokenizer(), tokenizer_2=make_clip_tokenizer(), unet=unet, scheduler=_euler(),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(seed: int = 0, t5: bool = True):
    """SD3 layout: 2 joint blocks of two 64-channel heads (ComfyUI's MMDiT: hidden = 64 x blocks),
    CLIP-L + CLIP-G (32 + 32, projected), T5 4096 wide (ComfyUI pads CLIP to 4096), 16-channel latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                                        num_attention_heads=2, joint_attention_dim=4096, caption_projection_dim=128,
                                        pooled_projection_dim=64, out_channels=16, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(seed, 16, flow=True),
        text_encoder=tiny_clip(seed + 1, projection=True), tokenizer=make_clip_tokenizer(),
        text_encoder_2=tiny_clip(seed + 2, projection=True, hidden_act="gelu"), tokenizer_2=make_clip_tokenizer(),
        text_encoder_3=tiny_t5(seed + 3, d_model=4096, d_kv=8, d_ff=32, vocab_size=1000) if t5 else None,
        tokenizer_3=make_clip_tokenizer(256) if t5 else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0, dev: bool = False):
    """FLUX.1 layout: 1 double-stream + 2 single-stream blocks, 2 heads of 16 channels (rope
    axes 4+6+6), CLIP-L 32 (pooled) + T5 32 wide; ``dev=True`` adds the guidance embedder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=dev, axes_dims_rope=(4, 6, 6))
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                        vae=tiny_vae(seed, 16, flow=True), text_encoder=tiny_clip(seed + 1), tokenizer=make_clip_tokenizer(),
                        text_encoder_2=tiny_t5(seed + 2), tokenizer_2=make_clip_tokenizer(512))
    pipe.set_progress_bar_config(disable=True)
    return pipe
