"""The ``act-steer`` command line: one command, subcommands registered by each area.

Each area module (:mod:`.maps`, :mod:`.demo`, :mod:`.image`, :mod:`.llm`) exposes
``register(subparsers)`` and imports its heavy dependencies inside the handlers, so
``act-steer --help`` is fast. Shared pieces (the user-error class, argument types) live in
:mod:`.common`, which imports nothing of the CLI.

Errors: a user error (:class:`CLIError`, a ``ValueError`` such as a malformed map file or an
unknown preset, an ``OSError`` such as a missing file or a full disk) is printed as one line,
``act-steer COMMAND: error: …``, with exit status 2. Anything else is a bug: its traceback is
printed, followed by a line saying so, with exit status 1. ``ACT_STEER_DEBUG=1`` prints the
traceback of user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
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


#: errors meant for the user (one line); anything else is a bug (traceback)
USER_ERRORS = (CLIError, ValueError, OSError)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.handler(args)
    except USER_ERRORS as e:
        if os.environ.get("ACT_STEER_DEBUG"):
            traceback.print_exc()
        print(f"act-steer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"act-steer {args.command}: cancelled; nothing was written", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: show where it happened
        traceback.print_exc()
        print(f"act-steer {args.command}: internal error (a bug in act-steer, not in your input); please report "
              "it with the traceback above", file=sys.stderr)
        return 1
    return int(rc or 0)
