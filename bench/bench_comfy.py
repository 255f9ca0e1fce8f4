"""Steering overhead inside ComfyUI sampling (the node pack's Apply node on a real ComfyUI),
and the cost of the Fit node's collection (``--fit``).

    python bench/bench_comfy.py [--repeats 7]
    python bench/bench_comfy.py --fit [--repeats 3] [--fit-size 128] [--fit-layers "UNet norms"]

Needs the ComfyUI 0.3.75 that `tools/comfyui_setup.py` extracts (the test setup does it).
A quarter-width SDXL UNet built from ComfyUI's own classes (real SDXL block structure,
transformer depth 1/2/10, 2048-wide context, random weights) samples 2 euler steps at 32×32
latents, cfg 1 (Turbo/Lightning style: one UNet call per step), through `comfy.sample.sample`.
Variants, interleaved per repeat: the plain MODEL; the MODEL patched by the pack's
`apply_to_model` with a map on all 256 UNet normalisation modules, support `q_0_100` and `all`
(hooks); mode "fused (weight patches)" with support `all`, once with per-pixel GroupNorm maps
(every module folds) and once with the usual spatial-mean GroupNorm maps (those stay hooked).
Each repeat samples every variant twice in turn and times the second run (the model as ComfyUI
keeps it loaded between prompts); the first run after a switch also pays ComfyUI's reload, which
for weight patches means writing them into the modules (or restoring the originals): its extra
time is the last column.
The map's numbers are random (ω near 1): timing does not depend on them.

``--fit`` times the pack's Fit node (``nodes.fit.fit``: ComfyUI's own CLIP encoding and sampler,
first step only, stopped after the last hooked layer) on the same quarter-width UNet with a
small random SDXL text encoder pair (CLIP-L 768 wide and CLIP-G 1280 wide, 3 layers each, so
the 2048-wide context and 1280-wide pooled vector match the UNet): simultaneous with
batch_size 1 vs 8 on 8 + 8 prompts (all 256 UNet norms), and one-pass causal vs causal (low
memory, batch_size 8) on 4 + 4 prompts on the 101 norms of down_blocks.2 and the mid block
(``--causal-pattern``; the reference procedure re-runs the prefix per layer, and on all 256
layers it took 382 s here, so the default keeps it under ~3 min).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import comfyui_setup  # noqa: E402

load = comfyui_setup.load_file_module  # imports the pack as ComfyUI imports a custom-node folder


def setup_comfy():
    if not comfyui_setup.ready():
        raise SystemExit("ComfyUI is not set up: run `python tools/comfyui_setup.py` first")
    load("act_comfy_shim", ROOT / "tools" / "comfy_shim" / "sitecustomize.py").install()
    sys.path.insert(0, str(comfyui_setup.comfyui_dir()))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401
    import nodes  # noqa: F401


def quarter_sdxl():
    import comfy.model_patcher
    import comfy.supported_models

    unet = {"model_channels": 64, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10],
            "context_dim": 2048, "adm_in_channels": 2816, "use_temporal_attention": False, "in_channels": 4,
            "out_channels": 4, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
            "num_classes": "sequential", "use_spatial_transformer": True, "legacy": False, "image_size": 32,
            "use_checkpoint": False, "use_temporal_resblock": False, "num_head_channels": 64, "num_heads": -1}
    config = comfy.supported_models.SDXL(unet)
    base = config.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def random_map(model):
    from act_core import fit_transport
    from act_core.mapfile import TransportMap
    from act_core.diffusion.families.sdxl import PRESETS
    from act_core.diffusion.presets import resolve_preset
    from act_core.diffusion.families.sdxl import canonical_names

    mods = dict(model.model.named_modules())  # names relative to MODEL.model: diffusion_model.*
    canon = canonical_names(n for n in mods if n)  # {canonical: comfy name}
    chosen = resolve_preset("unet_norms", list(canon), PRESETS)
    g = torch.Generator().manual_seed(1)
    tmap = TransportMap(meta={"architecture": "sdxl", "method": "linear", "pooling": "mean"})
    for c in chosen:
        m = mods[canon[c]]
        d = getattr(m, "num_channels", None) or m.normalized_shape[-1]
        t = fit_transport(torch.randn(32, d, generator=g), torch.randn(32, d, generator=g) * 1.1 + 0.1)
        tmap.add(c, t, "spatial_mean" if isinstance(m, torch.nn.GroupNorm) else "tokens")
    return tmap


def with_support(tmap, support, per_pixel=False):
    """A copy with fresh UnitTransports of default support ``support`` (GroupNorm maps per-pixel if asked)."""
    from act_core.mapfile import TransportMap
    from act_core.transport import UnitTransport

    out = TransportMap(meta=dict(tmap.meta, default_support=support))
    for n, t in tmap.maps.items():
        layout = "per_pixel" if per_pixel and tmap.layouts[n] == "spatial_mean" else tmap.layouts[n]
        out.add(n, UnitTransport(t.omega, t.beta, t.bands, t.flags, t.method, support), layout, tmap.output_index[n])
    return out


def small_sdxl_clip():
    """A comfy.sd.CLIP with SDXL's tokenizers and encoder widths (768 + 1280 = 2048 context,
    1280 pooled) but 3 layers per encoder (ComfyUI reads the penultimate), seeded random weights."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    base = {"intermediate_size": 1024, "num_hidden_layers": 3}
    l_cfg = dict(base, hidden_size=768, num_attention_heads=12, projection_dim=768)
    g_cfg = dict(base, hidden_size=1280, num_attention_heads=20, projection_dim=1280)

    class SmallSDXLClip(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype,
                             model_options=dict(model_options, clip_l_model_config=l_cfg, clip_g_model_config=g_cfg))

    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, SmallSDXLClip))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return clip


def bench_fit(args):
    """Time the Fit node's collection variants; print a markdown table of min/median/max and ratios."""
    from act_steering_pack.nodes import fit as fit_node
    from act_steering_pack.nodes import prompts

    model, clip = quarter_sdxl(), small_sdxl_clip()
    size = args.fit_size
    pattern = args.fit_pattern

    def run(pairs, procedure, batch_size, pattern=pattern):
        layers = "custom pattern" if pattern else args.fit_layers
        return fit_node.fit(model, clip, pairs, "Linear-AcT", layers, pattern, "method default", procedure, 0,
                            size, size, batch_size=batch_size)

    sim_pairs = prompts.build_pairs("style: watercolor", 8, 0)
    cau_pairs = prompts.build_pairs("style: watercolor", 4, 0)
    cp = args.causal_pattern
    variants = [  # (group, label, pairs, procedure, batch_size, repeats, pattern)
        ("simultaneous, 8 + 8 prompts", "batch_size 1", sim_pairs, "simultaneous", 1, args.repeats, pattern),
        ("simultaneous, 8 + 8 prompts", "batch_size 8", sim_pairs, "simultaneous", 8, args.repeats, pattern),
        ("causal, 4 + 4 prompts", "causal (low memory), batch_size 8", cau_pairs, "causal (low memory)", 8,
         args.reference_repeats, cp),
        ("causal, 4 + 4 prompts", "causal (one pass, 8 prompts in one batch)", cau_pairs, "causal", 8, args.repeats, cp),
    ]
    run(cau_pairs, "simultaneous", 8)  # warm-up (allocator, ComfyUI model load)
    times, maps = {}, {}
    for _, label, pairs, procedure, bs, repeats, pat in variants:
        times[label] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            maps[label] = run(pairs, procedure, bs, pat)
            times[label].append(time.perf_counter() - t0)
            print(f"  {label}: {times[label][-1]:.2f} s", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loadavg {os.getloadavg()[0]:.2f}\n")
    print(f"### ComfyUI Fit node: quarter-width SDXL UNet + 3-layer SDXL-width CLIPs (ComfyUI classes), "
          f"{size}x{size} px ({size // 8}x{size // 8} latent), first step, cfg 1\n")
    print("| group | layers | variant | runs | min s | median s | max s | median speed-up |\n|---|---|---|---|---|---|---|---|")
    for group in dict.fromkeys(g for g, *_ in variants):
        labels = [label for g, label, *_ in variants if g == group]
        base = statistics.median(times[labels[0]])
        for label in labels:
            xs = times[label]
            print(f"| {group} | {len(maps[label])} | {label} | {len(xs)} | {min(xs):.2f} | {statistics.median(xs):.2f} | {max(xs):.2f} | "
                  f"{base / statistics.median(xs):.2f}x |")
    # the variants compared fit the same maps (as functions on the source data)
    for a, b in (("batch_size 1", "batch_size 8"),
                 ("causal (low memory), batch_size 8", "causal (one pass, 8 prompts in one batch)")):
        worst = 0.0
        for n, ta in maps[a].maps.items():
            pts = ta.bands.reshape(-1, ta.units)
            d = ta.apply(pts, support="all", layout="tokens") - maps[b][n].apply(pts, support="all", layout="tokens")
            worst = max(worst, float(d.abs().max()))
        print(f"\n{a} vs {b}: max |T_a(x) - T_b(x)| at the source quantiles {worst:.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=256, help="sampled image size in pixels (latent = size/8)")
    p.add_argument("--fit", action="store_true", help="time the Fit node's collection instead of steered sampling")
    p.add_argument("--fit-size", type=int, default=128, help="collection image size in pixels (latent = size/8)")
    p.add_argument("--fit-layers", default="UNet norms", help="Fit node layers preset")
    p.add_argument("--fit-pattern", default="", help="custom pattern instead of the preset")
    p.add_argument("--causal-pattern", default=r"unet\.(down_blocks\.2|mid_block)\..*norm.*",
                   help="layers of the causal comparison ('' = the --fit-layers preset)")
    p.add_argument("--reference-repeats", type=int, default=1, help="runs of causal (low memory), the slow one")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    setup_comfy()
    if args.fit:
        load("act_steering_pack", ROOT / "__init__.py", ROOT)
        return bench_fit(args)
    pack = load("act_steering_pack", ROOT / "__init__.py", ROOT)
    from act_steering_pack.nodes import apply as apply_node
    from act_steering_pack.nodes import comfy_compat as cc

    model = quarter_sdxl()
    tmap = random_map(model)
    g = torch.Generator().manual_seed(2)
    pos = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    neg = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    latent = cc.empty_latent(model, args.size, args.size)
    q_map, all_map, pp_map = with_support(tmap, "q_0_100"), with_support(tmap, "all"), with_support(tmap, "all", True)
    fused = apply_node.FUSED
    variants = {
        "unsteered": model,
        "steered, q_0_100": apply_node.apply_to_model(model, q_map, 1.0),
        "steered, all": apply_node.apply_to_model(model, all_map, 1.0),
        "fused mode, all, GroupNorm maps per-pixel": apply_node.apply_to_model(model, pp_map, 1.0, mode=fused),
        "fused mode, all, GroupNorm maps spatial-mean": apply_node.apply_to_model(model, all_map, 1.0, mode=fused),
    }

    def run(m):
        return cc.sample(m, pos, neg, latent, seed=0, steps=args.steps, cfg=1.0)

    outs = {k: run(m) for k, m in variants.items()}  # warm-up, and the results
    times = {k: [] for k in variants}
    switch = {k: [] for k in variants}  # extra time of the first sampling after another variant ran
    for _ in range(args.repeats):
        for k, m in variants.items():
            t0 = time.perf_counter()
            run(m)  # ComfyUI (re)loads the model here when the previous variant patched other weights
            t1 = time.perf_counter()
            run(m)
            times[k].append(time.perf_counter() - t1)
            switch[k].append((t1 - t0) - times[k][-1])
    base = statistics.median(times["unsteered"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loadavg {os.getloadavg()[0]:.2f}\n")
    print(f"### ComfyUI sampling: quarter-width SDXL UNet (ComfyUI classes), {args.steps} euler steps, {args.size // 8}x{args.size // 8} latents, "
          f"cfg 1; map on {len(tmap)} UNet normalisation modules via the Apply node\n")
    best = min(times["unsteered"])
    print("| variant | min s | median s | max s | median ratio vs unsteered | min ratio | first run after a switch: "
          "extra s |\n|---|---|---|---|---|---|---|")
    for k, xs in times.items():
        print(f"| {k} | {min(xs):.3f} | {statistics.median(xs):.3f} | {max(xs):.3f} | {statistics.median(xs) / base:.3f}x "
              f"| {min(xs) / best:.3f}x | {statistics.median(switch[k]):+.3f} |")
    for k, m in variants.items():
        if k.startswith("fused"):
            print(f"- {k}: {len(m.patches) // 2} modules fused (weight patches), "
                  f"{len(tmap) - len(m.patches) // 2} hooked")
    pp_hooks = run(apply_node.apply_to_model(model, pp_map, 1.0))
    print(f"\nsteered output differs from unsteered: {not torch.equal(outs['steered, all'], outs['unsteered'])}; "
          f"plain model unchanged after steered runs: {torch.equal(run(model), outs['unsteered'])}; max |fused - hooks|: "
          f"per-pixel {(outs['fused mode, all, GroupNorm maps per-pixel'] - pp_hooks).abs().max():.2e}, spatial-mean "
          f"{(outs['fused mode, all, GroupNorm maps spatial-mean'] - outs['steered, all']).abs().max():.2e} "
          f"(outputs up to {outs['steered, all'].abs().max():.1f})")
    del pack


if __name__ == "__main__":
    main()
