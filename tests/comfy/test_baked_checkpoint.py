"""`act-steer bake` output in the real ComfyUI: Load Checkpoint reads the baked single file and
samples the images that the pack's Apply nodes give on the original checkpoint.

The source is a diffusers pipeline of the test pack's TinySDXL shapes (tests/bake_helpers.py),
written as a single file by act_core's writer; the map is fitted on it in diffusers and baked from
its diffusers folder. The baked graph uses stock nodes only (no act_core in the sampling path).
(diffusers' own single-file loader tells SDXL's two text encoders apart by their widths, which
this model shares (32 and 32), so the diffusers side is tested on a pipeline with distinct
widths in tests/cli/test_bake_cli.py.)
"""

import json

import numpy as np
import pytest
import torch

from act_core.cli import main

pytestmark = pytest.mark.comfy

SRC, BAKED, MAP = "act_bake_src.safetensors", "act_bake_baked.safetensors", "act_bake_map.safetensors"


@pytest.fixture(scope="module")
def baked(comfy_server, tmp_path_factory):
    from bake_helpers import comfy_tiny_sdxl
    from act_core.diffusion import pipeline as D
    from act_core.diffusion.single_file import save_single_file

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("bake_comfy")
    ckpts = comfy_server.base / "models" / "checkpoints"
    maps = comfy_server.base / "models" / "act_maps"
    maps.mkdir(parents=True, exist_ok=True)
    pipe = comfy_tiny_sdxl()
    pipe.save_pretrained(d / "config")
    save_single_file(pipe, ckpts / SRC)
    kw = dict(n=4, batch_size=4, support="all")
    tmap = D.fit_style_map(pipe, "watercolor", layers=["unet_layernorms", "text_encoder_norms"], method="linear", **kw)
    groups = D.fit_style_map(pipe, "watercolor", layers="unet_groupnorms", method="mean", **kw)
    for n in groups.modules:
        tmap.add(n, groups[n], groups.layouts[n], groups.output_index.get(n))
    tmap.save(maps / MAP)
    rc = main(["bake", "--model", str(d / "config"), "--map", str(maps / MAP),
               "--strength", "1", "--dtype", "float32", "--device", "cpu", "--out", str(ckpts / BAKED)])
    assert rc == 0
    return {"config": d / "config", "ckpt": ckpts / BAKED, "map": tmap}


def graph(ckpt, steered, prefix):
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    model, clip = ["1", 0], ["1", 1]
    if steered:
        g["10"] = {"class_type": "ActLoadMap", "inputs": {"map_name": MAP}}
        g["11"] = {"class_type": "ActApplyToModel", "inputs": {
            "model": model, "transport_map": ["10", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
            "steer_negative": True, "per_block": ""}}  # weights act on both CFG halves
        g["12"] = {"class_type": "ActApplyToClip", "inputs": {"clip": clip, "transport_map": ["10", 0], "strength": 1.0}}
        model, clip = ["11", 0], ["12", 0]
    g["2"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": clip}}
    g["3"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}}
    g["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 7, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    g["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}}
    return g


def pixels(server, prompt):
    from PIL import Image

    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    img = entry["outputs"]["7"]["images"][0]
    with Image.open(server.base / img["type"] / img.get("subfolder", "") / img["filename"]) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_load_checkpoint_reads_the_baked_file_and_samples_the_steered_image(comfy_server, baked):
    plain = pixels(comfy_server, graph(SRC, False, "bake_plain"))
    steered = pixels(comfy_server, graph(SRC, True, "bake_steered"))
    got = pixels(comfy_server, graph(BAKED, False, "bake_baked"))
    changed = np.abs(steered - plain).max()
    diff = np.abs(got - steered).max()
    print(f"ComfyUI: baked vs pack hooks max |diff| = {diff} (uint8); steered vs plain {changed}")
    assert changed > 20
    assert diff <= 2
