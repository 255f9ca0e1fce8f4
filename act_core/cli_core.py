"""Core subcommands of ``act-steer``: ``inspect`` a map file, run the ``demo``."""

from __future__ import annotations

import json

from .cli import positive_int


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show a map file's metadata, modules and units")
    p.add_argument("map", help="path to a .safetensors transport map")
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    p.set_defaults(handler=_inspect)

    d = sub.add_parser("demo", help="the embedded end-to-end demo on the miniature SDXL (no download needed)")
    d.add_argument("--out", default="act-demo", help="output folder (default: ./act-demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--model", default=None, help="a real SDXL-family model (diffusers folder or single file) "
                   "instead of the embedded miniature")
    d.add_argument("--unet", default=None, help="with --model: diffusers-format UNet weights (e.g. SDXL-Lightning)")
    d.add_argument("--config", default=None, help="with a single-file --model: a local diffusers SDXL folder")
    d.add_argument("--style", default="poster", help="miniature: sketch, pixel_art, watercolor, poster (default); "
                   "real models: a shipped style (default watercolor)")
    d.add_argument("--concept", default="circle", help="miniature: circle (default), square, triangle; "
                   "real models: a shipped concept (default pink_elephant)")
    d.add_argument("--layers", default=None, help="a layer preset or regexes for both maps (default: the miniature's "
                   "best, text_encoder_layers; real models: unet_norms)")
    d.add_argument("--n-eval", type=positive_int, default=16, help="held-out prompts measured per λ (miniature)")
    d.add_argument("--llm", action="store_true", help="run the earlier tiny-Llama demo instead")
    d.set_defaults(handler=_demo)


def _inspect(args) -> int:
    from .mapfile import TransportMap

    tmap = TransportMap.load(args.map)
    if args.json:
        print(json.dumps(tmap.to_metadata(), indent=2))
        return 0
    s = tmap.summary()
    for k, v in s.items():
        print(f"{k:>18}: {v}")
    return 0


def _demo(args) -> int:
    from pathlib import Path

    from .cli import CLIError
    from .demo import run_demo, run_llm_demo

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out!r} is a file; give a folder for the demo's outputs (it is created if missing)")
    if args.llm:
        run_llm_demo(out=args.out, seed=args.seed)
        return 0
    if args.unet and not args.model:
        raise CLIError("--unet needs --model (the SDXL base pipeline the UNet weights go on)")
    run_demo(out=args.out, seed=args.seed, model=args.model, unet=args.unet, config=args.config, style=args.style,
             concept=args.concept, n_eval=args.n_eval, layers=args.layers)
    return 0
