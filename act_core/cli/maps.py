"""``act-steer inspect``: a map file's metadata, modules and units."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show a map file's metadata, modules and units")
    p.add_argument("map", help="path to a .safetensors transport map")
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    p.set_defaults(handler=_inspect)


def _inspect(args) -> int:
    from ..mapfile import TransportMap

    tmap = TransportMap.load(args.map)
    if args.json:
        print(json.dumps(tmap.to_metadata(), indent=2))
        return 0
    s = tmap.summary()
    for k, v in s.items():
        print(f"{k:>18}: {v}")
    return 0
