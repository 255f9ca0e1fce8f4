"""CLIP evaluation (tiny random CLIP saved to a folder) and the image CLI end to end."""

import json

import numpy as np
import pytest
import torch

from act_core.diffusion import evaluate as E
from act_core.cli import main

from diffusers_helpers import build_tiny_clip, tiny_sdxl_pipeline


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    import diffusers

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    model, proc, tok = build_tiny_clip()
    model.save_pretrained(d)
    proc.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl-lightning"
    tiny_sdxl_pipeline().save_pretrained(d)
    return d


def _images(n, seed):
    from PIL import Image

    g = np.random.default_rng(seed)
    return [Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_scores_match_a_direct_computation(clip_dir):
    ev = E.CLIPEvaluator.from_pretrained(clip_dir, device="cpu")
    imgs = _images(3, 0)
    zs = ev.zero_shot(imgs, "a watercolor")
    # independent path: CLIPModel.forward logits are logit_scale * cosine
    px = ev.processor(images=imgs, return_tensors="pt").pixel_values
    enc = ev.tokenizer([E.NEUTRAL, "A picture of a watercolor."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = ev.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=px).logits_per_image
    cos = logits / ev.model.logit_scale.exp()
    assert torch.allclose(zs["raw"], cos.softmax(-1)[:, 1], atol=1e-5)
    assert torch.allclose(zs["scaled"], logits.softmax(-1)[:, 1], atol=1e-5)
    sim = ev.prompt_similarity(imgs, ["a", "b", "c"])
    assert sim.shape == (3,) and float(sim.abs().max()) <= 1.0 + 1e-6
    rows = E.evaluate_images(ev, {1.0: imgs, 0.0: imgs[::-1]}, ["a cat"] * 3, "a watercolor")
    assert [r["strength"] for r in rows] == [0.0, 1.0]
    assert rows[0]["zero_shot"] == pytest.approx(float(zs["raw"].mean()), abs=1e-6)
    assert rows[0]["presence"] == pytest.approx(float((zs["raw"] > 0.5).float().mean()))
    cat = ev.prompt_similarity(imgs, ["a cat"] * 3)
    assert rows[1]["clip_similarity"] == pytest.approx(float(cat.mean()), abs=1e-6)
    assert rows[1]["clipscore"] == pytest.approx(float((100 * cat.clamp(min=0)).mean()), abs=1e-4)
    md = E.markdown_table(rows, "a watercolor")
    assert md.count("\n|") == 4 and "CLIPScore" in md
    img = E.plot(rows)
    assert img.size == (640, 400)
    with pytest.raises(ValueError, match="one prompt per image"):
        ev.prompt_similarity(imgs, ["a"])
    with pytest.raises(FileNotFoundError, match="CLIP folder not found"):
        E.CLIPEvaluator.from_pretrained(clip_dir / "missing")


def test_best_strength():
    rows = [dict(strength=0.0, presence=0.1, zero_shot=0.5, clip_similarity=0.30),
            dict(strength=0.5, presence=0.6, zero_shot=0.52, clip_similarity=0.27),
            dict(strength=1.0, presence=0.9, zero_shot=0.55, clip_similarity=0.20)]
    assert E.best_strength(rows, "style") == 0.5  # 1.0 keeps only 67% of the similarity
    assert E.best_strength(rows, "negation") == 0.0


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_fit_generate_sweep_evaluate(model_dir, clip_dir, tmp_path, capsys):
    m = str(model_dir)
    rc, out, err = _run(capsys, "fit-style", "--model", m, "--style", "watercolor", "-n", "8", "--size", "32",
                        "--device", "cpu", "--out", str(tmp_path / "maps" / "wc.safetensors"))
    assert rc == 0, err
    assert "saved" in out and (tmp_path / "maps" / "wc.safetensors").exists()
    assert "[collect]" in err and "lightning" in err  # progress + kind guessed from the folder name
    rc, out, err = _run(capsys, "fit-negation", "--model", m, "--concept", "pink elephant", "-n", "8",
                        "--size", "32", "--device", "cpu", "--layers", "unet_groupnorms", "--procedure", "causal",
                        "--out", str(tmp_path / "neg.safetensors"))
    assert rc == 0, err
    rc, out, err = _run(capsys, "inspect", str(tmp_path / "neg.safetensors"))
    assert "causal" in out and "sdxl" in out

    common = ["--model", m, "--size", "32", "--device", "cpu", "--seed", "2"]
    for lam in ("0", "1"):
        rc, _, err = _run(capsys, "generate", *common, "--map", str(tmp_path / "maps" / "wc.safetensors"),
                          "--prompt", "a red bus", "--strength", lam, "--out", str(tmp_path / f"bus{lam}.png"))
        assert rc == 0, err
    rc, _, err = _run(capsys, "generate", *common, "--prompt", "a red bus", "--out", str(tmp_path / "plain.png"))
    from PIL import Image

    from act_core.diffusion.images import read_image_settings

    a, b, c = (np.asarray(Image.open(tmp_path / f)) for f in ("plain.png", "bus0.png", "bus1.png"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert read_image_settings(tmp_path / "bus1.png")["strength"] == 1.0

    rc, out, err = _run(capsys, "sweep", *common, "--map", str(tmp_path / "neg.safetensors"), "-n", "2",
                        "--strengths", "0:1:3", "--out", str(tmp_path / "grid.png"))
    assert rc == 0, err
    s = read_image_settings(tmp_path / "grid.png")
    assert s["strengths"] == [0.0, 0.5, 1.0] and all("pink elephant" in p for p in s["prompts"])

    rc, out, err = _run(capsys, "evaluate", *common, "--map", str(tmp_path / "maps" / "wc.safetensors"),
                        "--clip", str(clip_dir), "-n", "2", "--strengths", "0,1", "--out", str(tmp_path / "ev"))
    assert rc == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["condition"] == "watercolor" and [r["strength"] for r in res["rows"]] == [0.0, 1.0]
    assert (tmp_path / "ev" / "plot.png").exists() and "| λ |" in (tmp_path / "ev" / "results.md").read_text()
    assert len(list((tmp_path / "ev").glob("l*.png"))) == 4


def test_cli_errors(model_dir, tmp_path, capsys):
    rc, _, err = _run(capsys, "fit-style", "--model", str(tmp_path / "nope"), "--style", "anime",
                      "--out", str(tmp_path / "a.safetensors"))
    assert rc == 2 and "model path not found" in err
    rc, _, err = _run(capsys, "fit-style", "--model", str(model_dir), "--style", "watercolour",
                      "--out", str(tmp_path / "a.safetensors"))
    assert rc == 2 and "Did you mean watercolor" in err
    (tmp_path / "empty.txt").write_text("\n\n")
    rc, _, err = _run(capsys, "fit-style", "--model", str(model_dir), "--style", "anime", "--captions",
                      str(tmp_path / "empty.txt"), "--out", str(tmp_path / "a.safetensors"))
    assert rc == 2 and "contains no prompts" in err
    rc, _, err = _run(capsys, "fit-negation", "--model", str(model_dir), "--concept", "gorilla",
                      "--out", str(tmp_path / "a.map"))
    assert rc == 2 and ".safetensors" in err
    rc, _, err = _run(capsys, "sweep", "--model", str(model_dir), "--map", "x.safetensors", "--strengths", "a:b",
                      "--out", str(tmp_path / "g.png"))
    assert rc == 2 and "bad --strengths" in err
    rc, _, err = _run(capsys, "generate", "--model", str(model_dir), "--prompt", " ", "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "empty --prompt" in err
    rc, out, _ = _run(capsys, "fit-style", "--list")
    assert rc == 0 and "watercolor" in out and "pixel_art" in out
    rc, out, _ = _run(capsys, "fit-negation", "--model", "x", "--list-presets")
    assert rc == 0 and "unet_norms" in out
    rc, _, err = _run(capsys, "generate", "--prompt", "a cat", "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "--model is required" in err
    assert not (tmp_path / "a.safetensors").exists()
