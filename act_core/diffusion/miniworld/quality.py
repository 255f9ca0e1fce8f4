"""Unsteered quality of the teacher and its distilled students, by the same judges.

For every sampler configuration: the judged rates on held-out captions prompted in each of the
five styles (style recognised, every prompted shape / colour found, background right, and
``content`` = shapes and colours both), averaged over seeds; and, for the few-step ones, how
far their clean latent lands from the guided teacher's (24-step trailing Euler, CFG 4, same
starting noise) on held-out distillation prompts (mean squared error per latent element; the
latents have unit variance).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import numpy as np

from . import experiments as E
from . import world as W

N_SCENES = 64
SEEDS = (0, 1, 2)
QUALITY_SEED = E.EVAL_SEED + 1


def configs() -> Dict[str, dict]:
    """name -> how to load and sample it."""
    return {
        "teacher, 20 steps, CFG 4": {"student": None, "gen": {}},
        "teacher, 4 steps (trailing), CFG 4": {"student": None, "gen": {"steps": 4, "guidance": 4.0}, "trailing": True},
        "teacher, 4 steps (trailing), no CFG": {"student": None, "gen": {"steps": 4, "guidance": 0.0}, "trailing": True},
        "student, 4 steps, no CFG": {"student": 4, "gen": {}},
        "student, 1 step, no CFG": {"student": 1, "gen": {}},
    }


def _pipe(cfg):
    from diffusers import EulerDiscreteScheduler

    from . import load

    p = load(student=cfg["student"])
    if cfg.get("trailing"):
        p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config, timestep_spacing="trailing")
    return p


def judged_rates(pipe, judges, n: int = N_SCENES, seeds=SEEDS, **gen) -> Dict[str, dict]:
    """Per prompted style: rates of recognised style, shapes, colours, background and content."""
    scenes = E.style_eval_scenes(n, seed=QUALITY_SEED)
    out = {}
    for st in W.STYLES:
        sc = [W.with_style(s, st) for s in scenes]
        acc: Dict[str, list] = {k: [] for k in ("presence", "shapes", "colors", "content", "background")}
        for seed in seeds:
            j = judges.judge(E.generate_np(pipe, [W.caption(s) for s in sc], seed=seed, **gen))
            r = E.score_style(j, sc, st)
            for k in ("presence", "shapes", "colors", "content"):
                acc[k].append(r[k])
            acc["background"].append(float((j["background"] == [s.background for s in sc]).mean()))
        out[st] = {k: float(np.mean(v)) for k, v in acc.items()}
    return out


def measure_all(judges, log: Callable[[str], None] = print, done: Optional[dict] = None, n_latent: int = 128,
                n: int = N_SCENES, seeds=SEEDS) -> dict:
    """``{config: {"rates": …, "seconds_per_image": …, "latent_mse": …, "n": …, "seeds": …}}`` (``done``
    entries are kept); ``n`` captions per style × ``seeds``; ``n_latent`` prompts for the latent error."""
    from . import STUDENTS, load
    from . import distill as D

    out = dict(done or {})
    teacher = None
    val = None
    for name, cfg in configs().items():
        if name in out and out[name].get("n") == n and out[name].get("seeds") == list(seeds):
            continue
        if cfg["student"] is not None and not STUDENTS[cfg["student"]].exists():
            log(f"[quality] {name}: no weights, skipped")
            continue
        pipe = _pipe(cfg)
        t0 = time.time()
        rates = judged_rates(pipe, judges, n=n, seeds=seeds, **cfg["gen"])
        sec = (time.time() - t0) / (len(W.STYLES) * n * len(seeds))
        row = {"rates": rates, "seconds_per_image": round(sec, 4), "n": n, "seeds": list(seeds), "n_latent": n_latent}
        steps = cfg["gen"].get("steps", pipe.act_defaults["steps"])
        if steps <= 4:
            if val is None:
                teacher = teacher or load()
                val = D.teacher_trajectories(teacher, D.distill_prompts(n_latent, seed=D.PROMPT_SEED + 1),
                                             student_steps=4, seed=1, log=lambda m: None)
            g = cfg["gen"].get("guidance", 0.0)
            x0, emb, pooled = val["x"][:, 0], val["emb"].float(), val["pooled"]
            if g > 1:
                final = _guided_euler(pipe.unet, x0, emb, pooled, steps, g)
            else:
                final = D.student_sample(pipe.unet, x0, emb, pooled, steps)[-1]
            row["latent_mse"] = float(((final - val["x"][:, -1]) ** 2).mean())
        out[name] = row
        log(f"[quality] {name}: " + ", ".join(f"{st} {r['presence']:.2f}/{r['content']:.2f}" for st, r in rates.items())
            + f"; {sec * 1000:.0f} ms/image" + (f"; latent MSE {row['latent_mse']:.3f}" if "latent_mse" in row else ""))
    return out


def _guided_euler(unet, x, emb, pooled, steps, guidance):
    import torch

    from . import distill as D

    ts, ss = D.schedule(steps)
    with torch.no_grad():
        for k in range(steps):
            x = x + (ss[k + 1] - ss[k]) * D.unet_eps(unet, x, float(ss[k]), float(ts[k]), emb, pooled, guidance)
    return x


def sample_grid(path, n: int = 6, seed: int = 0):
    """A labelled grid: rows = held-out captions (mixed styles), columns = the sampler configurations
    (same initial noise per row within a column family)."""
    from ..images import label_grid
    from . import STUDENTS
    from .experiments import upscale

    scenes = W.sample_scenes(n, seed=QUALITY_SEED + 7)
    prompts = [W.caption(s) for s in scenes]
    cols, labels = [], []
    for name, cfg in configs().items():
        if cfg["student"] is not None and not STUDENTS[cfg["student"]].exists():
            continue
        imgs = E.generate_np(_pipe(cfg), prompts, seed=seed, **cfg["gen"])
        cols.append(imgs)
        labels.append(name.replace(", no CFG", "").replace("(trailing), ", ""))
    cells = [[upscale(c[i], 3) for c in cols] for i in range(n)]
    img = label_grid(cells, labels, prompts)
    img.save(path)
    return path
