"""What every ``act-steer`` subcommand shares: the user-error class, argument types, a progress bar."""

from __future__ import annotations

import argparse
import sys
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


class ProgressBar:
    """A progress bar with an estimate on stderr: ``[fit] ████████░░░░ 8/12  67 %  0:14 left  msg``.

    Call it as ``bar(done, total, msg="")`` (the shape of act_core's ``progress`` callbacks). On
    a terminal it redraws one line; otherwise (a log file, CI) it writes a line at most every 10 %
    or every 5 seconds, and always the last one. The estimate is the mean time per step so far
    times the steps left.
    """

    def __init__(self, label: str, width: int = 24, stream=None, total: int = 0):
        import time

        self.label, self.width, self.total, self.count = label, width, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._last = (-1.0, 0.0)  # (fraction, time) of the last line written when not a terminal

    @staticmethod
    def clock(seconds: float) -> str:
        seconds = int(round(max(seconds, 0)))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
            else f"{seconds // 60}:{seconds % 60:02d}"

    def line(self, done: int, total: int, msg: str = "", now: float = None) -> str:
        import time

        now = time.monotonic() if now is None else now
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        frac = done / total
        elapsed = now - self.t0
        fill = int(round(frac * self.width))
        if done >= total:
            when = f"done in {self.clock(elapsed)}"
        elif done == 0:
            when = "estimating…"
        else:
            when = f"{self.clock(elapsed / done * (total - done))} left"
        text = f"[{self.label}] {'█' * fill}{'░' * (self.width - fill)} {done}/{total} {frac * 100:3.0f} %  {when}"
        return f"{text}  {msg}" if msg else text

    def __call__(self, done: int, total: int, msg: str = "") -> None:
        import time

        now = time.monotonic()
        text = self.line(done, total, msg, now)
        finished = done >= total
        if self.tty:
            self.stream.write(f"\r{text}\033[K" + ("\n" if finished else ""))
        else:
            frac = done / max(total, 1)
            last_frac, last_t = self._last
            if not (finished or frac - last_frac >= 0.1 or now - last_t >= 5.0):
                return
            self._last = (frac, now)
            self.stream.write(text + "\n")
        self.stream.flush()

    def tick(self, msg: str = "") -> None:
        """For callbacks that report only a message as each of ``total`` steps starts (``progress(msg)``)."""
        self(self.count, self.total, msg)
        self.count += 1
