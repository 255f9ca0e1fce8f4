"""The ``act-steer`` command line: one command, subcommands registered by each area.

Each area module (:mod:`.maps`, :mod:`.demo`, :mod:`.image`, :mod:`.llm`) exposes
``register(subparsers)`` and imports its heavy dependencies inside the handlers, so
``act-steer --help`` is fast. Shared pieces (the user-error class, argument types) live in
:mod:`.common`, which imports nothing of the CLI.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import demo, image, llm, maps
from .common import CLIError

AREAS = (maps, demo, image, llm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="act-steer",
        description="Activation Transport (AcT): fit transport maps and steer SDXL and LLMs with them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        area.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..mapfile import MapFileError

    try:
        rc = args.handler(args)
    except (CLIError, MapFileError, ValueError, OSError, KeyError) as e:  # OSError: disk full, permissions, ...
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"act-steer {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"act-steer {args.command}: cancelled; nothing was written", file=sys.stderr)
        return 130
    return int(rc or 0)
