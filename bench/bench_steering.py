"""Steering overhead, fused steering, and causal-fit cost on an SDXL-structured UNet.

Prints markdown tables of ratios measured side by side in one run (variants interleaved
per repeat, min / median / max over repeats). Usage::

    python bench/bench_steering.py                       # quarter width, 32x32 latents, CPU
    python bench/bench_steering.py --width full --latent 128 --device cuda --dtype float16

1. one denoising step with a map on every UNet normalization module (the paper's default
   layer set) vs the same step unsteered: hooks with the q_0_100 band; the unbounded
   support with the default run-time fusion of plain LayerNorm/GroupNorm maps
   (act_core.fused_norms) and with hooks only; a per-pixel copy of the map fused at run
   time and baked into the weights;
2. one-pass causal fitting vs the reference procedure (prefix re-run per module): wall time
   ratio and the largest difference between the two maps;
3. (``compiled``) the q_0_100 band eager vs compiled (act_core.compiled, ``steer(...,
   compile=True)``): on the eager model (each norm fused with its band and map), and with the
   whole UNet compiled by ``torch.compile``, against the equally compiled unsteered UNet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from act_core import TransportMap, fit_map, steer  # noqa: E402
from act_core.bake import bake  # noqa: E402
from unet_bench_models import UNetRunner, build_unet  # noqa: E402

NORMS = r".*norm.*"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    """Seconds of fn() alone."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def stats(xs):
    return min(xs), statistics.median(xs), max(xs)


def per_pixel_copy(tmap: TransportMap) -> TransportMap:
    out = TransportMap(dict(tmap.maps), dict(tmap.layouts), dict(tmap.output_index), dict(tmap.meta))
    for n, lay in out.layouts.items():
        if lay == "spatial_mean":
            out.layouts[n] = "per_pixel"
    return out


def overhead(args, device, dtype):
    unet = build_unet(args.width, device, dtype)
    runner = UNetRunner(unet, latent=args.latent, batch_size=args.fit_batch, device=device, dtype=dtype)
    src = [(i, 0.0) for i in range(args.fit_prompts)]
    tgt = [(1000 + i, 0.5) for i in range(args.fit_prompts)]
    t0 = time.perf_counter()
    tmap = fit_map(runner, src, tgt, NORMS, method="linear", procedure="simultaneous")
    fit_s = time.perf_counter() - t0
    n_mod, n_units = len(tmap), sum(t.units for t in tmap.maps.values())
    fused_map = per_pixel_copy(tmap)
    inputs = runner.inputs(list(range(args.batch)), 0.0)  # drawn once, outside the timed steps
    step = lambda: runner.step_on(inputs)  # noqa: E731
    step()  # warm-up
    # each variant: a context set up outside the timed region (attach / bake), then one step
    variants = {
        "unsteered": lambda: contextlib.nullcontext(),
        "hooks q_0_100": lambda: steer(unet, tmap, 1.0, support="q_0_100"),
        "steer all (default: LayerNorms fused at run time, spatial-mean GroupNorms hooked)":
            lambda: steer(unet, tmap, 1.0, support="all"),
        "hooks all (fuse=False)": lambda: steer(unet, tmap, 1.0, support="all", fuse=False),
        "hooks all (fuse=False, no in-place)": lambda: steer(unet, tmap, 1.0, support="all", fuse=False, inplace=False),
        "per-pixel map, steer all (every norm fused at run time)": lambda: steer(unet, fused_map, 1.0, support="all"),
        "per-pixel map, baked into the weights": lambda: bake(unet, fused_map, 1.0, support="all"),
    }
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, make in variants.items():
            with make():
                times[k].append(timed(step, device))
    with steer(unet, fused_map, 1.0, support="all", fuse=False):
        hooked = step()
    with steer(unet, fused_map, 1.0, support="all") as handle:
        runtime = step()
        n_fused = len(handle.fused)
    with bake(unet, fused_map, 1.0, support="all"):
        baked = step()
    err = (hooked.float() - baked.float()).abs().max().item()
    err_rt = (hooked.float() - runtime.float()).abs().max().item()
    with steer(unet, tmap, 1.0, support="all") as handle:
        n_default_fused = len(handle.fused)
    base = statistics.median(times["unsteered"])
    print(f"\n### Steering overhead: {args.width}-width SDXL UNet, {args.latent}x{args.latent} latents, batch {args.batch}, "
          f"{device} {args.dtype}, {torch.get_num_threads()} threads\n")
    print(f"map: {n_mod} normalization modules, {n_units} units; fitted on {args.fit_prompts}+{args.fit_prompts} "
          f"inputs in {fit_s:.1f} s (simultaneous)\n")
    print("| variant | min s | median s | max s | median ratio vs unsteered |\n|---|---|---|---|---|")
    for k, xs in times.items():
        lo, med, hi = stats(xs)
        print(f"| {k} | {lo:.4f} | {med:.4f} | {hi:.4f} | {med / base:.3f}x |")
    print(f"\nmodules fused at run time: {n_default_fused} of {n_mod} with the fitted map, {n_fused} of {n_mod} with "
          "its per-pixel copy")
    print(f"per-pixel map, unbounded support, output vs hooks: baked max |diff| = {err:.2e}, "
          f"fused at run time max |diff| = {err_rt:.2e} (outputs up to {hooked.float().abs().max().item():.3g}, {dtype}"
          + ("" if dtype == torch.float32 else "; low-precision rounding differs between the two orders of operations "
             f"and compounds over {n_mod} layers") + ")")


def causal(args, device, dtype):
    unet = build_unet(args.width, device, dtype)
    runner = UNetRunner(unet, latent=args.causal_latent, batch_size=args.causal_prompts, device=device, dtype=dtype)
    src = [(i, 0.0) for i in range(args.causal_prompts)]
    tgt = [(1000 + i, 0.5) for i in range(args.causal_prompts)]
    t0 = time.perf_counter()
    fast = fit_map(runner, src, tgt, args.causal_pattern, procedure="causal")
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = fit_map(runner, src, tgt, args.causal_pattern, procedure="causal_reference")
    t_ref = time.perf_counter() - t0
    assert fast.modules == ref.modules, "the two procedures fitted modules in different orders"
    d_omega = max((fast[n].omega - ref[n].omega).abs().max().item() for n in fast.modules)
    d_beta = max((fast[n].beta - ref[n].beta).abs().max().item() for n in fast.modules)
    r_omega = max(((fast[n].omega - ref[n].omega).abs() / ref[n].omega.abs().clamp(min=1)).max().item()
                  for n in fast.modules)
    print(f"\n### Causal fit: {args.width}-width UNet, {len(fast)} modules, {args.causal_prompts}+{args.causal_prompts} inputs, "
          f"{args.causal_latent}x{args.causal_latent} latents, {device}\n")
    print("| procedure | wall s | ratio |\n|---|---|---|")
    print(f"| reference (prefix re-run per module) | {t_ref:.2f} | 1.000 |")
    print(f"| one pass (ours) | {t_fast:.2f} | {t_fast / t_ref:.4f} |")
    print(f"\nmaps agree: max |Δω| = {d_omega:.2e} (relative to max(|ω|, 1): {r_omega:.2e}), max |Δβ| = {d_beta:.2e}")


def compiled_overhead(args, device, dtype):
    unet = build_unet(args.width, device, dtype)
    runner = UNetRunner(unet, latent=args.latent, batch_size=args.fit_batch, device=device, dtype=dtype)
    src = [(i, 0.0) for i in range(args.fit_prompts)]
    tgt = [(1000 + i, 0.5) for i in range(args.fit_prompts)]
    tmap = fit_map(runner, src, tgt, NORMS, method="linear", procedure="simultaneous")
    # held-out inputs: a fitted source sample sits exactly on its q_0_100 band's edges
    seeds = list(range(50_000, 50_000 + args.batch))
    lat, ctx, cond = runner.inputs(seeds, 0.25)
    t = torch.full((lat.shape[0],), 999, device=device)
    whole = torch.compile(unet)

    def step(model, rows=None):
        with torch.no_grad():
            if rows is None:
                return model(lat, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample
            a, b, c = runner.inputs(seeds + list(range(60_000, 60_000 + rows - len(seeds))), 0.25)
            return model(a, torch.full((a.shape[0],), 999, device=device), encoder_hidden_states=b,
                         added_cond_kwargs=c).sample[: len(seeds)]

    band = args.band
    variants = {
        "unsteered, eager": (unet, lambda: contextlib.nullcontext()),
        f"hooks {band}, eager (default kernel)": (unet, lambda: steer(unet, tmap, 1.0, support=band)),
        f"compile=True {band}, eager model (each norm + band + map one compiled kernel)":
            (unet, lambda: steer(unet, tmap, 1.0, support=band, compile=True)),
        "unsteered, whole UNet compiled": (whole, lambda: contextlib.nullcontext()),
        f"compile=True {band}, whole UNet compiled": (whole, lambda: steer(unet, tmap, 1.0, support=band, compile=True)),
    }
    keys = list(variants)
    base_of = {k: keys[3] if "whole" in k else keys[0] for k in keys}
    t0 = time.perf_counter()
    outs = {}
    for k, (model, make) in variants.items():  # warm-up: compiles every graph once
        with make():
            step(model)
            outs[k] = step(model).float()
    warm = time.perf_counter() - t0
    with steer(unet, tmap, 1.0, support=band):  # the same eager kernel, another batch composition
        other_batch = step(unet, rows=len(seeds) + 1).float()
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, (model, make) in variants.items():
            with make():
                times[k].append(timed(lambda: step(model), device))
    print(f"\n### Banded steering eager vs compiled: {args.width}-width SDXL UNet, {args.latent}x{args.latent} latents, "
          f"batch {args.batch}, {device} {args.dtype}, {torch.get_num_threads()} threads, support {band}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"map: {len(tmap)} normalization modules; warm-up (all compilations) {warm:.0f} s; {args.repeats} interleaved "
          "repeats; paired ratio = median over repeats of (variant / its baseline in the same repeat)\n")
    print("| variant | min s | median s | max s | median ratio | paired ratio | baseline |\n|---|---|---|---|---|---|---|")
    for k in keys:
        base = base_of[k]
        lo, med, hi = stats(times[k])
        paired = statistics.median(a / b for a, b in zip(times[k], times[base]))
        print(f"| {k} | {lo:.4f} | {med:.4f} | {hi:.4f} | {med / statistics.median(times[base]):.3f}x | {paired:.3f}x | "
              f"{base} |")
    ref = outs[keys[1]]
    print(f"\noutputs up to {ref.abs().max().item():.3g}; vs eager hooks, max / mean |diff|: "
          + "; ".join(f"{k.split(',')[1].strip()}: {(outs[k] - ref).abs().max().item():.2e} / "
                      f"{(outs[k] - ref).abs().mean().item():.1e}" for k in (keys[2], keys[4]))
          + f"; the eager kernel itself with one more row in the batch: {(other_batch - ref).abs().max().item():.2e} / "
            f"{(other_batch - ref).abs().mean().item():.1e} (a band test flips on values within rounding of its edges)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", default="quarter", choices=["quarter", "half", "full"])
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=1, help="batch of the timed step (1 = no CFG, as Lightning/Turbo)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--fit-prompts", type=int, default=8)
    p.add_argument("--fit-batch", type=int, default=4)
    p.add_argument("--causal-prompts", type=int, default=4)
    p.add_argument("--causal-latent", type=int, default=16)
    p.add_argument("--causal-pattern", default=NORMS, help="modules of the causal comparison (default: all norms)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--band", default="q_0_100", help="support of the eager-vs-compiled comparison")
    p.add_argument("--skip", nargs="*", default=[], choices=["overhead", "causal", "compiled"])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, loadavg {os.getloadavg()[0]:.2f}")
    if "overhead" not in args.skip:
        overhead(args, args.device, dtype)
    if "causal" not in args.skip:
        causal(args, args.device, dtype)
    if "compiled" not in args.skip:
        compiled_overhead(args, args.device, dtype)


if __name__ == "__main__":
    main()
