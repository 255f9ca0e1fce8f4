"""The miniature's distilled 4-step student in a real ComfyUI 0.3.75 server: the stock KSampler at
4 steps / CFG 1 / euler / simple reproduces the diffusers student, and the few-step template
(workflows/act_few_step.json) runs on it and steers it.

The student checkpoint is written by ``act_core.diffusion.miniworld.single_file(..., student=4)``;
``act_miniworld_sdxl`` (test-only pack) lets ComfyUI build the miniature's odd sizes.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import comfy_harness as srv
import ui2api

pytestmark = pytest.mark.comfy

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CKPT = "miniworld_student_4step.safetensors"
TEMPLATE = "act_few_step.json"
PROMPT = "a small red circle and a large blue square on a plain background"


def _student_available():
    from act_core.diffusion import miniworld as MW

    return MW.available(student=4)


@pytest.fixture(scope="module")
def student_server(comfy_env, tmp_path_factory):
    if not _student_available():
        pytest.skip("the 4-step student is not built (bench/train_miniworld.py --stages distill4)")
    from act_core.diffusion import miniworld as MW

    base = tmp_path_factory.mktemp("student_base")
    srv.install_pack(base / "custom_nodes")
    shutil.copytree(HERE / "act_miniworld_sdxl", base / "custom_nodes" / "act_miniworld_sdxl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    MW.single_file(base / "models" / "checkpoints" / CKPT, student=4)
    s = srv.ComfyServer(comfy_env["dir"], base)
    t0 = time.time()
    s.start()
    print(f"ComfyUI server (miniature student) answered after {time.time() - t0:.1f} s")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def info(student_server):
    return student_server.get("/object_info")


def _saved(server, entry) -> np.ndarray:
    from PIL import Image

    imgs = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(imgs) == 1, entry["outputs"]
    img = imgs[0]
    return np.asarray(Image.open(server.base / img["type"] / img.get("subfolder", "") / img["filename"]).convert("RGB"))


def _diffusers_student(prompts, seed=0, tmap=None, strength=0.0):
    import torch

    from act_core.diffusion import miniworld as MW
    from act_core.diffusion.pipeline import generate

    torch.set_num_threads(1)
    pipe = MW.load(student=4)
    out = generate(pipe, prompts, tmap, strength=strength, seed=seed, output_type="np")
    return (np.clip(np.asarray(out), 0, 1) * 255).astype(np.uint8)  # truncated, as ComfyUI's SaveImage does


def test_ksampler_4_steps_cfg_1_reproduces_the_diffusers_student(student_server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "latent_image": ["4", 0], "seed": 0, "steps": 4, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "student"}},
    }
    entry = student_server.run(prompt, timeout=120)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    comfy_img = _saved(student_server, entry)
    ref = _diffusers_student([PROMPT])[0]
    assert comfy_img.shape == ref.shape == (32, 32, 3)
    diff = np.abs(comfy_img.astype(int) - ref.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.25, (diff.max(), diff.mean())


def _template(info, strength, pairs, prompt=PROMPT):
    ui = json.loads((ROOT / "workflows" / TEMPLATE).read_text())
    # 128 px = a 16×16 latent (ComfyUI assumes 8× VAEs; the miniature's is 2×, its images are 32 px)
    api = ui2api.convert(ui, info, overrides={"ckpt_name": CKPT, "width": 128, "height": 128,
                                              "goal": "(my own source/target lists)",
                                              "source_prompts": "\n".join(pairs[0]),
                                              "target_prompts": "\n".join(pairs[1]), "seed": 0})
    for node in api.values():
        if node["class_type"] in ("ActApplyToClip", "ActApplyToModel"):
            node["inputs"]["strength"] = strength
        if node["class_type"] == "KSampler":
            api[node["inputs"]["positive"][0]]["inputs"]["text"] = prompt
    return ui, api


def test_the_few_step_template_runs_on_the_student_and_steers_it(student_server, info):
    from act_core.diffusion.miniworld import experiments as E
    from act_core.diffusion.miniworld import world as W
    from act_core.diffusion.miniworld.judges import Judges

    ui = json.loads((ROOT / "workflows" / TEMPLATE).read_text())
    ks = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert ks["widgets_values"][2:6] == [4, 1.0, "euler", "simple"]  # steps, cfg, sampler, scheduler
    pairs = E.style_pairs("poster", 32)
    judges = Judges.load()
    scenes = E.style_eval_scenes(3, seed=E.EVAL_SEED + 9)
    found = {}
    for strength in (0.0, 1.0):
        for scene in scenes:
            ui, api = _template(info, strength, pairs, prompt=W.caption(scene))
            entry = student_server.run(api, timeout=300, workflow=ui)
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
            found.setdefault(strength, []).append(_saved(student_server, entry))
    plain = judges.judge(np.stack(found[0.0]))["style"]
    steered = judges.judge(np.stack(found[1.0]))["style"]
    assert (plain == "poster").sum() == 0 and (steered == "poster").sum() >= 2, (plain, steered)
    # λ = 0 is the unsteered student, image for image (up to ComfyUI's float rounding)
    ref = _diffusers_student([W.caption(s) for s in scenes][:1])[0]
    assert np.abs(found[0.0][0].astype(int) - ref.astype(int)).max() <= 3
