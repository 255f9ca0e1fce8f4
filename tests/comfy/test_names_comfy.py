"""act_core.diffusion.families.sdxl against ComfyUI's own module trees (tiny, and real-size SDXL on the meta device)
and the diffusers / transformers trees, in both directions, with parameter shapes compared."""

import pytest
import torch

from act_core.diffusion.families.sdxl import NameTranslationError, from_comfy, to_comfy

pytestmark = pytest.mark.comfy

SDXL_COMFY_UNET = dict(
    model_channels=320, use_linear_in_transformer=True, transformer_depth=[0, 0, 2, 2, 10, 10], context_dim=2048,
    adm_in_channels=2816, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10, num_heads=-1,
    num_head_channels=64, in_channels=4, out_channels=4, num_classes="sequential", use_spatial_transformer=True,
    legacy=False, image_size=32, use_checkpoint=False, use_temporal_resblock=False, use_temporal_attention=False,
)

# SDXL base 1.0 UNet (the published config's structural fields), as in tests/test_names.py
SDXL_DIFFUSERS_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


def _owners(module):
    """{name: {param name: shape}} of modules that own parameters."""
    return {n: {k: tuple(p.shape) for k, p in m.named_parameters(recurse=False)}
            for n, m in module.named_modules() if n and list(m.parameters(recurse=False))}


@pytest.fixture(scope="module")
def comfy_sdxl_unet(comfy_env):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**SDXL_COMFY_UNET, device="meta", operations=comfy.ops.disable_weight_init)


@pytest.fixture(scope="module")
def diffusers_sdxl_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_DIFFUSERS_UNET)


def test_real_size_unet_both_directions_with_shapes(comfy_sdxl_unet, diffusers_sdxl_unet):
    comfy_params = _owners(comfy_sdxl_unet)
    diff_params = _owners(diffusers_sdxl_unet)
    assert sum(p.numel() for p in comfy_sdxl_unet.parameters()) == sum(p.numel() for p in diffusers_sdxl_unet.parameters())
    # diffusers -> ComfyUI: every parameter-owning module exists there with the same parameters
    for name, params in diff_params.items():
        local = to_comfy("unet." + name)[len("diffusion_model."):]
        assert comfy_params.get(local) == params, (name, local)
    # ComfyUI -> diffusers
    for local, params in comfy_params.items():
        canonical = from_comfy("diffusion_model." + local)
        assert diff_params.get(canonical[len("unet."):]) == params, (local, canonical)
    assert len(comfy_params) == len(diff_params)
    # every module with a counterpart (norms, resnets, attention blocks ...) resolves
    comfy_names = {n for n, _ in comfy_sdxl_unet.named_modules()}
    hits = 0
    for name, _ in diffusers_sdxl_unet.named_modules():
        try:
            local = to_comfy("unet." + name)[len("diffusion_model."):]
        except NameTranslationError:
            continue
        assert local in comfy_names, (name, local)
        hits += 1
    assert hits > 1800


def test_tiny_comfy_trees_round_trip(tiny):
    model, clip = tiny
    inside = ("diffusion_model.", "clip_l.transformer.text_model.", "clip_g.transformer.text_model.",
              "clip_g.transformer.text_projection")
    for root in (model.model, clip.cond_stage_model):
        translated = 0
        for name, m in root.named_modules():
            if not name or not list(m.parameters(recurse=False)):
                continue
            if not name.startswith(inside):
                # their own scalars (logit_scale) and CLIP-L's projection, which SDXL (and diffusers) never use
                assert name in ("clip_l", "clip_g", "clip_l.transformer.text_projection"), name
                with pytest.raises(NameTranslationError):
                    from_comfy(name)
                continue
            canonical = from_comfy(name)
            assert to_comfy(canonical) == name
            translated += 1
        assert translated > 20


def _hf_clip(cls_name, hidden, layers, heads, inter, proj):
    import transformers

    cfg = transformers.CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                      intermediate_size=inter, projection_dim=proj, vocab_size=49408,
                                      max_position_embeddings=77)
    with torch.device("meta"):
        return getattr(transformers, cls_name)(cfg)


def test_real_size_text_encoders_both_directions(comfy_env):
    import comfy.sdxl_clip

    with torch.device("meta"):
        comfy_clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
    comfy_params = _owners(comfy_clip)
    for canon, hf, enc in (
        ("text_encoder", _hf_clip("CLIPTextModel", 768, 12, 12, 3072, 768), "clip_l"),
        ("text_encoder_2", _hf_clip("CLIPTextModelWithProjection", 1280, 32, 20, 5120, 1280), "clip_g"),
    ):
        inner = getattr(hf, "text_model", hf)
        hf_params = dict(_owners(inner))
        if inner is not hf and hasattr(hf, "text_projection"):
            hf_params["text_projection"] = {k: tuple(p.shape) for k, p in hf.text_projection.named_parameters()}
        checked = 0
        for name, params in hf_params.items():
            local = to_comfy(f"{canon}.{name}")
            assert local.startswith(enc + ".")
            assert comfy_params.get(local) == params, (name, local)
            assert from_comfy(local) == f"{canon}.{name}"
            checked += 1
        assert checked > 12 * 6
        # and back: every ComfyUI parameter owner of this encoder has a transformers counterpart
        for local, params in comfy_params.items():
            if not local.startswith(enc + ".transformer.") or local == "clip_l.transformer.text_projection":
                continue  # CLIP-L's projection is unused by SDXL and absent from CLIPTextModel
            canonical = from_comfy(local)
            assert hf_params.get(canonical[len(canon) + 1:]) == params, (local, canonical)
