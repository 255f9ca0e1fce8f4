"""The README's effect plot is drawn from the committed study with the demo's own default methods."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_images", ROOT / "tools" / "readme_images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_effect_plot_uses_the_demo_defaults_with_intervals(tmp_path):
    import json

    from act_core.cli.demo import MINI_DEFAULTS
    from act_core.diffusion.miniworld import world as W

    tool = _tool()
    cells = json.loads(tool.RESULTS.read_text(encoding="utf-8"))["cells"]
    for task, targets in (("style", W.STYLES[1:]), ("negation", W.SHAPES)):
        xs, ms, los, his = tool._curve(cells, "student", task, targets, MINI_DEFAULTS[("student", task)]["method"],
                                       "presence")
        assert xs[0] == 0.0 and len(xs) >= 5  # unsteered plus the swept strengths, all measured on every target
        assert all(lo <= m <= hi for m, lo, hi in zip(ms, los, his))
        assert (ms[-1] > ms[0] + 0.5) if task == "style" else (ms[-1] < ms[0] - 0.5)  # the effect the README shows
    path = tool.effect_plot(tmp_path / "effect.png")
    assert path.stat().st_size > 5000
