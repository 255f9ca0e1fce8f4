"""Image (diffusers: SD1.5, SD2.x, SDXL, SD3.5, FLUX.1) subcommands of ``act-steer``.

    act-steer fit-style    --model MODEL --style watercolor      --out watercolor.safetensors
    act-steer fit-negation --model MODEL --concept pink_elephant --out no_pink_elephant.safetensors
    act-steer generate     --model MODEL --map watercolor.safetensors --prompt "a cat" --strength 1 --out cat.png
    act-steer sweep        --model MODEL --map watercolor.safetensors --strengths 0:1:5 --out grid.png
    act-steer evaluate     --model MODEL --map watercolor.safetensors --clip CLIP_FOLDER --out eval/

Heavy imports (torch, diffusers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

from .common import ProgressBar, finite_float, parse_strengths, positive_int
from .scale import FitLaunch, add_scale_args
from ..files import atomic_write_bytes

MODEL_HELP = ("model: a diffusers folder (model_index.json) of an SD1.5, SD2.x, SDXL, SD3.5 or FLUX.1 pipeline, or a "
              "single-file .safetensors checkpoint (single files also need --config offline)")
FAMILIES = ("auto", "sd15", "sd2", "sdxl", "sd3", "flux")
KINDS = ("auto", "base", "lightning", "turbo", "schnell", "dev")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help=MODEL_HELP + " (required except with --list/--list-presets)")
    g.add_argument("--unet", help="diffusers-format UNet weights to load on --model, e.g. "
                                  "sdxl_lightning_4step_unet.safetensors on the SDXL base folder")
    g.add_argument("--config", help="local diffusers folder of the same family with configs/tokenizers, for single-file "
                                    "checkpoints")
    g.add_argument("--family", default="auto", choices=FAMILIES,
                   help="model family (default: from the folder's or --config's model_index.json and the components)")
    g.add_argument("--kind", default="auto", choices=KINDS,
                   help="model kind within the family: SDXL base/lightning/turbo, SD3 base/turbo, FLUX schnell/dev "
                        "(default: guessed from file names and the model config); sets default steps/guidance")
    g.add_argument("--dtype", default="auto", help="float32 (CPU default) | float16 (CUDA default) | bfloat16")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:1 … (default: cuda if available)")
    g.add_argument("--size", type=positive_int, default=None, help="image height=width in pixels (default: the model's)")


#: The default layers per command on SDXL, from the miniature study (reports/miniworld/REPORT.md). Style: maps on
#: the text encoders' layers beat the paper's UNet norms in both regimes ("Style: 4-step distilled student"
#: and "Style: 20-step teacher, CFG 4" tables; earlier/REPORT.md for the teacher's single-seed study).
#: Negation: no pooled map meets the goal in either regime; text-encoder maps keep more of the other
#: object than UNet norms ("Negation" tables), so they are the default there too.
DEFAULT_LAYERS = {"fit-style": "text_encoder_layers", "fit-negation": "text_encoder_layers"}


def _fit_args(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("fitting")
    g.add_argument("--out", required=False, help="output map file (.safetensors)")
    g.add_argument("--layers", default=None,
                   help=f"a layer preset or comma-separated full-match regexes over canonical names; see --list-presets "
                        f"(default: SDXL {DEFAULT_LAYERS[command]}, the CLIP-L and CLIP-G layers, which steered better "
                        "than the paper's unet_norms in the project's measurements, reports/miniworld/REPORT.md; other "
                        "families: their paper setting, unet_norms for SD1.5/SD2, transformer_paper for FLUX, "
                        "transformer_blocks for SD3)")
    g.add_argument("--method", default="linear", choices=["linear", "mean", "gaussian", "aura"])
    g.add_argument("--procedure", default="simultaneous",
                   choices=["simultaneous", "causal", "causal_chunked", "causal_reference"],
                   help="default simultaneous (every layer on the unsteered model); causal fits each layer with the "
                        "upstream maps applied, as the paper, in ONE batch of all prompts (memory); causal_chunked: "
                        "the same maps in the memory of one chunk; causal_reference: the same maps layer by layer "
                        "(slow). On the miniature SDXL causal = simultaneous (reports/miniworld)")
    g.add_argument("-n", "--num-prompts", type=positive_int, default=64, help="prompt pairs to fit on (paper: 2048)")
    g.add_argument("--captions", help="your own captions file (.txt/.json/.csv/COCO json) instead of the shipped ones")
    g.add_argument("--batch-size", type=positive_int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--support", default=None, help="transport support recorded as the map default (e.g. q_0_100, all)")
    g.add_argument("--list-presets", action="store_true", help="list layer presets and exit")
    add_scale_args(g)


def register(sub) -> None:
    p = sub.add_parser("fit-style", help="fit a style map (plain captions -> captions + style tags)",
                       description="Fit a style transport map on an SD1.5, SD2.x, SDXL, SD3.5 or FLUX.1 model. Example: act-steer fit-style "
                                   "--model sdxl-base --unet sdxl_lightning_4step_unet.safetensors --style watercolor "
                                   "--out watercolor.safetensors")
    p.add_argument("--style", help="a shipped style (see --list) or any name when --tags is given")
    p.add_argument("--tags", help="your own comma-separated style tags (replace the shipped ones)")
    p.add_argument("--list", action="store_true", help="list the shipped styles and exit")
    _model_args(p)
    _fit_args(p, "fit-style")
    p.set_defaults(handler=_fit_style)

    p = sub.add_parser("fit-negation", help="fit a concept-negation map (captions + concept -> plain captions)",
                       description="Fit a map that removes a concept the prompt asks NOT to draw "
                                   "(e.g. 'without a pink elephant').")
    p.add_argument("--concept", help="a shipped concept (see --list), e.g. pink_elephant")
    p.add_argument("--list", action="store_true", help="list the shipped concepts and exit")
    _model_args(p)
    _fit_args(p, "fit-negation")
    p.set_defaults(handler=_fit_negation)

    p = sub.add_parser("generate", help="generate images with a map applied at a strength")
    _model_args(p)
    _gen_args(p)
    p.add_argument("--prompt", action="append", help="text prompt (repeat for several)")
    p.add_argument("--prompts", help="file with prompts (.txt/.json/.csv)")
    p.add_argument("--strength", type=finite_float, default=1.0, help="λ: 0 = unsteered, 1 = full transport (default 1)")
    p.add_argument("--out", required=True, help="output PNG (several prompts: NAME_000.png, NAME_001.png, …)")
    p.set_defaults(handler=_generate)

    p = sub.add_parser("sweep", help="a labelled grid: prompts x strengths, same seed per row")
    _model_args(p)
    _gen_args(p)
    p.add_argument("--prompt", action="append", help="text prompt (repeat for several)")
    p.add_argument("--prompts", help="file with prompts; default: held-out prompts for the map's task")
    p.add_argument("-n", "--num-prompts", type=positive_int, default=4, help="held-out prompts when none are given")
    p.add_argument("--strengths", default="0:1:5", help="comma list (0,0.5,1) or START:STOP:COUNT (default 0:1:5)")
    p.add_argument("--out", required=True, help="output grid PNG")
    p.set_defaults(handler=_sweep)

    p = sub.add_parser("evaluate", help="CLIP zero-shot presence and CLIPScore per strength (markdown + plot)")
    _model_args(p)
    _gen_args(p)
    p.add_argument("--clip", required=True, help="local CLIP folder (transformers format, e.g. clip-vit-large-patch14)")
    p.add_argument("--clip-backend", default="transformers", choices=["transformers", "open_clip"])
    p.add_argument("--prompts", help="file with prompts; default: held-out prompts for the map's task")
    p.add_argument("-n", "--num-prompts", type=positive_int, default=16)
    p.add_argument("--strengths", default="0:1:5")
    p.add_argument("--condition", help="text for the zero-shot probe (default: the map's style/concept)")
    p.add_argument("--out", required=True, help="output folder (images, results.md, results.json, plot.png)")
    p.set_defaults(handler=_evaluate)


def _gen_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--map", help="transport map (.safetensors); omit for unsteered images")
    g.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps (default per family and kind: SDXL 30 base, 4 Lightning, 1 Turbo; FLUX 4 schnell, "
                        "28 dev; SD3 28; SD1.5/2.x 30)")
    g.add_argument("--guidance", type=finite_float, default=None,
                   help="guidance scale (default per family and kind: 0 for distilled models, 5 SDXL base, 7.5 SD1.5, "
                        "3.5 FLUX dev)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--negative-prompt", default=None)


# -- helpers -----------------------------------------------------------------------------------------


def _check_png(out: Path) -> None:
    from .common import CLIError

    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png file, got {out.name!r}")


def _layers(text):
    """None (the family's default), one preset/regex, or a comma-separated list of them."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    return items[0] if len(items) == 1 else items


def _print_presets(family: str = "auto") -> int:
    from ..diffusion import families

    chosen = list(families.FAMILIES.values()) if family == "auto" else [families.get(family)]
    for fam in chosen:
        print(f"{fam.title} (--family {fam.name}; default {fam.default_layers}):")
        for p in fam.presets.values():
            print(f"  {p.name:30} {p.description}")
    return 0


def _load(args):
    from .common import CLIError
    from ..diffusion import families
    from ..diffusion.pipeline import load_pipeline

    if not args.model:
        raise CLIError("--model is required: " + MODEL_HELP)
    t0 = time.perf_counter()
    sys.stderr.write(f"loading {args.model} …\n")
    pipe = load_pipeline(args.model, family=args.family, kind=args.kind, unet=args.unet, config=args.config,
                         dtype=None if args.dtype == "auto" else args.dtype, device=args.device)
    d = pipe.act_defaults
    sys.stderr.write(f"loaded {families.get(d['family']).title} ({d['kind']}) in {time.perf_counter() - t0:.1f} s "
                     f"(defaults: {d['steps']} steps, guidance {d['guidance']})\n")
    return pipe


def _out_map(args) -> Path:
    from .common import CLIError

    if not args.out:
        raise CLIError("--out is required: the .safetensors file to write the map to")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _fit_common(args, fit_fn, name_kw: dict) -> int:
    from ..diffusion.prompts import load_prompt_file

    out = _out_map(args)
    caps = load_prompt_file(args.captions) if args.captions else None
    launch = FitLaunch(args)  # torchrun / accelerate launch: this rank's device, progress and writing on rank 0
    pipe = _load(args)
    layers = _layers(args.layers)
    from ..diffusion.pipeline import family_of

    if layers is None and family_of(pipe).name == "sdxl":
        layers = DEFAULT_LAYERS[args.command]
    collect_bar = ProgressBar("collect")
    tmap = launch.fit(lambda: fit_fn(
        pipe, n=args.num_prompts, layers=layers, method=args.method,
        procedure=args.procedure, seed=args.seed, captions=caps, batch_size=args.batch_size,
        height=args.size, width=args.size, support=args.support, progress=launch.progress(ProgressBar("fit")),
        on_batch=launch.progress(lambda d, t: collect_bar(d, t, "batches")), **launch.options(), **name_kw))
    if not launch.main:
        return 0
    tmap.save(out)
    s = tmap.summary()
    print(f"saved {out}: {s['modules']} modules, {s['units']} units, method {s['method']}, procedure {s['procedure']}")
    return 0


def _fit_named(args, names, describe, check, fit_fn) -> int:
    """``fit-style`` / ``fit-negation``: list presets or names, or ``check()`` the chosen name
    (an unknown one is an error before the model loads) and fit."""
    if args.list_presets:
        return _print_presets(args.family)
    if args.list:
        for n in names():
            print(f"{n:15} {describe(n)}")
        return 0
    check()
    return _fit_common(args, fit_fn, {})


def _fit_style(args) -> int:
    from ..diffusion import prompts as P
    from .common import CLIError
    from ..diffusion.pipeline import fit_style_map

    def check():
        if not args.style:
            raise CLIError("give --style (one of: " + ", ".join(P.list_styles()) + ") or --tags with a --style name")
        if args.tags is None:
            P.style_info(args.style)

    return _fit_named(args, P.list_styles, lambda s: ", ".join(P.style_info(s)["tags"][:5]), check,
                      lambda pipe, **kw: fit_style_map(pipe, args.style, tags=args.tags, **kw))


def _fit_negation(args) -> int:
    from ..diffusion import prompts as P
    from .common import CLIError
    from ..diffusion.pipeline import fit_negation_map

    def check():
        if not args.concept:
            raise CLIError("give --concept (one of: " + ", ".join(P.list_concepts()) + ")")
        P.concept_info(args.concept)

    return _fit_named(args, P.list_concepts, lambda c: f"e.g. '{P.concept_info(c)['modifiers'][0]}'", check,
                      lambda pipe, **kw: fit_negation_map(pipe, args.concept, **kw))


def _gather_prompts(args, tmap=None, n: int = 4) -> List[str]:
    from ..diffusion import prompts as P
    from .common import CLIError

    items = list(getattr(args, "prompt", None) or [])
    if getattr(args, "prompts", None):
        items += P.load_prompt_file(args.prompts)
    if any(not s.strip() for s in items):
        raise CLIError("empty --prompt: give some text")
    if items:
        return items
    if tmap is not None and tmap.meta.get("task") == "negation":
        return P.negation_eval_prompts(tmap.meta["concept"], n=n)
    if tmap is not None:
        return P.captions("eval")[:n]
    raise CLIError("no prompts: give --prompt TEXT or --prompts FILE")


def _load_map(args):
    from ..mapfile import TransportMap

    return TransportMap.load(args.map) if args.map else None


def _settings(args, pipe, **extra) -> dict:
    d = pipe.act_defaults
    return {"model": args.model, "unet": args.unet, "family": d["family"], "kind": d["kind"], "map": args.map, "seed": args.seed,
            "steps": args.steps or d["steps"], "guidance": d["guidance"] if args.guidance is None else args.guidance,
            "size": args.size, **extra}


def _gen_kw(args) -> dict:
    return dict(steps=args.steps, guidance=args.guidance, height=args.size, width=args.size,
                negative_prompt=args.negative_prompt)


def _generate(args) -> int:
    from ..diffusion.pipeline import generate
    from ..diffusion.images import save_image

    out = Path(args.out)
    tmap = _load_map(args)
    prompts = _gather_prompts(args)
    _check_png(out)
    pipe = _load(args)
    bar = ProgressBar("generate")
    for i, p in enumerate(prompts):
        img = generate(pipe, p, tmap, strength=args.strength, seed=args.seed, **_gen_kw(args))[0]
        path = out if len(prompts) == 1 else out.with_name(f"{out.stem}_{i:03d}.png")
        save_image(img, path, _settings(args, pipe, prompt=p, strength=args.strength))
        bar(i + 1, len(prompts), str(path))
    return 0


def _sweep_inputs(args, command: str):
    """``(strengths, map, prompts)`` of a λ sweep, checked before any model is loaded."""
    from .common import CLIError

    strengths = parse_strengths(args.strengths)
    tmap = _load_map(args)
    if tmap is None:
        raise CLIError(f"{command} needs --map")
    return strengths, tmap, _gather_prompts(args, tmap, args.num_prompts)


def _sweep(args) -> int:
    from ..diffusion.images import label_grid, save_image
    from ..diffusion.pipeline import sweep_images

    strengths, tmap, prompts = _sweep_inputs(args, "sweep")
    out = Path(args.out)
    _check_png(out)  # before any image is generated
    pipe = _load(args)
    bar = ProgressBar("sweep")
    rows = sweep_images(pipe, prompts, tmap, strengths, seed=args.seed, on_image=lambda d, t: bar(d, t, "images"),
                        **_gen_kw(args))
    grid = label_grid(rows, [f"λ={s:g}" for s in strengths], prompts)
    save_image(grid, out, _settings(args, pipe, prompts=prompts, strengths=strengths))
    print(f"saved {out} ({len(prompts)} prompts x {len(strengths)} strengths)")
    return 0


def _evaluate(args) -> int:
    from ..diffusion import prompts as P
    from ..diffusion.images import save_image
    from ..diffusion.pipeline import sweep_images
    from ..diffusion.evaluate import CLIPEvaluator, best_strength, markdown_table, plot

    strengths, tmap, prompts = _sweep_inputs(args, "evaluate")
    task = tmap.meta.get("task", "style")
    condition = args.condition or tmap.meta.get("condition") or P.style_label(tmap.meta.get("style", "style"))
    # the "original prompt" for CLIPScore: the caption without the negated modifier
    originals = [p.split(", ")[0].rstrip(".") + "." if task == "negation" else p for p in prompts]
    evaluator = CLIPEvaluator.from_pretrained(args.clip, backend=args.clip_backend)
    out = Path(args.out)
    pipe = _load(args)
    out.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar("evaluate")
    rows = sweep_images(pipe, prompts, tmap, strengths, seed=args.seed, on_image=lambda d, t: bar(d, t, "images"),
                        **_gen_kw(args))
    by_lam = {lam: [rows[i][j] for i in range(len(prompts))] for j, lam in enumerate(strengths)}
    for j, lam in enumerate(strengths):
        for i, p in enumerate(prompts):
            save_image(rows[i][j], out / f"l{lam:.3f}_{i:03d}.png", _settings(args, pipe, prompt=p, strength=lam))
    from ..diffusion.evaluate import evaluate_images

    table = evaluate_images(evaluator, by_lam, originals, condition)
    md = markdown_table(table, condition)
    best = best_strength(table, task)
    md += f"\nTask: {task}. Suggested λ (strongest effect keeping ≥80% CLIP similarity): {best}\n"
    atomic_write_bytes(out / "results.md", md.encode("utf-8"))
    atomic_write_bytes(out / "results.json", json.dumps({"condition": condition, "task": task, "rows": table,
                                                          "prompts": prompts}, indent=1).encode("utf-8"))
    plot(table, out / "plot.png", title=f"{task}: {condition}")
    print(md)
    return 0
