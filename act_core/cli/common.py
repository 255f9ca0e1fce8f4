"""What every ``act-steer`` subcommand shares: the user-error class and argument types."""

from __future__ import annotations

import argparse
from typing import List


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
