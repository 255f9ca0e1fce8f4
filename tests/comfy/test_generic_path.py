"""The generic path: a model type without an act-steering family module (a tiny Chroma, built
from ComfyUI's own classes by the test pack) fitted and steered on ComfyUI's own module names;
its maps say so and other model types refuse them, and family maps are refused by it."""

import pytest
import torch

from act_core import count_hooks
from act_core.mapfile import MapFileError, TransportMap

pytestmark = pytest.mark.comfy

SIZE = 64


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import apply, comfy_compat, files, fit, info, prompts, steering

    return type("Mods", (), dict(apply=apply, cc=comfy_compat, files=files, fit=fit, info=info, prompts=prompts,
                                 steering=steering))


@pytest.fixture(scope="module")
def chroma(tiny_pack):
    return tiny_pack.build_chroma(seed=0)


def _fit(mods, model, clip, layers="paper default", pattern=""):
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    with torch.inference_mode():
        return mods.fit.fit(model, clip, pairs, "Linear-AcT", layers, pattern, "method default", "simultaneous", 0,
                            SIZE, SIZE, 4)


def _sample(mods, model, clip, cfg=1.0):
    cc = mods.cc
    pos, neg = cc.encode(clip, "a photo of a cat"), cc.encode(clip, "blurry")
    with torch.inference_mode():
        return cc.sample(model, pos, neg, cc.empty_latent(model, SIZE, SIZE), 7, 2, cfg)


def test_fit_and_steer_on_comfyui_names(mods, chroma, tmp_path):
    model, clip = chroma
    tmap = _fit(mods, model, clip)
    assert tmap.architecture == "comfyui:Chroma"
    assert tmap.meta["names"] == "comfyui" and tmap.meta["comfyui_model"] == "Chroma"
    # every block output: the double- and single-stream block lists, by ComfyUI's names
    assert tmap.modules == ["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0",
                            "diffusion_model.single_blocks.1"]
    loaded = TransportMap.load(tmap.save(tmp_path / "chroma.safetensors"))
    base = _sample(mods, model, clip)
    steered = _sample(mods, mods.apply.apply_to_model(model, loaded, 1.0), clip)
    assert (steered - base).abs().max() > 1e-3
    assert torch.equal(_sample(mods, mods.apply.apply_to_model(model, loaded, 0.0), clip), base)
    assert count_hooks(model.model) == 0 and torch.equal(_sample(mods, model, clip), base)
    assert "ComfyUI Chroma (generic path" in mods.info.describe(loaded)


def test_norms_text_layers_and_custom_patterns(mods, chroma):
    model, clip = chroma
    norms = _fit(mods, model, clip, "every normalisation")
    assert len(norms) > 8 and all(n.startswith("diffusion_model.") for n in norms.modules)
    assert "diffusion_model.double_blocks.0.img_norm1" in norms and "diffusion_model.double_blocks.0.img_attn.norm" not in norms
    base = _sample(mods, model, clip)
    assert (_sample(mods, mods.apply.apply_to_model(model, norms, 1.0), clip) - base).abs().max() > 1e-4
    text = _fit(mods, model, clip, "text encoder layers")
    assert text.modules == ["t5xxl.transformer.encoder.block.0", "t5xxl.transformer.encoder.block.1"]
    steered_clip = mods.apply.apply_to_clip(clip, text, 1.0)
    a, b = mods.cc.encode(clip, "a red bus"), mods.cc.encode(steered_clip, "a red bus")
    assert (a[0][0] - b[0][0]).abs().max() > 1e-3 and torch.equal(mods.cc.encode(clip, "a red bus")[0][0], a[0][0])
    custom = _fit(mods, model, clip, "custom pattern", r"diffusion_model\.single_blocks\.1\.linear2")
    assert custom.modules == ["diffusion_model.single_blocks.1.linear2"]
    with pytest.raises(ValueError, match="needs a model family"):
        _fit(mods, model, clip, "T5 blocks")
    with pytest.raises(ValueError, match="custom_pattern: .*matched no module"):
        _fit(mods, model, clip, "custom pattern", r"transformer\.transformer_blocks\.0\.img")


def test_refusals_between_the_generic_path_and_families(mods, chroma, tiny):
    model, clip = chroma
    generic_map = _fit(mods, model, clip)
    sdxl_model, sdxl_clip = tiny
    with pytest.raises(MapFileError, match=r"fitted with ComfyUI's own module names on a 'Chroma' model.*connected model is SDXL"):
        mods.apply.apply_to_model(sdxl_model, generic_map, 1.0)
    pairs = mods.prompts.build_pairs("style: watercolor", 2, 0)
    with torch.inference_mode():
        sdxl_map = mods.fit.fit(sdxl_model, sdxl_clip, pairs, "Linear-AcT", "custom pattern", r"unet\.mid_block\..*norm.*",
                                "method default", "simultaneous", 0, SIZE, SIZE, 2)
    with pytest.raises(MapFileError, match=r"fitted on SDXL .*connected model is ComfyUI Chroma \(generic path\)"):
        mods.apply.apply_to_model(model, sdxl_map, 1.0)
    with pytest.raises(MapFileError, match="fitted on 'sdxl' but the connected CLIP is PixArtT5XXL"):
        mods.apply.apply_to_clip(clip, sdxl_map, 1.0)
    # a generic map of the same model type but other sizes: the unit check names the layers
    other = TransportMap(maps=dict(generic_map.maps), layouts=dict(generic_map.layouts),
                         output_index=dict(generic_map.output_index), meta=dict(generic_map.meta))
    other.maps = {"diffusion_model.double_blocks.7": generic_map["diffusion_model.double_blocks.0"]}
    other.layouts = {"diffusion_model.double_blocks.7": "tokens"}
    other.output_index = {"diffusion_model.double_blocks.7": None}
    with pytest.raises(MapFileError, match="double_blocks.7' not found"):
        mods.apply.apply_to_model(model, other, 1.0)
