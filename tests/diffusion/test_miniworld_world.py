"""The procedural world and the deterministic judges: known answers (no model weights needed)."""

import numpy as np
import pytest

from act_core.diffusion.miniworld import judges as J
from act_core.diffusion.miniworld import world as W


def test_dataset_is_deterministic_and_seeded():
    a, ca, sa = W.dataset(12, seed=3)
    b, cb, sb = W.dataset(12, seed=3)
    c, cc, _ = W.dataset(12, seed=4)
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ca == cb and sa == sb
    assert not np.array_equal(a, c) and ca != cc


def test_caption_from_attributes():
    s = W.Scene((W.Obj("circle", "red", "small", 9, 16), W.Obj("square", "blue", "large", 23, 16)), "striped", "sketch")
    assert W.caption(s) == "a small red circle and a large blue square on a striped background, in sketch style"
    assert W.caption(W.with_style(s, "none")) == "a small red circle and a large blue square on a striped background"
    assert W.caption(W.without_shape(s, "circle"), style=False) == "a large blue square on a striped background"


def test_two_objects_differ_and_sit_left_then_right():
    for s in W.sample_scenes(300, seed=1, n_objects=2):
        a, b = s.objects
        assert a.shape != b.shape and a.color != b.color
        assert a.x + W.SIZES[a.size] <= 16.5 and b.x - W.SIZES[b.size] >= 15.5


def test_bad_attributes_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown style"):
        W.make_scene(rng, style="cubism")
    with pytest.raises(ValueError, match="unknown shape"):
        W.render(W.Scene((W.Obj("hexagon", "red", "small", 16, 16),)))
    with pytest.raises(ValueError, match="entries"):
        W.make_scene(rng, shapes=["circle", "square"], colors=["red"])


def test_colour_judge_is_exact_on_rendered_scenes_in_every_style():
    images, _, scenes = W.dataset(400, seed=7, p_none=0.2)
    truth = np.array([[c in [o.color for o in s.objects] for c in W.COLOR_NAMES] for s in scenes])
    assert np.array_equal(J.colors_present(images), truth)
    two = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    left = np.array([[c == scenes[i].objects[0].color for c in W.COLOR_NAMES] for i in two])
    assert np.array_equal(J.colors_present(images[two], "left"), left)


def test_style_measurements_separate_styles():
    rng = np.random.default_rng(0)
    base = [W.make_scene(rng, style="none") for _ in range(40)]
    m = {st: J.measure(np.stack([W.render(W.with_style(s, st), seed=i) for i, s in enumerate(base)]))
         for st in W.STYLES}
    assert m["poster"]["luminance"].max() < 0.45 < m["none"]["luminance"].min()
    assert m["watercolor"]["edge_density"].max() < 0.02 < 0.1 < m["none"]["edge_density"].mean()
    assert (m["watercolor"]["edge_density"] <= m["none"]["edge_density"]).all()
    assert m["pixel_art"]["blockiness"].min() > 0.9 > m["none"]["blockiness"].max()
    assert m["sketch"]["color_fill"].mean() < 0.6 * m["none"]["color_fill"].mean()
    # styles change appearance, not content: the same colours are found
    for st in W.STYLES:
        imgs = np.stack([W.render(W.with_style(s, st), seed=i) for i, s in enumerate(base)])
        truth = np.array([[c in [o.color for o in s.objects] for c in W.COLOR_NAMES] for s in base])
        assert np.array_equal(J.colors_present(imgs), truth), st


def test_as_array_accepts_pil_and_floats():
    from PIL import Image

    img = W.render(W.make_scene(np.random.default_rng(1)))
    assert np.array_equal(J.as_array([Image.fromarray(img)]), img[None])
    assert np.array_equal(J.as_array(img[None].astype(np.float32) / 255), img[None])
