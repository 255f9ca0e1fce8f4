"""Trajectory distillation of the miniature SDXL (act_core.diffusion.miniworld.distill): the sampler
arithmetic against diffusers' own Euler, resumable training, saving/loading a student UNet file."""

import numpy as np
import pytest
import torch

from act_core.diffusion import miniworld as MW
from act_core.diffusion.miniworld import distill as D
from act_core.diffusion.miniworld import model as M

pytestmark = pytest.mark.skipif(not MW.available(), reason="miniature weights not built (bench/train_miniworld.py)")

PROMPTS = ["a small red circle and a large blue square on a plain background", "a large green triangle on a striped background"]


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(1)
    return MW.load()


def test_schedules_are_trailing_and_segments_line_up():
    t4, s4 = D.schedule(4)
    assert t4.tolist() == [999.0, 749.0, 499.0, 249.0]
    assert s4[-1] == 0 and torch.all(s4[:-1] > s4[1:])
    t1, s1 = D.schedule(1)
    assert t1.tolist() == [999.0] and torch.equal(s1, s4[[0, -1]])
    tt, st = D.teacher_schedule(4, 6)
    assert len(tt) == 24 and torch.allclose(st[::6], s4)
    with pytest.raises(ValueError, match="at least 1"):
        D.schedule(0)


def _pipeline_latents(pipe, emb, pooled, x, steps, guidance):
    from diffusers import EulerDiscreteScheduler

    saved = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(saved.config, timestep_spacing="trailing")
    try:
        neg = torch.zeros_like(emb), torch.zeros_like(pooled)
        return pipe(prompt_embeds=emb, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg[0],
                    negative_pooled_prompt_embeds=neg[1], num_inference_steps=steps, guidance_scale=guidance,
                    latents=x / pipe.scheduler.init_noise_sigma, output_type="latent").images
    finally:
        pipe.scheduler = saved


@torch.no_grad()
def test_student_and_teacher_integrators_equal_diffusers_euler(teacher):
    emb, pooled = D.encode_prompts(teacher, PROMPTS)
    ref_emb, _, ref_pooled, _ = teacher.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(emb, ref_emb, atol=1e-5) and torch.allclose(pooled, ref_pooled, atol=1e-5)
    _, s = D.schedule(4)
    x = torch.randn(2, 4, M.LATENT, M.LATENT, generator=torch.Generator().manual_seed(0)) * s[0]
    # CFG-free 4-step Euler (the student's sampler)
    mine = D.student_sample(teacher.unet, x, emb, pooled, 4)
    assert len(mine) == 5
    ref = _pipeline_latents(teacher, emb, pooled, x, 4, 0.0)
    assert torch.allclose(mine[-1], ref, atol=1e-4), (mine[-1] - ref).abs().max()
    # the guided teacher over all segments = diffusers' 24-step trailing Euler with CFG 4
    y = x
    for k in range(4):
        y = D.teacher_segment(teacher.unet, y, k, emb, pooled, 4, 6, 4.0)
    ref = _pipeline_latents(teacher, emb, pooled, x, 24, 4.0)
    assert torch.allclose(y, ref, atol=1e-4), (y - ref).abs().max()


def test_training_resumes_exactly_and_lowers_the_loss(teacher, tmp_path):
    data = D.teacher_trajectories(teacher, PROMPTS * 4, student_steps=1, per_segment=2, seed=0, batch=8,
                                  log=lambda m: None)
    assert data["x"].shape == (8, 2, 4, M.LATENT, M.LATENT) and data["emb"].dtype == torch.float16
    seg = D._segments(data, None)
    before = float(D.segment_loss(teacher.unet, seg, data, torch.arange(8), 1))
    full, n = D.train_student(teacher, data, tmp_path / "a", student_steps=1, steps=6, batch=4, lr=1e-3,
                              log=lambda m: None)
    assert n == 6
    _, stopped = D.train_student(teacher, data, tmp_path / "b", student_steps=1, steps=6, batch=4, lr=1e-3,
                                 log=lambda m: None, max_minutes=0.0)  # a time limit: stops after one step
    assert stopped == 1
    resumed, _ = D.train_student(teacher, data, tmp_path / "b", student_steps=1, steps=6, batch=4, lr=1e-3,
                                 log=lambda m: None)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    after = float(D.segment_loss(full, seg, data, torch.arange(8), 1))
    assert after < before, (before, after)


def test_a_saved_student_loads_like_a_lightning_unet(teacher, tmp_path):
    from act_core.diffusion.pipeline import load_sdxl

    unet = teacher.unet
    path = D.save_student(unet, tmp_path / "student_4step_unet.safetensors", {"student_steps": 4})
    pipe = load_sdxl(MW.MODEL, unet=path, kind="lightning", dtype="float32", device="cpu")
    assert pipe.act_defaults["steps"] == 4 and pipe.act_defaults["guidance"] == 0.0
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    for (k, a), b in zip(unet.state_dict().items(), pipe.unet.state_dict().values()):
        assert torch.equal(a.half().float(), b), k
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["student_steps"] == "4"


@pytest.mark.skipif(not MW.available(student=4), reason="4-step student not built")
def test_the_shipped_student_draws_the_prompt_in_four_steps_without_cfg():
    from act_core.diffusion.miniworld import experiments as E
    from act_core.diffusion.miniworld import world as W
    from act_core.diffusion.miniworld.judges import Judges

    pipe = MW.load(student=4)
    assert pipe.act_defaults["steps"] == 4 and pipe.act_defaults["guidance"] == 0.0
    assert pipe.scheduler.config.prediction_type == "epsilon"
    scenes = E.style_eval_scenes(12, seed=E.EVAL_SEED + 7)
    styled = [W.with_style(s, "poster") for s in scenes]
    j = Judges.load().judge(E.generate_np(pipe, [W.caption(s) for s in scenes + styled], seed=0))
    plain, poster = {k: v[:12] for k, v in j.items()}, {k: v[12:] for k, v in j.items()}
    assert E.score_style(plain, scenes, "none")["colors"] > 0.6
    assert (poster["style"] == "poster").mean() > 0.7 > (plain["style"] == "poster").mean()


@pytest.mark.skipif(not MW.available(student=1), reason="1-step student not built")
def test_the_shipped_one_step_student_predicts_epsilon():
    pipe = MW.load(student=1)
    assert pipe.act_defaults["steps"] == 1 and pipe.scheduler.config.prediction_type == "epsilon"
    img = np.asarray(pipe(prompt="a large red circle on a plain background", num_inference_steps=1, guidance_scale=0.0,
                          output_type="np", generator=torch.Generator().manual_seed(0)).images[0])
    assert img.shape == (32, 32, 3) and img.std() > 0.05
