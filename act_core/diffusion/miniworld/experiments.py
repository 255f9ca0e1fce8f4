"""Style control and concept negation on the miniature SDXL, measured by the judges per λ.

Maps are fitted with the same code as for real SDXL (:func:`act_core.diffusion.pipeline.fit_sdxl_map`:
one denoising step at t = 999, mean-pooled activations); prompts come from the procedural world:

- **style** ``s``: source = plain captions of random scenes, target = the same captions +
  ", in {s} style". Evaluation prompts: plain captions of held-out scenes (no style words).
  Measured: ``presence`` = fraction of images the judge classifies as ``s``; ``content`` =
  fraction where every prompted shape (CNN) and every prompted colour (histogram) is found.
- **negation** of shape ``k``: source = captions of two-object scenes where one object is a
  ``k``, target = the same captions without that object. Evaluation prompts: held-out two-object
  captions that NAME a ``k`` ("a small red circle and a large blue square …"). Measured:
  ``presence`` = fraction with a ``k`` found; ``color_gone`` = fraction where the removed
  object's colour is absent; ``content`` (the other object kept) = its shape and colour found.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import world as W

FIT_SEED, EVAL_SEED = 1000, 2000


def style_pairs(style: str, n: int = 64, seed: int = FIT_SEED) -> Tuple[List[str], List[str]]:
    scenes = W.sample_scenes(n, seed=seed, style="none")
    return [W.caption(s) for s in scenes], [W.caption(W.with_style(s, style)) for s in scenes]


def negation_pairs(shape: str, n: int = 64, seed: int = FIT_SEED) -> Tuple[List[str], List[str]]:
    scenes = _scenes_with(shape, n, seed)
    return [W.caption(s) for s in scenes], [W.caption(W.without_shape(s, shape)) for s in scenes]


def swap_pairs(shape: str, n: int = 64, seed: int = FIT_SEED) -> Tuple[List[str], List[str]]:
    """Negation by replacement: the ``shape`` object becomes the third shape (count, layout, colours kept)."""
    scenes = _scenes_with(shape, n, seed)
    tgt = []
    for s in scenes:
        third = next(k for k in W.SHAPES if k not in s.shapes())
        objs = tuple(W.Obj(third, o.color, o.size, o.x, o.y) if o.shape == shape else o for o in s.objects)
        tgt.append(W.caption(W.Scene(objs, s.background, s.style)))
    return [W.caption(s) for s in scenes], tgt


def _scenes_with(shape: str, n: int, seed: int) -> List[W.Scene]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        other = str(rng.choice([s for s in W.SHAPES if s != shape]))
        pair = [shape, other] if i % 2 == 0 else [other, shape]  # the concept on the left or on the right
        out.append(W.make_scene(rng, shapes=pair, style="none"))
    return out


def style_eval_scenes(n: int = 24, seed: int = EVAL_SEED) -> List[W.Scene]:
    return W.sample_scenes(n, seed=seed, style="none")


def negation_eval_scenes(shape: str, n: int = 24, seed: int = EVAL_SEED) -> List[W.Scene]:
    return _scenes_with(shape, n, seed)


# -- scoring -------------------------------------------------------------------------------------


def _content(j: dict, scenes: Sequence[W.Scene], skip_shape: Optional[str] = None) -> np.ndarray:
    ok = []
    for i, s in enumerate(scenes):
        objs = [o for o in s.objects if o.shape != skip_shape]
        good = all(j["shapes"][i][W.SHAPES.index(o.shape)] for o in objs)
        good &= all(j["colors"][i][W.COLOR_NAMES.index(o.color)] for o in objs)
        ok.append(good)
    return np.array(ok)


def score_style(j: dict, scenes: Sequence[W.Scene], style: str) -> Dict[str, float]:
    return {"presence": float((j["style"] == style).mean()), "content": float(_content(j, scenes).mean()),
            "shapes": float(np.mean([all(j["shapes"][i][W.SHAPES.index(o.shape)] for o in s.objects)
                                     for i, s in enumerate(scenes)])),
            "colors": float(np.mean([all(j["colors"][i][W.COLOR_NAMES.index(o.color)] for o in s.objects)
                                     for i, s in enumerate(scenes)])),
            "luminance": float(j["luminance"].mean()), "edge_density": float(j["edge_density"].mean()),
            "color_fill": float(j["color_fill"].mean()), "blockiness": float(j["blockiness"].mean())}


def score_negation(j: dict, scenes: Sequence[W.Scene], shape: str) -> Dict[str, float]:
    k = W.SHAPES.index(shape)
    gone = [not j["colors"][i][W.COLOR_NAMES.index(next(o.color for o in s.objects if o.shape == shape))]
            for i, s in enumerate(scenes)]
    return {"presence": float(j["shapes"][:, k].mean()), "color_gone": float(np.mean(gone)),
            "content": float(_content(j, scenes, skip_shape=shape).mean())}


# -- running -------------------------------------------------------------------------------------


def generate_np(pipe, prompts: Sequence[str], tmap=None, strength: float = 0.0, seed: int = 0, **kw) -> np.ndarray:
    from ..pipeline import generate

    imgs = generate(pipe, list(prompts), tmap, strength=strength, seed=seed, output_type="np", **kw)
    return (np.clip(np.asarray(imgs), 0, 1) * 255).round().astype(np.uint8)


def fit(pipe, task: str, target: str, method: str = "linear", layers="unet_norms", procedure: str = "simultaneous",
        n: int = 64, seed: int = 0, progress=None):
    from ..pipeline import fit_sdxl_map, fit_step_maps

    if task == "style":
        src, tgt = style_pairs(target, n)
        meta = dict(task="style", style=target, condition=f"{target} style")
    elif task == "negation":
        src, tgt = negation_pairs(target, n)
        meta = dict(task="negation", concept=target, condition=target)
    elif task == "negation_swap":
        src, tgt = swap_pairs(target, n)
        meta = dict(task="negation", concept=target, condition=target, negation_mode="swap")
    else:
        raise ValueError(f"unknown task {task!r}: choose style, negation or negation_swap")
    if procedure == "per_step":  # EXPERIMENTAL: one map per denoising step (a dict {step: map})
        return fit_step_maps(pipe, src, tgt, layers, method=method, seed=seed, batch_size=32, world="miniworld",
                             **meta)
    return fit_sdxl_map(pipe, src, tgt, layers, method, procedure, seed=seed, batch_size=32, progress=progress,
                        world="miniworld", **meta)


def sweep(pipe, judges, task: str, target: str, tmap, strengths: Sequence[float], n: int = 24, seed: int = 0,
          cache: Optional[dict] = None, **gen) -> Tuple[List[dict], Dict[float, np.ndarray]]:
    """Rows ``{strength, presence, content, ...}`` and the images per λ (λ = 0 reused from ``cache``)."""
    scenes = style_eval_scenes(n) if task == "style" else negation_eval_scenes(target, n)
    prompts = [W.caption(s) for s in scenes]
    rows, images = [], {}
    kind = "style" if task == "style" else "negation"
    for lam in strengths:
        key = (kind, target, n, seed)
        if lam == 0 and cache is not None and key in cache:
            imgs = cache[key]
        else:
            imgs = generate_np(pipe, prompts, tmap if lam else None, float(lam), seed=seed, **gen)
            if lam == 0 and cache is not None:
                cache[key] = imgs
        images[lam] = imgs
        j = judges.judge(imgs)
        r = score_style(j, scenes, target) if kind == "style" else score_negation(j, scenes, target)
        rows.append({"strength": float(lam), **r})
    return rows, images


def prompted_reference(pipe, judges, task: str, target: str, n: int = 24, seed: int = 0, **gen) -> dict:
    """What the prompt alone achieves: the style named in the prompt / the concept object left out."""
    if task == "style":
        scenes = style_eval_scenes(n)
        prompts = [W.caption(W.with_style(s, target)) for s in scenes]
        return score_style(judges.judge(generate_np(pipe, prompts, seed=seed, **gen)), scenes, target)
    scenes = negation_eval_scenes(target, n)
    prompts = [W.caption(W.without_shape(s, target)) for s in scenes]
    return score_negation(judges.judge(generate_np(pipe, prompts, seed=seed, **gen)), scenes, target)


def upscale(img: np.ndarray, k: int = 3):
    from PIL import Image

    return Image.fromarray(img).resize((img.shape[1] * k, img.shape[0] * k), Image.NEAREST)


def grid(images: Dict[float, np.ndarray], prompts: Sequence[str], rows: int = 4, k: int = 3):
    from ..images import label_grid

    lams = list(images)
    cells = [[upscale(images[l][i], k) for l in lams] for i in range(min(rows, len(prompts)))]
    return label_grid(cells, [f"lambda={l:g}" for l in lams], list(prompts)[:rows])


def line_plot(series: Dict[str, List[Tuple[float, float]]], path, title: str = "", ylabel: str = ""):
    """A line chart of several ``name -> [(λ, value in 0..1)]`` series, saved as a PNG."""
    from ...plotting import line_plot as plot_panels

    panel = {"title": title, "xlabel": "lambda", "ylabel": ylabel, "ylim": (0.0, 1.0),
             "series": {name: ([x for x, _ in pts], [y for _, y in pts]) for name, pts in series.items()}}
    return plot_panels([panel], path, (560, 340))


def table(rows: Sequence[dict], cols: Sequence[str]) -> str:
    head = "| λ | " + " | ".join(cols) + " |"
    sep = "|" + "---|" * (len(cols) + 1)
    body = [f"| {r['strength']:g} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |" for r in rows]
    return "\n".join([head, sep] + body)
