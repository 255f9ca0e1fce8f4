"""The PIL line charts: intervals drawn as whiskers, dashed baselines, fixed colours, scalable text."""

import numpy as np

from act_core.plotting import render

GREEN, PURPLE = (10, 200, 10), (150, 20, 160)


def _pixels(img, color):
    a = np.asarray(img).astype(int)
    return np.all(np.abs(a - np.array(color)) <= 2, axis=-1)


def _panel(**extra):
    return {"title": "t", "xlabel": "lambda", "ylim": (0.0, 1.0),
            "series": {"act": ([0, 1, 2], [0.2, 0.5, 0.8]), "prompt": ([0, 2], [0.6, 0.6])},
            "colors": {"act": GREEN, "prompt": PURPLE}, **extra}


def test_colours_whiskers_and_dashes_are_drawn():
    plain = render([_panel()], (400, 300))
    drawn = render([_panel(ci={"act": ([0.1, 0.3, 0.7], [0.3, 0.7, 0.9])}, dashed=["prompt"])], (400, 300))
    g0, g1 = _pixels(plain, GREEN), _pixels(drawn, GREEN)
    assert g0.any() and g1.sum() > g0.sum()  # whiskers add pixels of the series' colour
    rows = np.where(g1.any(axis=1))[0]
    assert rows.max() - rows.min() > np.ptp(np.where(g0.any(axis=1))[0])  # reaching beyond the line's own span
    p0, p1 = _pixels(plain, PURPLE), _pixels(drawn, PURPLE)
    row = int(np.argmax(p0.sum(axis=1)))  # the baseline's row
    solid, dashed = p0[row].sum(), p1[row - 1:row + 2].any(axis=0).sum()
    assert 0.3 * solid < dashed < 0.8 * solid  # a dashed line covers about half of the solid one


def test_a_font_size_scales_the_text():
    def dark(img):
        return int((np.asarray(img).max(axis=-1) < 128).sum())

    assert dark(render([_panel()], (400, 300), font_size=18)) > 1.5 * dark(render([_panel()], (400, 300)))
