"""Canonical (diffusers-style) <-> ComfyUI SDXL module names (act_core.diffusion.families.sdxl).

The ComfyUI side is checked against ComfyUI's own module tree in tests/comfy/test_names_comfy.py.
"""

import pytest
import torch

from act_core.diffusion.families import sdxl as names
from act_core.diffusion.families.sdxl import NameTranslationError, from_comfy, to_comfy
from act_core.diffusion.families.sdxl import SDXL_UNET_CONFIG

# Known pairs (research/comfyui.md §3.4, generated there with comfy.utils.unet_to_diffusers).
PAIRS = [
    ("unet.conv_in", "diffusion_model.input_blocks.0.0"),
    ("unet.time_embedding.linear_1", "diffusion_model.time_embed.0"),
    ("unet.time_embedding.linear_2", "diffusion_model.time_embed.2"),
    ("unet.add_embedding.linear_2", "diffusion_model.label_emb.0.2"),
    ("unet.down_blocks.0.resnets.1.norm1", "diffusion_model.input_blocks.2.0.in_layers.0"),
    ("unet.down_blocks.0.downsamplers.0.conv", "diffusion_model.input_blocks.3.0.op"),
    ("unet.down_blocks.1.resnets.0.conv_shortcut", "diffusion_model.input_blocks.4.0.skip_connection"),
    ("unet.down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_out.0",
     "diffusion_model.input_blocks.5.1.transformer_blocks.1.attn1.to_out.0"),
    ("unet.down_blocks.1.downsamplers.0", "diffusion_model.input_blocks.6.0"),
    ("unet.down_blocks.2.resnets.1.norm2", "diffusion_model.input_blocks.8.0.out_layers.0"),
    ("unet.down_blocks.2.attentions.0.transformer_blocks.9.ff.net.2",
     "diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.2"),
    ("unet.mid_block.resnets.0.norm2", "diffusion_model.middle_block.0.out_layers.0"),
    ("unet.mid_block.attentions.0.proj_out", "diffusion_model.middle_block.1.proj_out"),
    ("unet.mid_block.resnets.1.time_emb_proj", "diffusion_model.middle_block.2.emb_layers.1"),
    ("unet.up_blocks.0.resnets.2.conv1", "diffusion_model.output_blocks.2.0.in_layers.2"),
    ("unet.up_blocks.0.upsamplers.0.conv", "diffusion_model.output_blocks.2.2.conv"),
    ("unet.up_blocks.1.attentions.2.transformer_blocks.0.norm1", "diffusion_model.output_blocks.5.1.transformer_blocks.0.norm1"),
    ("unet.up_blocks.1.upsamplers.0", "diffusion_model.output_blocks.5.2"),
    ("unet.up_blocks.2.resnets.2.conv2", "diffusion_model.output_blocks.8.0.out_layers.3"),
    ("unet.conv_norm_out", "diffusion_model.out.0"),
    ("unet.conv_out", "diffusion_model.out.2"),
    ("text_encoder.encoder.layers.3.mlp.fc2", "clip_l.transformer.text_model.encoder.layers.3.mlp.fc2"),
    ("text_encoder_2.encoder.layers.10", "clip_g.transformer.text_model.encoder.layers.10"),
    ("text_encoder_2.final_layer_norm", "clip_g.transformer.text_model.final_layer_norm"),
    ("text_encoder_2.text_projection", "clip_g.transformer.text_projection"),
    ("text_encoder.embeddings.token_embedding", "clip_l.transformer.text_model.embeddings.token_embedding"),
]


@pytest.mark.parametrize("canonical,comfy", PAIRS)
def test_known_pairs_both_directions(canonical, comfy):
    assert to_comfy(canonical) == comfy
    assert from_comfy(comfy) == canonical


@pytest.mark.parametrize("bad", [
    "unet.down_blocks.0.attentions.0",        # level 0 of SDXL has no attention
    "unet.down_blocks.2.downsamplers.0",      # the deepest level does not downsample
    "unet.up_blocks.2.upsamplers.0",
    "unet.up_blocks.2.attentions.0",
    "unet.down_blocks.0.resnets.0.nonlinearity",  # diffusers' shared SiLU: fires twice per resnet
    "unet.time_proj",
    "unet.down_blocks.1",                      # containers have no ComfyUI counterpart
    "unet",
    "vae.decoder.conv_in",
    "text_encoder.text_projection",            # only OpenCLIP-G has a projection
])
def test_untranslatable_canonical_names_raise(bad):
    with pytest.raises(NameTranslationError):
        to_comfy(bad)


@pytest.mark.parametrize("bad", [
    "diffusion_model.input_blocks.4.0.in_layers.1",  # ComfyUI's SiLU inside the Sequential
    "diffusion_model.input_blocks.4",                 # TimestepEmbedSequential container
    "diffusion_model.input_blocks.9.0",
    "diffusion_model",
    "clip_l.transformer",
    "first_stage_model.decoder",
])
def test_untranslatable_comfy_names_raise(bad):
    with pytest.raises(NameTranslationError):
        from_comfy(bad)


def test_error_names_the_problem():
    with pytest.raises(NameTranslationError, match="nonlinearity"):
        to_comfy("unet.mid_block.resnets.0.nonlinearity")
    with pytest.raises(NameTranslationError, match="must start with"):
        from_comfy("model.layers.3")
    assert names.try_from_comfy("diffusion_model.input_blocks.4") is None


def test_component():
    assert names.component("unet.conv_in") == "unet"
    assert names.component("text_encoder_2.encoder.layers.0") == "clip"
    with pytest.raises(NameTranslationError):
        names.component("model.layers.0")




@pytest.fixture(scope="module")
def diffusers_sdxl_unet():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        return diffusers.UNet2DConditionModel(**SDXL_UNET_CONFIG)


def test_every_parameterised_diffusers_module_round_trips(diffusers_sdxl_unet):
    """All 2.6 B-parameter SDXL UNet modules that own parameters translate and come back unchanged."""
    u = diffusers_sdxl_unet
    assert sum(p.numel() for p in u.parameters()) > 2_500_000_000
    owners = [n for n, m in u.named_modules() if n and list(m.parameters(recurse=False))]
    assert len(owners) > 1000
    for n in owners:
        c = to_comfy("unet." + n)
        assert c.startswith("diffusion_model.")
        assert from_comfy(c) == "unet." + n
    # every translatable module (resnets, attention blocks, norms ...) round-trips too
    translatable = 0
    for n, _ in u.named_modules():
        if not n:
            continue
        try:
            c = to_comfy("unet." + n)
        except NameTranslationError:
            assert n.split(".")[-1] in {"nonlinearity", "resnets", "attentions", "downsamplers", "upsamplers",
                                        "time_proj", "add_time_proj", "down_blocks", "up_blocks", "mid_block",
                                        "0", "1", "2"}, n
            continue
        translatable += 1
        assert from_comfy(c) == "unet." + n
    assert translatable > 1800
