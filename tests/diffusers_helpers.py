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
