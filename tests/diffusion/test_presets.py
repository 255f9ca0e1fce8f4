"""Layer presets resolve on the REAL SDXL module trees (full-size models on the meta device)."""

import re

import pytest
import torch

from act_core.diffusion.families.sdxl import PRESETS, sdxl_canonical_names, sdxl_module, sdxl_module_path, sdxl_module_tree
from act_core.diffusion.presets import resolve_modules, resolve_preset

from diffusers_helpers import meta_sdxl, tiny_sdxl_components

EXPECTED = {  # preset -> module count on SDXL base (UNet config + CLIP-L + OpenCLIP-G)
    "unet_norms": 256,
    "unet_groupnorms": 46,
    "unet_layernorms": 210,
    "unet_attention_outputs": 140,
    "unet_cross_attention": 70,
    "unet_transformer_blocks": 70,
    "unet_resnets": 17,
    "text_encoder_layers": 44,
    "text_encoder_mlp": 44,
    "text_encoder_norms": 90,
    "text_encoder_fast": 1,
}


@pytest.fixture(scope="module")
def sdxl():
    return meta_sdxl()


@pytest.fixture(scope="module")
def names(sdxl):
    return sdxl_canonical_names(sdxl)


def test_every_preset_has_an_expected_count():
    assert set(EXPECTED) | {"unet_mid_block"} == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_counts_on_real_sdxl(preset, names, sdxl):
    chosen = resolve_preset(preset, names, PRESETS)
    assert len(chosen) == EXPECTED[preset]
    assert len(set(chosen)) == len(chosen)
    for n in chosen[:3] + chosen[-3:]:
        assert isinstance(sdxl_module(sdxl, n), torch.nn.Module)


def test_unet_norms_types_and_units(names, sdxl):
    chosen = resolve_preset("unet_norms", names, PRESETS)
    kinds = {}
    for n in chosen:
        m = sdxl_module(sdxl, n)
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    assert kinds == {"GroupNorm": 46, "LayerNorm": 210}
    ln = [n for n in chosen if isinstance(sdxl_module(sdxl, n), torch.nn.LayerNorm)]
    # 70 transformer blocks x 3 LayerNorms: 10 blocks at 640 channels, 60 at 1280
    assert sum(sdxl_module(sdxl, n).normalized_shape[0] for n in ln) == 3 * (10 * 640 + 60 * 1280)
    assert chosen[-1] == "unet.conv_norm_out"


def test_canonical_names_shape(names, sdxl):
    assert names[0] == "text_encoder" and "unet.conv_norm_out" in names
    assert "text_encoder.encoder.layers.3.mlp.fc2" in names
    assert "text_encoder_2.encoder.layers.31" in names and "text_encoder_2.final_layer_norm" in names
    assert "text_encoder_2.text_projection" in names
    assert not any(".text_model" in n for n in names)
    # CLIPTextModel (transformers 5) has no text_model; WithProjection keeps it
    assert sdxl_module_path(sdxl, "text_encoder.encoder.layers.3") == "text_encoder.encoder.layers.3"
    assert sdxl_module_path(sdxl, "text_encoder_2.encoder.layers.3") == "text_encoder_2.text_model.encoder.layers.3"
    assert sdxl_module_path(sdxl, "text_encoder_2.text_projection") == "text_encoder_2.text_projection"
    assert sdxl_module(sdxl, "text_encoder_2.encoder.layers.3") is sdxl.text_encoder_2.text_model.encoder.layers[3]
    # text encoders come before the UNet; inside the UNet this is named_modules() order, which is
    # NOT forward order (diffusers registers up_blocks before mid_block, attentions before resnets):
    # the SDXL runner measures forward order for causal fitting.
    i = {n: k for k, n in enumerate(names)}
    assert i["text_encoder_2.final_layer_norm"] < i["unet.conv_in"] < i["unet.up_blocks.0"] < i["unet.mid_block"]


def test_module_tree_names_equal_canonical_names(sdxl, names):
    tree = sdxl_module_tree(sdxl)
    assert [n for n, _ in tree.named_modules() if n] == names
    assert tree.get_submodule("text_encoder_2.encoder.layers.5") is sdxl.text_encoder_2.text_model.encoder.layers[5]
    assert tree.get_submodule("unet.mid_block") is sdxl.unet.mid_block


def test_mixed_patterns_regex_and_index(names):
    out = resolve_preset(["text_encoder_fast", r"unet\.mid_block\.resnets\.0\.norm1"], names, PRESETS)
    assert out == ["text_encoder.encoder.layers.0.mlp", "unet.mid_block.resnets.0.norm1"]
    assert resolve_modules([r"text_encoder_2\.encoder\.layers\.1:0"], names, PRESETS) == {"text_encoder_2.encoder.layers.1": 0}
    assert resolve_preset(r"unet\.mid_block\..*norm.*", names, PRESETS) == resolve_preset("unet_mid_block", names, PRESETS)


def test_errors(names):
    with pytest.raises(ValueError, match=r"unknown layer preset 'unet_norm'.*did you mean unet_norms"):
        resolve_preset("unet_norm", names, PRESETS)
    with pytest.raises(ValueError, match=r"matched no module.*close: unet\.mid_block\.resnets\.0\.norm1"):
        resolve_preset(r"unet\.mid_block\.resnets\.0\.norm_1", names, PRESETS)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        resolve_preset("unet.(", names, PRESETS)
    with pytest.raises(ValueError, match="no layer preset"):
        resolve_preset([], names, PRESETS)
    with pytest.raises(ValueError, match="must start with one of"):
        sdxl_module_path(meta_sdxl(), "vae.decoder")


def test_tiny_pipeline_components_resolve():
    comps = tiny_sdxl_components()
    names = sdxl_canonical_names(type("P", (), comps))
    for preset in PRESETS:
        assert resolve_preset(preset, names, PRESETS), preset
    assert len(resolve_preset("text_encoder_layers", names, PRESETS)) == 6
    assert all(re.fullmatch(r"[\w.]+", n) for n in names)
