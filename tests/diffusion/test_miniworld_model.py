"""The committed miniature SDXL and its judges: loading, recognisable generations, steering direction,
single-file export, the image demo. Everything runs on the shipped weights in seconds."""

import numpy as np
import pytest
import torch

from act_core.diffusion import miniworld as MW
from act_core.diffusion.miniworld import experiments as E
from act_core.diffusion.miniworld import world as W
from act_core.diffusion.miniworld.judges import Judges

pytestmark = pytest.mark.skipif(not MW.available(), reason="miniature weights not built (bench/train_miniworld.py)")

STEPS = 12


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return MW.load()


@pytest.fixture(scope="module")
def judges():
    return Judges.load()


def test_loads_as_an_sdxl_pipeline_with_the_real_clip_tokenizer(pipe):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae_scale_factor == 2
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer_2.pad_token == "!"
    assert pipe.act_defaults["steps"] == MW.GENERATION["steps"]


def test_judges_are_accurate_on_fresh_procedural_images(judges):
    images, _, scenes = W.dataset(300, seed=99, p_none=0.2)
    j = judges.judge(images)
    assert (j["style"] == [s.style for s in scenes]).mean() > 0.95
    assert (j["background"] == [s.background for s in scenes]).mean() > 0.95
    truth = np.array([[k in s.shapes() for k in W.SHAPES] for s in scenes])
    assert (j["shapes"] == truth).mean() > 0.8
    assert judges.accuracy["heldout_raw"]["style"] > 0.95


def test_unsteered_generations_show_the_prompted_attributes(pipe, judges):
    scenes = E.style_eval_scenes(12, seed=E.EVAL_SEED + 7)
    styled = [W.with_style(s, "poster") for s in scenes]
    imgs = E.generate_np(pipe, [W.caption(s) for s in scenes + styled], seed=0, steps=STEPS)
    plain, poster = judges.judge(imgs[:12]), judges.judge(imgs[12:])
    colours = E.score_style(plain, scenes, "none")["colors"]
    assert colours > 0.5  # every prompted colour found (a random pair of colours: well under 0.2)
    assert (plain["background"] == [s.background for s in scenes]).mean() > 0.7
    assert (poster["style"] == "poster").mean() > 0.7 > (plain["style"] == "poster").mean()


def test_style_map_raises_style_and_lambda_zero_is_exact(pipe, judges):
    # text-encoder maps: the layers that carry style on this model (UNet-norm maps fitted at t = 999
    # barely move it; reports/miniworld/REPORT.md)
    tmap = E.fit(pipe, "style", "poster", layers="text_encoder_layers", n=16)
    prompts = [W.caption(s) for s in E.style_eval_scenes(6)]
    base = E.generate_np(pipe, prompts, seed=1, steps=STEPS)
    zero = E.generate_np(pipe, prompts, tmap, 0.0, seed=1, steps=STEPS)
    full = E.generate_np(pipe, prompts, tmap, 1.0, seed=1, steps=STEPS)
    assert np.array_equal(base, zero)
    p0 = judges.judge(base)["style_prob"][:, W.STYLES.index("poster")].mean()
    p1 = judges.judge(full)["style_prob"][:, W.STYLES.index("poster")].mean()
    assert p1 > p0 + 0.3, (p0, p1)


def test_negation_map_lowers_the_shape(pipe, judges):
    tmap = E.fit(pipe, "negation", "circle", n=16)
    scenes = E.negation_eval_scenes("circle", 8)
    prompts = [W.caption(s) for s in scenes]
    j0 = judges.judge(E.generate_np(pipe, prompts, seed=2, steps=STEPS))
    j1 = judges.judge(E.generate_np(pipe, prompts, tmap, 1.0, seed=2, steps=STEPS))
    k = W.SHAPES.index("circle")
    assert j1["shapes"][:, k].mean() < j0["shapes"][:, k].mean()


def test_single_file_export_loads_back_identically(pipe, tmp_path):
    from safetensors import safe_open

    from act_core.diffusion.pipeline import load_sdxl

    path = MW.single_file(tmp_path / "miniworld_sdxl.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    single = load_sdxl(path, config=MW.MODEL, dtype="float32", device="cpu")
    a = E.generate_np(pipe, ["a large red circle on a plain background"], seed=3, steps=4, guidance=4.0)
    b = E.generate_np(single, ["a large red circle on a plain background"], seed=3, steps=4, guidance=4.0)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_image_demo_writes_grids_maps_and_table(tmp_path, capsys):
    from act_core.cli.demo import run_demo
    from act_core.mapfile import TransportMap

    logs = []
    res = run_demo(out=str(tmp_path), n_fit=8, n_eval=4, strengths=(0.0, 1.0), steps=6, log=logs.append)
    assert str(tmp_path.resolve()) in logs[-1]  # says where its outputs are (and opens nothing)
    err = capsys.readouterr().err  # a progress bar with an estimate for each fit and each sweep
    for label in ("fit style poster", "sweep style poster", "fit negation circle", "sweep negation circle"):
        assert f"[{label}]" in err and "done in" in err.split(f"[{label}]")[-1].splitlines()[0], label
    for f in ("style_grid.png", "negation_grid.png", "results.md", "results.json", "style_poster.safetensors",
              "negation_circle.safetensors"):
        assert (tmp_path / f).exists(), f
    assert TransportMap.load(tmp_path / "style_poster.safetensors").meta["style"] == "poster"
    assert [r["strength"] for r in res["style"]] == [0.0, 1.0]
    assert "presence" in (tmp_path / "results.md").read_text()


def test_demo_cli_errors(capsys, tmp_path):
    from act_core.cli import main

    assert main(["demo", "--unet", "x.safetensors"]) == 2
    assert "--unet needs --model" in capsys.readouterr().err
    assert main(["demo", "--style", "cubism", "--out", str(tmp_path)]) == 2
    assert "unknown miniworld style 'cubism'" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "model path not found" in capsys.readouterr().err


def test_demo_on_a_given_sdxl_folder(tmp_path):
    """``act-steer demo --model PATH``: the real-model path, run on the tiny random test pipeline."""
    from diffusers_helpers import tiny_sdxl_pipeline

    from act_core.cli import main
    from act_core.mapfile import TransportMap

    folder = tmp_path / "tiny-sdxl"
    tiny_sdxl_pipeline().save_pretrained(folder)
    out = tmp_path / "out"
    from act_core.cli.demo import run_demo

    res = run_demo(out=str(out), model=str(folder), n_fit=4, strengths=(0.0, 1.0), steps=2, log=lambda m: None)
    assert res == {"style": [], "negation": []}
    assert TransportMap.load(out / "style_watercolor.safetensors").meta["style"] == "watercolor"
    assert TransportMap.load(out / "negation_pink_elephant.safetensors").meta["concept"] == "pink_elephant"
    assert (out / "style_grid.png").exists() and (out / "negation_grid.png").exists()
    assert main(["demo", "--model", str(folder), "--style", "no_such_style", "--out", str(out)]) == 2
