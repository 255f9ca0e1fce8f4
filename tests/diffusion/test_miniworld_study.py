"""The miniature study's bookkeeping (cells, bootstrap intervals, held-out prompts, plots) and the
token-gated text-encoder steering it measures."""

import numpy as np
import pytest
import torch

from act_core.diffusion import miniworld as MW
from act_core.diffusion.miniworld import experiments as E
from act_core.diffusion.miniworld import study as S
from act_core.diffusion.miniworld import variants as V
from act_core.diffusion.miniworld import world as W


def test_bits_round_trip_and_bootstrap_known_answers():
    a = np.array([[True, False, True], [False, False, True]])
    assert np.array_equal(S.unbits(S._bits(a), a.shape), a)
    const = np.full(40, 0.25)
    assert S.bootstrap([const]) == (0.25, 0.25, 0.25)
    # two targets: the mean of the targets' means; the interval contains it and has width
    x = np.r_[np.zeros(20), np.ones(20)]
    est, lo, hi = S.bootstrap([x, np.ones(10)])
    assert est == pytest.approx(0.75) and lo < 0.75 < hi and hi - lo > 0.1
    # a 95% interval of a fair coin's mean over 400 prompts is about ±0.05
    y = np.random.default_rng(0).integers(0, 2, 400).astype(float)
    est, lo, hi = S.bootstrap([y])
    assert 0.07 < hi - lo < 0.13


def test_cells_store_per_image_judgements_by_seed():
    cell = {"n": 3, "seeds": [0, 1], "presence": "110001", "content": "111111"}
    arr = S.cell_arrays(cell)
    assert arr["presence"].tolist() == [[True, True, False], [False, False, True]]
    assert S.summarize([cell], "content")[0] == 1.0
    assert S.summarize([cell], "presence")[0] == pytest.approx(0.5)
    assert S.cell_key("student", "style", "poster", "m", 1.0) == "student|style|poster|m|1"
    assert S.cell_key("teacher", "negation", "circle", "prompt", None).endswith("|prompt|-")


def test_heldout_prompts_are_not_fit_prompts_and_are_deterministic():
    for task, target in (("style", "poster"), ("negation", "circle")):
        scenes = S.heldout_scenes(task, target, n=48)
        caps = [W.caption(s) for s in scenes]
        fit = set(E.style_pairs(target, 64)[0]) if task == "style" else set(E.negation_pairs(target, 64)[0])
        assert len(caps) == 48 and not fit & set(caps)
        assert caps == [W.caption(s) for s in S.heldout_scenes(task, target, n=48)]
        if task == "negation":
            assert all(target in s.shapes() and len(s.objects) == 2 for s in scenes)
    val = S.heldout_scenes("style", "poster", n=24, seed=S.VALIDATION_SEED)
    assert not {W.caption(s) for s in val} >= {W.caption(s) for s in S.heldout_scenes("style", "poster", n=24)}


def test_rewrites_and_negative_prompts():
    s = W.Scene((W.Obj("circle", "red", "small", 8, 16), W.Obj("square", "blue", "large", 24, 16)), "plain")
    assert S.rewrite(s, "negation", "circle", "oracle") == "a large blue square on a plain background"
    assert S.rewrite(s, "negation", "circle", "without").endswith(", without a circle")
    assert S.rewrite(s, "style", "poster", "style").endswith(", in poster style")
    assert S.negative_text(s, "circle", "phrase") == "a small red circle"
    assert S.negative_text(s, "circle", "article") == "a circle"
    with pytest.raises(ValueError):
        S.Method("x", "telepathy", (1.0,))


def test_score_images_per_task():
    s = W.Scene((W.Obj("circle", "red", "small", 8, 16), W.Obj("square", "blue", "large", 24, 16)), "plain")
    j = {"shapes": np.array([[False, True, False], [True, True, False]]),
         "colors": np.array([[False, False, True, False], [True, False, True, False]]),
         "style": np.array(["none", "poster"])}
    neg = S.score_images(j, [s, s], "negation", "circle")
    assert neg["presence"].tolist() == [False, True] and neg["content"].tolist() == [True, True]
    assert neg["color_gone"].tolist() == [True, False]
    sty = S.score_images(j, [s, s], "style", "poster")
    assert sty["presence"].tolist() == [False, True] and sty["content"].tolist() == [False, True]


def test_token_mask_known_answers():
    ids = torch.tensor([[49406, 320, 2866, 49407, 49407, 49407],
                        [49406, 2866, 320, 530, 49407, 0]])
    assert V.token_mask(ids, "eos").tolist() == [[False, False, False, True, True, True],
                                                  [False, False, False, False, True, True]]
    assert V.token_mask(ids, "words").tolist() == [[True, True, True, False, False, False],
                                                    [True, True, True, True, False, False]]
    assert V.token_mask(ids, ("from", [2866])).tolist() == [[False, False, True, True, True, True],
                                                             [False, True, True, True, True, True]]
    assert V.token_mask(ids, ("at", [2866, 530])).tolist() == [[False, False, True, False, False, False],
                                                                [False, True, False, True, False, False]]
    with pytest.raises(ValueError, match="unknown token positions"):
        V.token_mask(ids, "middle")


@pytest.mark.skipif(not MW.available(), reason="miniature weights not built")
def test_token_gated_steering_leaves_ungated_positions_alone():
    torch.set_num_threads(1)
    pipe = MW.load()
    tmap = E.fit(pipe, "style", "poster", layers="text_encoder_layers", n=8)
    prompt = ["a small red circle on a plain background"]

    def embeds():
        return pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)[0]

    base = embeds()
    with V.token_gated_steer(pipe, tmap, 1.0, "eos") as masks:
        gated = embeds()
    assert masks["text_encoder"].shape == (1, 77)
    eos = masks["text_encoder"][0]
    words = ~eos
    assert torch.equal(gated[0, words], base[0, words])  # the words' states: untouched
    assert not torch.allclose(gated[0, eos], base[0, eos])
    assert torch.equal(embeds(), base)  # hooks removed
    with V.token_gated_steer(pipe, tmap, 1.0, "words"):
        other = embeds()
    assert not torch.allclose(other[0, words], base[0, words])


def test_tradeoff_plot_writes_a_png(tmp_path):
    from PIL import Image

    from act_core.diffusion.miniworld.plots import tradeoff_plot

    pts = [(0.9, 0.1, (0.8, 0.95), (0.05, 0.2), "0.5"), (0.7, 0.6, (0.6, 0.8), (0.5, 0.7), "1")]
    path = tradeoff_plot([{"title": "t", "goal": (0.8, 0.9, 1.0), "series": {"a": pts, "b": pts[:1]}}],
                         tmp_path / "p.png")
    img = Image.open(path)
    assert img.size == (460 + 330, 460)


def _cell(regime, task, target, method, value, presence, content, group="paper", n=4):
    """A stored cell with one seed: per-prompt booleans given as lists."""
    return {"regime": regime, "task": task, "target": target, "method": method, "value": value, "group": group,
            "n": n, "seeds": [0], "presence": S._bits(np.asarray([presence])),
            "content": S._bits(np.asarray([content])), "color_gone": S._bits(np.asarray([content]))}


def test_report_averages_partial_methods_over_their_targets_and_pairs_on_common_targets():
    from act_core.diffusion.miniworld import report as R

    cells = {}

    def add(*a, **k):
        c = _cell(*a, **k)
        cells[S.cell_key(c["regime"], c["task"], c["target"], c["method"], c["value"])] = c

    for t in W.SHAPES:  # unsteered and an AcT curve on every target; a baseline on the circle only
        add("student", "negation", t, "unsteered", None, [1, 1, 1, 1], [1, 1, 1, 1], group="unsteered")
        add("student", "negation", t, "act", 1.0, [0, 0, 0, 1], [1, 1, 1, 0])  # presence .25, content .75
        add("student", "negation", t, "act", 2.0, [0, 0, 0, 0], [0, 0, 0, 0])
    add("student", "negation", "circle", "base", 1.0, [1, 1, 0, 0], [1, 1, 1, 1], group="baseline")
    results = {"cells": cells}
    assert R.regime_targets(results, "student", "negation") == tuple(W.SHAPES)
    assert R.complete(results, "student", "negation", "act") and not R.complete(results, "student", "negation", "base")
    v, m, cs = R.best(results, "student", "negation", "act")
    assert v == 1.0 and m["presence"][0] == pytest.approx(0.25) and m["content"][0] == pytest.approx(0.75)
    assert R.sample_size(cs) == "3 × 4 × 1"
    (row,) = R.versus(results, "student", "negation")
    # on the circle only: AcT min(1 - .25, .75) = .75, baseline min(1 - .5, 1) = .5
    assert row["targets"] == ("circle",) and row["act_score"] == pytest.approx(0.75)
    assert row["baseline_score"] == pytest.approx(0.5) and row["difference"][0] == pytest.approx(0.25)
    lines = []
    R._best_table(results, "student", "negation", lines.append)
    text = "\n".join(lines)
    assert "some targets only" in text and "(circle)" in text


def test_wilson_interval_known_answers():
    from act_core.diffusion.miniworld.report import wilson

    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson(1.0, 20)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.8389, abs=1e-3)
