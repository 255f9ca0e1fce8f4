"""SDXL in diffusers: load (folder, single file, Lightning UNet), fit, save/load, steer, sweep.

Everything runs on a tiny random SDXL pipeline built from configs (tests/diffusers_helpers.py),
saved to a diffusers folder and to an original-layout single file, then loaded through the same
``load_sdxl`` a user calls.
"""

import numpy as np
import pytest
import torch

from act_core import fit_transport
from act_core.diffusion import pipeline as D
from act_core.diffusion.images import read_image_settings, save_image
from act_core.fitting import collect
from act_core.mapfile import MapFileError, TransportMap

from diffusers_helpers import save_single_file, tiny_sdxl_pipeline

SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    import diffusers

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()  # the byte-level test tokenizer truncates long prompts


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_sdxl")
    pipe = tiny_sdxl_pipeline()
    pipe.save_pretrained(d / "tiny-sdxl")
    save_single_file(pipe, d / "tiny-sdxl.safetensors")
    from safetensors.torch import save_file

    torch.manual_seed(5)  # a "distilled" UNet: same architecture, perturbed weights
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in pipe.unet.state_dict().items()},
              str(d / "tiny_lightning_2step_unet.safetensors"))
    return d


@pytest.fixture(scope="module")
def pipe(files):
    return D.load_sdxl(files / "tiny-sdxl", kind="lightning", device="cpu")


def _img(pipe, tmap=None, strength=1.0, prompt="a cat on a sofa", **kw):
    return D.generate(pipe, prompt, tmap, strength=strength, seed=3, output_type="np", **{**SIZE, **kw})


def _hooks(pipe):
    """Hooks on the pipeline, except the output-capturing hooks transformers 5 installs on
    first use of a text encoder (they belong to the model, not to us)."""
    n = 0
    for c in ("unet", "text_encoder", "text_encoder_2", "vae"):
        for m in getattr(pipe, c).modules():
            for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
                n += "output_capturing_hook" not in getattr(h, "__qualname__", "")
    return n


@pytest.fixture(scope="module")
def style_map(pipe):
    return D.fit_style_map(pipe, "watercolor", n=8, layers="unet_norms", batch_size=4, **SIZE)


def test_loader_folder_single_file_and_lightning(files, pipe):
    assert pipe.act_defaults["kind"] == "lightning" and pipe.act_defaults["steps"] == 4
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    single = D.load_sdxl(files / "tiny-sdxl.safetensors", config=files / "tiny-sdxl", kind="base", device="cpu")
    assert single.act_defaults["kind"] == "base"
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(pipe, comp).state_dict(), getattr(single, comp).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), comp
    light = D.load_sdxl(files / "tiny-sdxl", unet=files / "tiny_lightning_2step_unet.safetensors", device="cpu")
    assert light.act_defaults["kind"] == "lightning" and light.act_defaults["steps"] == 2  # from the file name
    assert not torch.equal(light.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_loader_errors(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        D.load_sdxl(tmp_path / "nope")
    with pytest.raises(ValueError, match="no model_index.json"):
        D.load_sdxl(tmp_path)
    with pytest.raises(ValueError, match="config"):
        D.load_sdxl(files / "tiny-sdxl.safetensors", device="cpu")  # offline single file needs local configs
    with pytest.raises(ValueError, match="unknown model kind"):
        D.load_sdxl(files / "tiny-sdxl", kind="flux")
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "bad_unet.safetensors"))
    with pytest.raises(ValueError, match="does not fit this SDXL UNet"):
        D.load_sdxl(files / "tiny-sdxl", unet=tmp_path / "bad_unet.safetensors", device="cpu")


def test_fit_save_load_generate_both_paths(files, pipe, style_map, tmp_path):
    assert style_map.architecture == "sdxl" and style_map.meta["style"] == "watercolor"
    assert len(style_map) == len([n for n in style_map.modules if "norm" in n]) > 10
    assert style_map.layouts["unet.conv_norm_out"] == "spatial_mean"
    path = style_map.save(tmp_path / "watercolor.safetensors")
    loaded = TransportMap.load(path)
    single = D.load_sdxl(files / "tiny-sdxl.safetensors", config=files / "tiny-sdxl", kind="lightning", device="cpu")
    base = _img(pipe)
    assert np.array_equal(base, _img(single))  # same weights, same seed
    steered = _img(pipe, loaded, 1.0)
    assert np.abs(steered - base).max() > 1e-3
    assert np.array_equal(steered, _img(single, loaded, 1.0))  # the map works the same from the single file
    assert np.array_equal(_img(pipe, loaded, 0.0), base)  # λ = 0 is exactly unsteered
    assert _hooks(pipe) == 0 and np.array_equal(_img(pipe), base)  # hooks removed -> original image
    assert not np.array_equal(_img(pipe, loaded, 0.5), steered)


def test_fit_is_deterministic_and_cleans_up(pipe, style_map):
    sched = pipe.scheduler
    before = _img(pipe)
    again = D.fit_style_map(pipe, "watercolor", n=8, layers="unet_norms", batch_size=4, **SIZE)
    assert pipe.scheduler is sched and _hooks(pipe) == 0
    for n in style_map.modules:
        assert torch.equal(again[n].omega, style_map[n].omega) and torch.equal(again[n].beta, style_map[n].beta)
    other = D.fit_style_map(pipe, "watercolor", n=8, layers="unet_norms", batch_size=4, seed=1, **SIZE)
    assert not torch.equal(other["unet.conv_norm_out"].beta, style_map["unet.conv_norm_out"].beta)
    assert np.array_equal(_img(pipe), before)


def test_forward_order_and_causal_uses_upstream_maps(pipe):
    runner = D.SDXLRunner(pipe, **SIZE)
    names = ["unet.up_blocks.0.resnets.0.norm1", "unet.mid_block.resnets.0.norm1",
             "unet.down_blocks.1.attentions.0.norm", "unet.down_blocks.1.resnets.0.norm1"]
    assert runner.order(names) == names[::-1]  # named_modules() order would be wrong here
    # (down_blocks.0 norms see only conv_in(noise): prompt-independent, identity maps; pick text-dependent ones)
    layers = [r"unet\.down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.norm3", r"unet\.mid_block\.resnets\.0\.norm1"]
    kw = dict(n=8, layers=layers, batch_size=4, **SIZE)
    sim = D.fit_negation_map(pipe, "pink elephant", procedure="simultaneous", **kw)
    cau = D.fit_negation_map(pipe, "pink elephant", procedure="causal", **kw)
    first, second = sim.modules
    assert cau.modules == sim.modules and cau.meta["procedure"] == "causal"
    assert torch.allclose(cau[first].omega, sim[first].omega) and torch.allclose(cau[first].beta, sim[first].beta)
    # module 2 was fitted on activations produced with module 1's map applied
    assert not torch.allclose(cau[second].beta, sim[second].beta, atol=1e-5)
    src, _ = __import__("act_core.diffusion.prompts", fromlist=["x"]).negation_pairs("pink elephant", n=8)
    plain, _ = collect(runner, src, {second: None})
    with D.steer(runner.model, sim.subset([first]), strength=1.0):
        shifted, _ = collect(runner, src, {second: None})
    assert not torch.allclose(plain[second], shifted[second])


def test_text_encoder_layers_and_partial_stop(pipe):
    tmap = D.fit_style_map(pipe, "anime", n=8, layers="text_encoder_layers", batch_size=8, **SIZE)
    assert len(tmap) == 6 and all(n.startswith("text_encoder") for n in tmap.modules)
    assert all(tmap.layouts[n] == "tokens" for n in tmap.modules)
    base = _img(pipe)
    assert np.abs(_img(pipe, tmap, 1.0) - base).max() > 1e-4
    assert np.array_equal(_img(pipe, tmap, 0.0), base)


def test_wrong_map_and_bad_input(pipe, style_map):
    other = TransportMap(maps=dict(style_map.maps), layouts=dict(style_map.layouts),
                         output_index=dict(style_map.output_index), meta={**style_map.meta, "architecture": "llama"})
    with pytest.raises(MapFileError, match="architecture"):
        _img(pipe, other)
    with pytest.raises(ValueError, match="empty prompt"):
        D.generate(pipe, "  ", style_map)
    with pytest.raises(ValueError, match="unknown layer preset"):
        D.fit_style_map(pipe, "anime", n=4, layers="unet_norm")
    with pytest.raises(ValueError, match="unknown style"):
        D.fit_style_map(pipe, "aquarelle", n=4)
    with pytest.raises(TypeError, match="not one string"):
        D.fit_sdxl_map(pipe, "a cat", ["a dog", "a bird"])
    with pytest.raises(ValueError, match="empty or non-string"):
        D.fit_sdxl_map(pipe, ["a cat", " "], ["a dog", "a bird"])
    assert _hooks(pipe) == 0


def test_sweep_grid_and_png_metadata(pipe, style_map, tmp_path):
    grid = D.sweep_grid(pipe, ["a dog in a park", "a red bus"], style_map, [0.0, 1.0], seed=1, **SIZE)
    rows = D.sweep_images(pipe, ["a dog in a park"], style_map, [0.0], seed=1, **SIZE)
    assert grid.size[0] >= 2 * 32 and grid.size[1] >= 2 * 32
    assert np.array_equal(np.asarray(rows[0][0]), np.asarray(D.generate(pipe, "a dog in a park", seed=1, **SIZE)[0]))
    p = save_image(grid, tmp_path / "grid.png", {"strengths": [0.0, 1.0], "style": "watercolor"})
    assert read_image_settings(p) == {"strengths": [0.0, 1.0], "style": "watercolor"}
    with pytest.raises(ValueError, match="PNG"):
        save_image(grid, tmp_path / "grid.jpg")


def test_step_maps_experiment(pipe):
    from act_core.diffusion import prompts as P

    src, tgt = P.style_pairs("cyberpunk", n=8)
    maps = D.fit_step_maps(pipe, src, tgt, layers="unet_groupnorms", steps=2, batch_size=8, **SIZE)
    assert sorted(maps) == [0, 1]
    assert not torch.allclose(maps[0]["unet.conv_norm_out"].beta, maps[1]["unet.conv_norm_out"].beta)
    base = _img(pipe, steps=2)
    both = _img(pipe, maps, 1.0, steps=2)
    only_first = _img(pipe, {0: maps[0]}, 1.0, steps=2)
    assert np.abs(both - base).max() > 1e-4 and not np.array_equal(both, only_first)
    assert _hooks(pipe) == 0 and np.array_equal(_img(pipe, steps=2), base)
    with pytest.raises(ValueError, match="only cover UNet"):
        D.fit_step_maps(pipe, src, tgt, layers="text_encoder_fast", steps=2)


def test_steer_and_bake_take_the_pipeline_itself(pipe, rng):
    """``steer(pipe, tmap)`` / ``bake(pipe, tmap, λ)`` on a diffusers pipeline, as a user writes them."""
    from act_core import steer
    from act_core.bake import bake
    from act_core.diffusion.families.sdxl import sdxl_module_tree

    tree = sdxl_module_tree(pipe)
    tmap = TransportMap(meta={"architecture": "sdxl"})
    for name in ("unet.mid_block.attentions.0.transformer_blocks.0.norm1", "text_encoder.final_layer_norm"):
        d = tree.get_submodule(name).normalized_shape[0]
        tmap.add(name, fit_transport(torch.randn(32, d, generator=rng), torch.randn(32, d, generator=rng) + 1,
                                     "linear", support="all"), "tokens")
    before = _img(pipe)
    with steer(pipe, tmap, strength=1.0):
        hooked = _img(pipe)
    assert not np.allclose(hooked, before)
    with bake(pipe, tmap, strength=1.0):
        assert _hooks(pipe) == 0
        baked = _img(pipe)
    assert np.allclose(baked, hooked, atol=1e-4)
    assert np.array_equal(_img(pipe), before)
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        with steer(object(), tmap):
            pass


def test_collection_noise_is_one_rule_per_prompt(pipe):
    """The diffusers runner's initial latents are ``prompt_noise(seed, prompt)``, the rule of the
    ComfyUI Fit node (tests/comfy/test_fit_batch.py): per prompt, independent of batching."""
    from act_core.diffusion.noise import prompt_noise

    runner = D.SDXLRunner(pipe, seed=7, **SIZE)
    lat = runner._latents(["a cat", "a dog"])
    for row, p in zip(lat, ["a cat", "a dog"]):
        assert torch.equal(row, prompt_noise(7, p, row.shape).to(row.dtype))
    assert torch.equal(runner._latents(["a dog"])[0], lat[1]) and not torch.equal(lat[0], lat[1])


def test_cfg_steers_only_the_conditional_rows_by_default(pipe, style_map):
    """One default everywhere: with guidance > 1 only the conditional half of the UNet batch is
    steered (ComfyUI's hooks mode does the same; its fused mode refuses instead of differing)."""
    gate = D.cond_rows_gate(2)
    assert gate("unet.conv_in", torch.zeros(4, 3)).tolist() == [False, False, True, True]
    assert gate("unet.conv_in", torch.zeros(2, 3)) is True  # no negative half in this call
    assert gate("text_encoder.final_layer_norm", torch.zeros(4, 3)) is True
    seen = []  # outputs of a block downstream of steered norms, per UNet call: rows [negative; conditional]
    block = pipe.unet.mid_block.resnets[0]
    h = block.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    try:
        base = _img(pipe, guidance=5.0)
        plain = seen[:]
        seen.clear()
        cond_only = _img(pipe, style_map, guidance=5.0)
        steered = seen[:]
        seen.clear()
        both = _img(pipe, style_map, guidance=5.0, steer_negative=True)
    finally:
        h.remove()
    assert not np.allclose(cond_only, base) and not np.allclose(cond_only, both)
    # the first UNet call has the same inputs in both runs: its negative row is untouched, bit for bit
    assert torch.equal(steered[0][:1], plain[0][:1]) and not torch.allclose(steered[0][1:], plain[0][1:])
