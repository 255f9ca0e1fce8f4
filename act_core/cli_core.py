"""Core subcommands of ``act-steer``: ``inspect`` a map file, run the ``demo``."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show a map file's metadata, modules and units")
    p.add_argument("map", help="path to a .safetensors transport map")
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    p.set_defaults(handler=_inspect)

    d = sub.add_parser("demo", help="the embedded end-to-end demo (no download needed)")
    d.add_argument("--out", default="act-demo", help="output folder (default: ./act-demo)")
    d.add_argument("--seed", type=int, default=0)
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
    from .demo import run_demo

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out!r} is a file; give a folder for the demo's outputs (it is created if missing)")
    run_demo(out=args.out, seed=args.seed)
    return 0
