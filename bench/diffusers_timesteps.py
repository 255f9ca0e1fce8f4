"""Does one map per denoising step help, compared with one map fitted at t = 999 (the paper's)?

On a tiny random SDXL pipeline (tests/diffusers_helpers.py; no download), a 4-step Lightning-style
schedule: fit a style map on unet_groupnorms (a) once at the noisiest step (1-step collection,
the default) and (b) once per denoising step (fit_step_maps). Then, on held-out captions and
fresh noise, generate with each and measure at every step k how far the steered SOURCE
activations are from the TARGET activations at step k (1-D Wasserstein-1 between pooled
activations, mean over units and modules; lower is better; "none" is the unsteered gap).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/diffusers_timesteps.py [--n 32] [--steps 4]

Random weights say nothing about image quality; this only checks the transport mechanics.
"""

import argparse
import os
import sys
import time

import torch

sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from act_core.diffusion import pipeline as D  # noqa: E402
from act_core.diffusion import prompts as P  # noqa: E402
from act_core.fitting import collect  # noqa: E402
from act_core.hooks import attach  # noqa: E402
from act_core.diffusion.presets import resolve_modules  # noqa: E402
from act_core.diffusion.families.sdxl import PRESETS, sdxl_canonical_names  # noqa: E402


def w1(a, b):
    n = min(len(a), len(b))
    return (a[:n].sort(0).values - b[:n].sort(0).values).abs().mean().item()


def gap(pipe, modules, src, tgt, k, steps, seed, maps=None, single=None):
    """Mean W1 at step k between (steered) source and target activations."""
    runner = D.SDXLRunner(pipe, batch_size=8, seed=seed, height=32, width=32, collect_step=k, steps=steps)
    tgt_acts, _ = collect(runner, tgt, modules)
    counter = D._StepCounter(pipe.unet)
    # every pipeline call (one per batch) starts with the text encoder: restart the step count there
    handles = [pipe.text_encoder.register_forward_pre_hook(lambda m, a: setattr(counter, "step", -1))]
    try:
        if single is not None:
            handles.append(attach(runner.model, single, 1.0))
        if maps is not None:
            for j, m in maps.items():
                handles.append(attach(runner.model, m, 1.0, gate=lambda n, x, j=j: counter.step == j))
        src_acts, _ = collect(runner, src, modules)
    finally:
        for h in handles:
            h.remove()
        counter.remove()
    return sum(w1(src_acts[n], tgt_acts[n]) for n in modules) / len(modules)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    from diffusers_helpers import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    pipe.act_defaults = {"kind": "lightning", "steps": args.steps, "guidance": 0.0}
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    modules = resolve_modules("unet_groupnorms", sdxl_canonical_names(pipe), PRESETS)
    src, tgt = P.style_pairs("watercolor", n=args.n, seed=0)
    t0 = time.perf_counter()
    single = D.fit_sdxl_map(pipe, src, tgt, "unet_groupnorms", batch_size=8, height=32, width=32)
    t1 = time.perf_counter()
    maps = D.fit_step_maps(pipe, src, tgt, "unet_groupnorms", steps=args.steps, batch_size=8, height=32, width=32)
    t2 = time.perf_counter()
    esrc, etgt = P.style_pairs("watercolor", n=args.n, seed=1, captions=P.captions("eval"))
    print(f"tiny SDXL, {len(modules)} GroupNorm modules, n={args.n}, {args.steps} steps; fit time: "
          f"single {t1 - t0:.1f} s, per-step {t2 - t1:.1f} s")
    print("| step k | none | single map (t=999) | per-step maps |")
    print("| --- | --- | --- | --- |")
    tot = [0.0, 0.0, 0.0]
    for k in range(args.steps):
        row = [gap(pipe, modules, esrc, etgt, k, args.steps, 100),
               gap(pipe, modules, esrc, etgt, k, args.steps, 100, single=single),
               gap(pipe, modules, esrc, etgt, k, args.steps, 100, maps=maps)]
        tot = [a + b for a, b in zip(tot, row)]
        print(f"| {k} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    print("| mean | " + " | ".join(f"{v / args.steps:.4f}" for v in tot) + " |")


if __name__ == "__main__":
    main()
