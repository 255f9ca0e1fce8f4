#!/usr/bin/env python3
"""Regenerate the README's pictures.

    python tools/readme_images.py            # both pictures (runs the demo: about 2-3 minutes on 2 CPU cores)
    python tools/readme_images.py --plot     # only the effect plot (from the committed study, seconds)

* ``docs/images/readme_demo.jpg``: what ``bash tools/demo.sh`` draws, its two λ-sweep grids side by
  side (a *poster* style map and a *negate circle* map on the miniature SDXL's 4-step student, same
  seed in every row), scaled to fit a README column.
* ``docs/images/readme_effect.png``: effect against strength for the demo's default maps, with the
  baseline a user would reach for instead (writing the style, or "without a circle", into the
  prompt), from the committed study ``reports/miniworld/results.json``: 4-step student, 48 held-out
  prompts × 3 seeds per target, averaged over 4 styles / 3 shapes, 95% bootstrap intervals. Nothing
  is re-measured for the plot; ``python bench/miniworld_experiments.py`` re-measures the study.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
RESULTS = ROOT / "reports" / "miniworld" / "results.json"

BLUE, RED, GREY, ORANGE = (31, 119, 180), (214, 39, 40), (110, 110, 110), (255, 127, 14)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _curve(cells: dict, regime: str, task: str, targets, method: str, metric: str):
    """λ = 0 (the unsteered cells) and every stored λ of ``method``: (xs, means, los, his) averaged over targets."""
    from act_core.diffusion.miniworld import study as S

    values = sorted({float(k.split("|")[4]) for k in cells
                     if k.startswith(f"{regime}|{task}|") and k.split("|")[3] == method})
    xs, ms, los, his = [], [], [], []
    for lam in [0.0] + values:
        name, v = ("unsteered", None) if lam == 0 else (method, lam)
        picked = [cells.get(S.cell_key(regime, task, t, name, v)) for t in targets]
        if any(c is None for c in picked):  # a λ not measured on every target: left out, not averaged over fewer
            continue
        m, lo, hi = S.summarize(picked, metric)
        xs.append(lam), ms.append(m), los.append(lo), his.append(hi)
    return xs, ms, los, his


def _flat(cells: dict, regime: str, task: str, targets, method: str, metric: str, xs):
    from act_core.diffusion.miniworld import study as S

    m, lo, hi = S.summarize([cells[S.cell_key(regime, task, t, method, None)] for t in targets], metric)
    return [m] * len(xs), [lo] * len(xs), [hi] * len(xs)


def effect_plot(out: Path = OUT / "readme_effect.png") -> Path:
    from act_core.cli.demo import MINI_DEFAULTS
    from act_core.diffusion.miniworld import world as W
    from act_core.plotting import line_plot

    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    cells = results["cells"]
    panels = []
    for task, targets, prompt_method, what in (
            ("style", W.STYLES[1:], "prompt: '…, in X style'", "style"),
            ("negation", W.SHAPES, "prompt: '…, without a k'", "named shape")):
        method = MINI_DEFAULTS[("student", task)]["method"]
        series, ci, colors, dashed = {}, {}, {}, []
        for metric, col, label in (("presence", BLUE, f"AcT: {what} present"), ("content", RED, "AcT: content kept")):
            xs, ms, los, his = _curve(cells, "student", task, targets, method, metric)
            series[label], ci[label], colors[label] = (xs, ms), (los, his), col
            base = f"prompt: {what} present" if metric == "presence" else "prompt: content kept"
            bm, blo, bhi = _flat(cells, "student", task, targets, prompt_method, metric, xs)
            series[base], colors[base] = (xs, bm), tuple(int(c * 0.55 + 255 * 0.45) for c in col)
            dashed.append(base)
        n = f"{len(targets)} {'styles' if task == 'style' else 'shapes'} x 48 prompts x 3 seeds"
        title = f"{'style' if task == 'style' else 'negation'}: share of images ({n})"
        panels.append({"title": title, "xlabel": "strength lambda", "ylim": (0.0, 1.0),
                       "series": series, "ci": ci, "colors": colors, "dashed": dashed,
                       "legend_at": (0.55, 0.62) if task == "style" else (0.55, 0.3)})
    path = line_plot(panels, out, size=(560, 380), font_size=14)
    print(f"{_shown(path)}: {path.stat().st_size // 1024} KB")
    return path


def demo_picture(out: Path = OUT / "readme_demo.jpg", width: int = 1100) -> Path:
    from PIL import Image

    from act_core.cli.demo import run_demo
    from act_core.files import atomic_write_bytes

    with tempfile.TemporaryDirectory() as d:
        run_demo(out=d, log=lambda m: print(m, file=sys.stderr))
        from PIL import ImageDraw, ImageFont

        grids = [Image.open(Path(d) / f"{task}_grid.png").convert("RGB") for task in ("style", "negation")]
        titles = ["style map: poster (source: plain captions, target: captions + poster style)",
                  "negation map: circle (source: captions with a circle, target: without it)"]
        h, gap, head = max(g.height for g in grids), 24, 34
        canvas = Image.new("RGB", (sum(g.width for g in grids) + gap, h + head), "white")
        draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=17)
        x = 0
        for g, title in zip(grids, titles):
            canvas.paste(g, (x, head))
            draw.text((x + 8, 8), title, fill=(0, 0, 0), font=font)
            x += g.width + gap
        if canvas.width > width:
            canvas = canvas.resize((width, round(canvas.height * width / canvas.width)), Image.LANCZOS)
        from io import BytesIO

        buf = BytesIO()
        canvas.save(buf, format="JPEG", quality=85, optimize=True)
        atomic_write_bytes(out, buf.getvalue())
    print(f"{_shown(out)}: {out.stat().st_size // 1024} KB, {canvas.width}x{canvas.height}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plot", action="store_true", help="only the effect plot (no demo run)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    effect_plot()
    if not args.plot:
        demo_picture()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
