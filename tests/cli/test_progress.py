"""The CLI's progress bar: estimates from the mean step time, one redrawn line on a terminal, sparse
lines in a log."""

import io

from act_core.cli.common import ProgressBar


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_line_shows_fraction_and_estimate():
    bar = ProgressBar("fit", width=10, stream=io.StringIO())
    t0 = bar.t0
    assert "estimating" in bar.line(0, 8, now=t0 + 1)
    line = bar.line(2, 8, "batch 2", now=t0 + 10)  # 5 s per step, 6 left -> 30 s
    assert line.startswith("[fit] ██░░░░░░░░ 2/8  25 %") and "0:30 left" in line and line.endswith("batch 2")
    assert "done in 1:05" in bar.line(8, 8, now=t0 + 65)
    assert ProgressBar.clock(3725) == "1:02:05"


def test_terminal_redraws_one_line_and_logs_are_sparse():
    tty = Tty()
    bar = ProgressBar("sweep", stream=tty)
    for i in range(1, 101):
        bar(i, 100)
    out = tty.getvalue()
    assert out.count("\r") == 100 and out.count("\n") == 1 and out.endswith("\n")
    log = io.StringIO()
    bar = ProgressBar("sweep", stream=log)
    for i in range(1, 101):
        bar(i, 100)
    lines = log.getvalue().splitlines()
    assert 5 <= len(lines) <= 12 and "100/100" in lines[-1] and "done in" in lines[-1]


def test_tick_counts_steps_for_message_only_callbacks():
    log = io.StringIO()
    bar = ProgressBar("evaluate", stream=log, total=3)
    for lam in (0, 0.5, 1):
        bar.tick(f"λ={lam}")
    bar(3, 3)
    lines = log.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["0/3", "1/3", "2/3", "3/3"]
    assert lines[1].endswith("λ=0.5") and "done in" in lines[-1]
