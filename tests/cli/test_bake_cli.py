"""`act-steer bake`: a map folded into the weights, loaded back by diffusers alone (and transformers).

The baked single file is read with diffusers' own ``from_single_file`` (no act_core involved)
and must give the images of the original pipeline steered by act_core's hooks at the same λ.
"""

import numpy as np
import pytest
import torch

from act_core import count_hooks, steer
from act_core.cli import main
from act_core.diffusion import pipeline as D

from diffusers_helpers import save_single_file, tiny_sdxl_pipeline

SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import diffusers

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    d = tmp_path_factory.mktemp("bake")
    pipe = tiny_sdxl_pipeline()
    pipe.save_pretrained(d / "tiny-sdxl")
    save_single_file(pipe, d / "tiny-sdxl.safetensors")
    return d


def foldable_map(pipe, support="all"):
    """Linear-AcT on every LayerNorm (UNet transformer blocks, both text encoders) + Mean-AcT on the
    UNet GroupNorms (ω = 1: the spatial-mean shift is a constant), fitted on the pipeline."""
    kw = dict(n=4, batch_size=4, support=support, **SIZE)
    tmap = D.fit_style_map(pipe, "watercolor", layers=["unet_layernorms", "text_encoder_norms"], method="linear", **kw)
    groups = D.fit_style_map(pipe, "watercolor", layers="unet_groupnorms", method="mean", **kw)
    for n in groups.modules:
        tmap.add(n, groups[n], groups.layouts[n], groups.output_index.get(n))
    return tmap


def images(pipe, prompt="a cat on a sofa"):
    out = pipe(prompt=prompt, num_inference_steps=3, guidance_scale=4.0, output_type="np",
               generator=torch.Generator("cpu").manual_seed(3), **SIZE)
    return out.images


def test_baked_single_file_gives_the_steered_images_in_diffusers_without_act_core(files, tmp_path, capsys):
    from diffusers import StableDiffusionXLPipeline

    pipe = D.load_sdxl(files / "tiny-sdxl", kind="base", dtype="float32", device="cpu")
    tmap = foldable_map(pipe)
    assert any(n.startswith("text_encoder_2.") for n in tmap.modules) and len(tmap) > 30
    path = tmap.save(tmp_path / "m.safetensors")
    out = tmp_path / "baked.safetensors"
    rc = main(["bake", "--model", str(files / "tiny-sdxl"), "--map", str(path), "--strength", "0.8",
               "--dtype", "float32", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    plain = images(pipe)
    with steer(pipe, tmap, strength=0.8):  # the whole batch, both CFG halves: what weights do
        steered = images(pipe)
    assert count_hooks(pipe.unet) == 0
    baked = StableDiffusionXLPipeline.from_single_file(str(out), config=str(files / "tiny-sdxl"), local_files_only=True,
                                                       torch_dtype=torch.float32)
    baked.set_progress_bar_config(disable=True)
    got = images(baked)
    assert np.abs(steered - plain).max() > 0.05  # the map changes the image
    print(f"baked vs hooks: max |diff| = {np.abs(got - steered).max():.2e}, steered vs plain {np.abs(steered - plain).max():.3f}")
    assert np.abs(got - steered).max() < 2e-4, np.abs(got - steered).max()
    # the source checkpoint is untouched
    again = StableDiffusionXLPipeline.from_single_file(str(files / "tiny-sdxl.safetensors"),
                                                       config=str(files / "tiny-sdxl"), local_files_only=True)
    again.set_progress_bar_config(disable=True)
    assert np.array_equal(images(again), plain)


def test_a_map_that_does_not_fold_is_refused_and_nothing_is_written(files, tmp_path, capsys):
    pipe = D.load_sdxl(files / "tiny-sdxl", kind="base", dtype="float32", device="cpu")
    tmap = D.fit_style_map(pipe, "watercolor", n=4, layers="unet_groupnorms", method="linear", batch_size=4,
                           support="q_0_100", **SIZE)
    path = tmap.save(tmp_path / "linear_gn.safetensors")
    out = tmp_path / "baked.safetensors"
    rc = main(["bake", "--model", str(files / "tiny-sdxl"), "--map", str(path), "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot bake exactly" in err and "spatial-mean shift depends on the input" in err
    assert "note: the map's default support is q_0_100" in err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_bake_input_errors(files, tmp_path, capsys):
    pipe = D.load_sdxl(files / "tiny-sdxl", kind="base", dtype="float32", device="cpu")
    path = foldable_map(pipe).save(tmp_path / "m.safetensors")
    assert main(["bake", "--model", str(files / "tiny-sdxl"), "--map", str(path), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "must be a .safetensors single file" in capsys.readouterr().err
    assert main(["bake", "--model", str(files / "tiny-sdxl"), "--map", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bake_a_language_model_into_a_transformers_folder(tmp_path, capsys):
    """LLMs go through act_core.llm.export's complete-folder export; without it the command says so."""
    from act_core import fit_map
    from act_core.llm import export
    from act_core.llm.adapter import LMRunner, save_lm
    from lm_helpers import FRIENDLY, HOSTILE, make_model

    model, tok = make_model("llama", layers=2)
    save_lm(model, tok, tmp_path / "model")
    tmap = fit_map(LMRunner(model, tok, batch_size=4), HOSTILE, FRIENDLY, r"model\.layers\.\d+\.input_layernorm",
                   method="mean", support="all")
    path = tmap.save(tmp_path / "m.safetensors")
    out = tmp_path / "baked"
    rc = main(["bake", "--model", str(tmp_path / "model"), "--map", str(path), "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    if not hasattr(export, "save_folded_model"):
        assert rc == 2 and "needs act_core.llm.export.save_folded_model" in err and not out.exists()
        return
    assert rc == 0, err
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad(), steer(model, tmap, strength=1.0):
        want = model(input_ids=ids).logits
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3 and torch.allclose(got, want, atol=1e-4)
