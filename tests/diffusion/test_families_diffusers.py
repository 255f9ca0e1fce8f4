"""Every family in diffusers on tiny pipelines built from configs: SD1.5, SD2.x, SD3.5, FLUX.1
schnell and dev (SDXL: test_diffusers_sdxl.py). Detection, folder and single-file loading,
fit -> save -> load -> steer, streams, text encoders (T5 included), refusal of other families' maps.
"""

import numpy as np
import pytest
import torch

from act_core.diffusion import families
from act_core.diffusion import pipeline as D
from act_core.hooks import ActivationCollector
from act_core.mapfile import MapFileError, TransportMap

from diffusers_helpers import save_single_file, tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd15_pipeline

SIZE = dict(height=32, width=32)
BUILD = {
    "sd15": lambda: tiny_sd15_pipeline(),
    "sd2": lambda: tiny_sd15_pipeline(sd2=True),
    "sd3": lambda: tiny_sd3_pipeline(),
    "flux": lambda: tiny_flux_pipeline(),
    "flux-dev": lambda: tiny_flux_pipeline(dev=True),
}


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    import diffusers
    import transformers

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()  # the byte-level test tokenizer truncates long prompts


@pytest.fixture(scope="module")
def pipes():
    return {k: v() for k, v in BUILD.items()}


def _img(pipe, tmap=None, strength=1.0, prompt="a cat on a sofa", **kw):
    return D.generate(pipe, prompt, tmap, strength=strength, seed=3, steps=2, output_type="np", **{**SIZE, **kw})


def _hooks(pipe):
    fam = families.for_pipeline(pipe)
    n = 0
    for comp in (*fam.components, "vae"):
        for m in getattr(pipe, comp).modules():
            for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
                n += "output_capturing_hook" not in getattr(h, "__qualname__", "")
            n += "forward" in m.__dict__
    return n


@pytest.mark.parametrize("key,family", [("sd15", "sd15"), ("sd2", "sd2"), ("sd3", "sd3"), ("flux", "flux"), ("flux-dev", "flux")])
def test_detection(pipes, key, family):
    assert families.for_pipeline(pipes[key]).name == family
    assert D.family_of(pipes[key]).name == family


@pytest.mark.parametrize("key", list(BUILD))
def test_fit_save_load_steer(pipes, key, tmp_path):
    pipe = pipes[key]
    fam = D.family_of(pipe)
    tmap = D.fit_style_map(pipe, "watercolor", n=4, batch_size=4, **SIZE)
    assert tmap.architecture == fam.name and tmap.meta["layers"] == fam.default_layers
    assert len(tmap) == len(D.resolve_layers(pipe, None)) > 2
    stream = [n for n in tmap.maps if n.endswith((".img", ".txt"))]
    assert all(tmap.output_index[n] is None for n in stream)  # the name says which stream
    loaded = TransportMap.load(tmap.save(tmp_path / "m.safetensors"))
    base = _img(pipe)
    steered = _img(pipe, loaded)
    assert np.abs(steered - base).max() > 1e-4
    assert np.array_equal(_img(pipe, loaded, 0.0), base)  # λ = 0 is exactly unsteered
    assert _hooks(pipe) == 0 and np.array_equal(_img(pipe), base)  # nothing left behind
    assert not np.array_equal(_img(pipe, loaded, 0.5), steered)


def test_paper_presets_on_real_size_trees():
    """The paper's FLUX set (both outputs of the 19 double-stream blocks + single blocks 0-14)
    and the default sets of the other families, on full-size models built on the meta device."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    from act_core.diffusion.families import flux, sd3, sd15
    from act_core.diffusion.presets import resolve_preset

    with torch.device("meta"):
        trees = {"flux": FluxTransformer2DModel(**flux.FLUX1_CONFIG), "sd3": SD3Transformer2DModel(**sd3.SD35_LARGE_CONFIG),
                 "sd15": UNet2DConditionModel(**sd15.SD15_UNET_CONFIG), "sd2": UNet2DConditionModel(**sd15.SD2_UNET_CONFIG)}
    expected = {
        ("flux", "transformer_paper"): 19 * 2 + 15, ("flux", "transformer_double_blocks"): 38,
        ("flux", "transformer_single_blocks"): 38, ("flux", "transformer_norms"): 19 * 4 + 38 + 1,
        ("sd3", "transformer_blocks"): 37 * 2 + 1, ("sd3", "transformer_norms"): 38 * 4 - 1 + 1,  # the last block has no norm2_context
        ("sd15", "unet_norms"): 109, ("sd2", "unet_norms"): 109,
    }
    for (name, preset), count in expected.items():
        fam = families.get(name)
        pipe = type("P", (), {fam.denoiser: trees[name]})()
        assert families.for_pipeline(pipe).name == name
        chosen = resolve_preset(preset, fam.canonical_names(pipe), fam.presets)
        assert len(chosen) == count, (name, preset)
    paper = resolve_preset("transformer_paper", families.flux.FAMILY.canonical_names(type("P", (), {"transformer": trees["flux"]})()),
                           families.flux.PRESETS)
    assert paper[-1] == "transformer.single_transformer_blocks.14" and "transformer.transformer_blocks.18.txt" in paper


def test_streams_read_the_right_tuple_elements(pipes):
    """``.txt`` / ``.img`` are the block's text and image outputs; a FLUX single-stream block is
    its (txt, img) pair joined along the tokens; SD3's last block has no text output."""
    for key, block_name, single in (("flux", "transformer_blocks.0", "single_transformer_blocks.1"),
                                    ("sd3", "transformer_blocks.0", None)):
        pipe = pipes[key]
        runner = D.PipelineRunner(pipe, **SIZE)
        raw = {}
        block = pipe.transformer.get_submodule(block_name)
        handles = [block.register_forward_hook(lambda m, a, o: raw.setdefault("double", o))]
        if single:
            handles.append(pipe.transformer.get_submodule(single).register_forward_hook(lambda m, a, o: raw.setdefault("single", o)))
        names = [f"transformer.{block_name}.txt", f"transformer.{block_name}.img"] + ([f"transformer.{single}"] if single else [])
        col = ActivationCollector(runner.model, D.resolve_layers(pipe, [n.replace(".", r"\.") for n in names]),
                                  pooling="none", stop_after=False)
        try:
            with col:
                runner.run(["a red bus"], col)
        finally:
            for h in handles:
                h.remove()
        got = col.take()  # pooling "none": one row per token of the one prompt
        txt, img = raw["double"]  # diffusers returns (encoder_hidden_states, hidden_states)
        assert torch.equal(got[names[0]], txt[0].float()) and torch.equal(got[names[1]], img[0].float())
        if single:
            joined = torch.cat(raw["single"], dim=1)
            assert col.shapes[names[2]][1] == raw["single"][0].shape[1] + raw["single"][1].shape[1]
            assert torch.equal(got[names[2]], joined[0].float())
    sd3 = families.sd3.FAMILY.canonical_names(pipes["sd3"])
    assert "transformer.transformer_blocks.1.img" in sd3 and "transformer.transformer_blocks.1.txt" not in sd3


@pytest.mark.parametrize("key,preset,encoder", [("flux", "t5_blocks", "text_encoder_2"), ("sd3", "t5_norms", "text_encoder_3"),
                                                ("flux", "text_encoder_layers", "text_encoder"), ("sd15", "text_encoder_layers", "text_encoder")])
def test_text_encoder_maps_t5_and_clip(pipes, key, preset, encoder):
    pipe = pipes[key]
    tmap = D.fit_style_map(pipe, "anime", n=4, layers=preset, batch_size=4, **SIZE)
    assert tmap.modules and all(n.startswith(encoder + ".") for n in tmap.modules)
    assert all(tmap.layouts[n] == "tokens" for n in tmap.modules)
    base = _img(pipe)
    assert np.abs(_img(pipe, tmap) - base).max() > 1e-5
    assert np.array_equal(_img(pipe, tmap, 0.0), base) and _hooks(pipe) == 0


def test_causal_fit_with_streams(pipes):
    pipe = pipes["flux"]
    layers = [r"transformer\.transformer_blocks\.0\.(img|txt)", r"transformer\.single_transformer_blocks\.1"]
    sim = D.fit_negation_map(pipe, "pink elephant", n=4, layers=layers, batch_size=4, **SIZE)
    cau = D.fit_negation_map(pipe, "pink elephant", n=4, layers=layers, procedure="causal", batch_size=4, **SIZE)
    ref = D.fit_negation_map(pipe, "pink elephant", n=4, layers=layers, procedure="causal_reference", batch_size=4, **SIZE)
    assert sim.modules == cau.modules == ref.modules
    first, last = "transformer.transformer_blocks.0.txt", "transformer.single_transformer_blocks.1"
    assert torch.allclose(cau[first].omega, sim[first].omega, atol=1e-5)
    assert not torch.allclose(cau[last].beta, sim[last].beta, atol=1e-6)  # fitted after upstream maps
    assert torch.allclose(cau[last].beta, ref[last].beta, atol=1e-4) and torch.allclose(cau[last].omega, ref[last].omega, atol=1e-4)
    assert all(v is None for v in cau.output_index.values())


def test_maps_of_another_family_are_refused(pipes):
    flux_map = D.fit_style_map(pipes["flux"], "anime", n=4, batch_size=4, **SIZE)
    for key in ("sd3", "sd15"):
        with pytest.raises(MapFileError, match=r"architecture 'flux' but the model is"):
            _img(pipes[key], flux_map)
    sd15_map = D.fit_style_map(pipes["sd15"], "anime", n=4, layers="unet_mid_block", batch_size=4, **SIZE)
    with pytest.raises(MapFileError, match="architecture 'sd15'"):
        _img(pipes["sd2"], sd15_map)
    assert _hooks(pipes["sd3"]) == 0


def test_unknown_presets_name_the_family_presets(pipes):
    with pytest.raises(ValueError, match=r"unknown layer preset 'unet_norms'.*transformer_paper"):
        D.fit_style_map(pipes["flux"], "anime", n=4, layers="unet_norms")
    with pytest.raises(ValueError, match="returns several streams"):
        families.flux.FAMILY.to_comfy("transformer.transformer_blocks.0")


def test_folder_and_single_file_loading(pipes, tmp_path):
    for key in ("sd15", "flux", "sd3"):
        pipe = pipes[key]
        folder = tmp_path / key
        pipe.save_pretrained(folder)
        loaded = D.load_pipeline(folder, device="cpu")
        fam = D.family_of(pipe)
        assert loaded.act_defaults["family"] == fam.name
        assert np.array_equal(_img(loaded), _img(pipe)), key
    assert D.load_pipeline(tmp_path / "flux", device="cpu").act_defaults["kind"] == "schnell"
    dev = tmp_path / "tiny-flux-dev"
    pipes["flux-dev"].save_pretrained(dev)
    d = D.load_pipeline(dev, device="cpu").act_defaults
    assert (d["kind"], d["steps"], d["guidance"]) == ("dev", 28, 3.5)
    sd2 = tmp_path / "sd2"
    pipes["sd2"].save_pretrained(sd2)
    assert D.load_pipeline(sd2, device="cpu").act_defaults["family"] == "sd2"
    with pytest.raises(ValueError, match="holds a SD1.5 pipeline .StableDiffusionPipeline., not FLUX.1"):
        D.load_pipeline(tmp_path / "sd15", family="flux", device="cpu")
    with pytest.raises(ValueError, match="unknown model kind 'lightning' for FLUX.1"):
        D.load_pipeline(tmp_path / "flux", kind="lightning", device="cpu")
    # SD1.5 as one original-layout file (A1111/ComfyUI keys), read back with the folder's configs
    save_single_file(pipes["sd15"], tmp_path / "sd15.safetensors")
    single = D.load_pipeline(tmp_path / "sd15.safetensors", config=tmp_path / "sd15", device="cpu")
    assert single.act_defaults["family"] == "sd15"
    for comp in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipes["sd15"], comp).state_dict(), getattr(single, comp).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), comp
    with pytest.raises(ValueError, match="family"):
        D.load_pipeline(tmp_path / "sd15.safetensors", device="cpu")
    with pytest.raises(ValueError, match="not flux"):
        save_single_file(pipes["flux"], tmp_path / "flux.safetensors")


def test_step_maps_on_a_transformer(pipes):
    from act_core.diffusion import prompts as P

    pipe = pipes["sd3"]
    src, tgt = P.style_pairs("cyberpunk", n=4)
    maps = D.fit_step_maps(pipe, src, tgt, layers="transformer_image_blocks", steps=2, batch_size=4, **SIZE)
    assert sorted(maps) == [0, 1]
    base = _img(pipe)
    assert np.abs(_img(pipe, maps) - base).max() > 1e-5
    assert _hooks(pipe) == 0 and np.array_equal(_img(pipe), base)
    with pytest.raises(ValueError, match="only cover transformer"):
        D.fit_step_maps(pipe, src, tgt, layers="t5_blocks", steps=2)


def test_cli_family_detection(pipes, tmp_path, capsys):
    from act_core.cli import main

    folder = tmp_path / "tiny-flux-schnell"
    pipes["flux"].save_pretrained(folder)
    out = tmp_path / "flux_anime.safetensors"
    rc = main(["fit-style", "--model", str(folder), "--style", "anime", "-n", "4", "--size", "32", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    tmap = TransportMap.load(out)
    assert tmap.architecture == "flux" and tmap.meta["layers"] == "transformer_paper"
    rc = main(["sweep", "--model", str(folder), "--map", str(out), "--prompt", "a cat", "--strengths", "0,1", "--size", "32",
               "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "grid.png")])
    assert rc == 0 and (tmp_path / "grid.png").is_file()
    from diffusers_helpers import build_tiny_clip

    clip_dir = tmp_path / "clip"
    for part in build_tiny_clip():
        part.save_pretrained(clip_dir)
    rc = main(["evaluate", "--model", str(folder), "--map", str(out), "--clip", str(clip_dir), "-n", "1",
               "--strengths", "0,1", "--size", "32", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert rc == 0 and (tmp_path / "eval" / "results.json").is_file()
    capsys.readouterr()
    rc = main(["fit-style", "--list-presets", "--family", "flux"])
    listing = capsys.readouterr().out
    assert rc == 0 and "transformer_paper" in listing and "unet_norms" not in listing


def test_act_core_steer_takes_the_pipeline_itself(pipes):
    """``act_core.steer(pipe, tmap)`` resolves any family's pipeline to its canonical tree, stream
    names included, and steers as :func:`generate` does."""
    import act_core

    pipe = pipes["flux"]
    tmap = D.fit_style_map(pipe, "anime", n=4, batch_size=4, **SIZE)
    assert any(n.endswith(".img") for n in tmap.modules)
    with act_core.steer(pipe, tmap, strength=1.0):
        direct = pipe(prompt=["a cat on a sofa"], num_inference_steps=2, guidance_scale=0.0, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(3), **SIZE).images
    assert np.array_equal(direct, _img(pipe, tmap)) and _hooks(pipe) == 0
