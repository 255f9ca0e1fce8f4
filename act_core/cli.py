"""The ``act-steer`` command line: one command, subcommands registered by each area.

Each area module (``cli_core``, ``cli_image``, ``cli_llm``) exposes ``register(subparsers)``
and imports its heavy dependencies inside the handlers, so ``act-steer --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

AREAS = ("act_core.cli_core", "act_core.cli_image", "act_core.cli_llm")


class CLIError(Exception):
    """An error meant for the user: printed as 'error: …' with exit status 2."""


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan, no inf)."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def parse_strengths(text: str) -> List[float]:
    """``"0,0.5,1"`` or ``"START:STOP:COUNT"`` (inclusive linspace) -> finite floats."""
    import math

    try:
        if ":" in text:
            a, b, n = text.split(":")
            n = int(n)
            if n < 1:
                raise ValueError
            vals = [float(a)] if n == 1 else [float(a) + (float(b) - float(a)) * i / (n - 1) for i in range(n)]
        else:
            vals = [float(s) for s in text.split(",") if s.strip()]
        if not vals or not all(math.isfinite(v) for v in vals):
            raise ValueError
        return vals
    except ValueError:
        raise CLIError(f"bad --strengths {text!r}: use finite numbers, a comma list like 0,0.5,1 or START:STOP:COUNT "
                       "like 0:1:5") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="act-steer",
        description="Activation Transport (AcT): fit transport maps and steer SDXL and LLMs with them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in AREAS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .mapfile import MapFileError

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


if __name__ == "__main__":  # pragma: no cover
    # ``python -m act_core.cli``: run the imported module's main, so the error classes that the
    # subcommands raise (act_core.cli.CLIError) are the ones caught above
    from act_core.cli import main as _main

    sys.exit(_main())
