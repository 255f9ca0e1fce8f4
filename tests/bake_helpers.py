"""A tiny SDXL-architecture diffusers pipeline whose single file ComfyUI loads as the test pack's
``TinySDXL`` (tests/comfy/act_tiny_sdxl): UNet 32/64/128 channels, 2 layers per block, one
transformer block per attention, context 32 + 32, 256-wide time ids; CLIP-L / CLIP-G with 32
hidden units and 3 layers on the real CLIP vocabulary; the SD VAE layout at 128/256/512
channels (the smallest ComfyUI's VAE loader reads). Random weights, built from configs.
"""

from __future__ import annotations

import torch

UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4, 8), transformer_layers_per_block=(1, 1, 1), use_linear_projection=True,
    cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=32 + 6 * 256, norm_num_groups=32,
)
CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3,
            max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512], layers_per_block=2,
           down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
           latent_channels=4, sample_size=32, norm_num_groups=32, scaling_factor=0.13025)


def comfy_tiny_sdxl(seed: int = 0):
    """The pipeline (float32, CPU); every weight drawn from N(0, 0.05) except norms (1, 0)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from act_core.diffusion import miniworld

    with torch.device("meta"):
        parts = dict(unet=UNet2DConditionModel(**UNET), vae=AutoencoderKL(**VAE),
                     text_encoder=CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", **CLIP)),
                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(hidden_act="gelu", **CLIP)))
    g = torch.Generator().manual_seed(seed)
    for name, m in parts.items():
        m.to_empty(device="cpu")
        with torch.no_grad():
            for pname, p in m.named_parameters():
                if p.ndim == 1 and "norm" in pname:
                    p.fill_(1.0) if pname.endswith("weight") else p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            for bname, b in m.named_buffers():
                if bname.endswith("position_ids"):
                    b.copy_(torch.arange(b.shape[-1]).expand_as(b))
        m.eval()
    tok = CLIPTokenizer.from_pretrained(str(miniworld.MODEL / "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(str(miniworld.MODEL / "tokenizer_2"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(**parts, tokenizer=tok, tokenizer_2=tok2, scheduler=sched, image_encoder=None,
                                     feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
