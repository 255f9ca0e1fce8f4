"""The miniature study: presence against content per method, over seeds, with bootstrap intervals.

A *cell* is one (regime, task, target, method, knob value): ``n`` held-out prompts × ``seeds``
generations, each image judged by :class:`~act_core.diffusion.miniworld.judges.Judges`:

- style ``s``: ``presence`` = the judge calls the image ``s``; ``content`` = every prompted shape
  (CNN) and colour (histogram) is found.
- negation of shape ``k`` (the prompt names a ``k`` and one other object): ``presence`` = a ``k``
  is found; ``content`` = the other object's shape and colour are found; ``color_gone`` = the
  ``k`` object's colour is absent.

Held-out prompts: captions of evaluation scenes (seed ``EVAL_SEED``) that are not among the
fit prompts of the same task/target. The same prompt list and seeds are used for every method,
so images at position ``i`` and seed ``s`` share their initial noise across methods (paired).

Intervals: 95% percentile bootstrap over prompts (each prompt's value is its mean over seeds;
``B`` = 2000 resamples, fixed seed); for an average over targets, each target's prompts are
resampled independently and the targets' means averaged.

Regimes: ``student`` = the distilled 4-step student, Euler trailing, CFG off (the paper's
SDXL-Lightning regime); ``teacher`` = the 20-step base model with CFG 4.

Method kinds (the knob in brackets):

- ``act``: a map from :func:`act_core.diffusion.pipeline.fit_sdxl_map` (collected at t = 999,
  one step, CFG off), applied at every step [λ].
- ``gated``: a text-encoder map applied only at some token positions
  (:mod:`act_core.diffusion.miniworld.variants`) [λ].
- ``meanvec``: the mean-difference steering vector on the same layers
  (:func:`act_core.diffusion.baselines.mean_difference_map`) [scale].
- ``prompt``: the prompt rewritten (style named; "without a k"; the object deleted) [none].
- ``negprompt``: a negative prompt with CFG (teacher) [guidance scale].
- ``nag``: Normalized Attention Guidance with a negative prompt, CFG off [NAG scale].
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import experiments as E
from . import world as W

SEEDS = (0, 1, 2)
N_EVAL = 48
N_FIT = 64
BOOTSTRAP = 2000
VALIDATION_SEED = E.EVAL_SEED + 500  # the screen's prompts (the test prompts use E.EVAL_SEED)
CONFIRM_SEED = E.EVAL_SEED + 1000  # fresh prompts that re-measure the winners
TEXT_AND_EMBEDDINGS = ("text_encoder_layers", r"text_encoder(_2)?\.embeddings")
KINDS = ("act", "gated", "meanvec", "prompt", "negprompt", "nag")


@dataclass(frozen=True)
class Method:
    """One curve: a way to steer and its knob values. ``fit`` (kinds act/gated/meanvec): keyword
    arguments for the map fit — ``method``, ``layers``, ``procedure``, ``pooling``, ``pairs``
    (style: ``style``; negation: ``remove`` (two objects -> one) or ``swap`` (the shape -> the
    third shape)). ``text``: prompt rewrite (``style``, ``without``, ``oracle``) or negative
    prompt (``word`` "circle", ``article`` "a circle", ``phrase`` "a small red circle")."""

    name: str
    kind: str
    values: Tuple[float, ...]
    fit: Tuple[Tuple[str, Any], ...] = ()
    support: Optional[str] = None
    positions: Optional[str] = None  # gated: "eos", "words", "from_concept", "at_concept"
    text: Optional[str] = None
    group: str = ""
    nag_tau: float = 2.5  # NAG's normalisation threshold τ and blend α (kind "nag")
    nag_alpha: float = 0.25

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown method kind {self.kind!r}: choose one of {', '.join(KINDS)}")

    @property
    def fit_kwargs(self) -> Dict[str, Any]:
        d = {"method": "linear", "layers": "unet_norms", "procedure": "simultaneous", "pooling": "mean",
             "pairs": "default"}
        d.update(dict(self.fit))
        return d

    @property
    def knob(self) -> str:
        return {"act": "λ", "gated": "λ", "meanvec": "scale", "prompt": "-", "negprompt": "CFG",
                "nag": "NAG scale"}[self.kind]


def act(name, values, group="", support=None, **fit) -> Method:
    return Method(name, "act", tuple(values), tuple(sorted(fit.items())), support=support, group=group)


def gated(name, values, positions, group="", support=None, **fit) -> Method:
    return Method(name, "gated", tuple(values), tuple(sorted(fit.items())), support=support, positions=positions,
                  group=group)


def meanvec(name, values, group="baseline", **fit) -> Method:
    return Method(name, "meanvec", tuple(values), tuple(sorted({**fit, "method": "mean"}.items())), group=group)


# -- prompts ---------------------------------------------------------------------------------------


def heldout_scenes(task: str, target: str, n: int = N_EVAL, n_fit: int = N_FIT,
                   seed: int = E.EVAL_SEED) -> List[W.Scene]:
    """``n`` evaluation scenes whose captions are not fit prompts of this task/target."""
    if task == "style":
        fit = set(E.style_pairs(target, n_fit)[0])
        pool = W.sample_scenes(8 * n, seed=seed, style="none")
    elif task == "negation":
        fit = set(E.negation_pairs(target, n_fit)[0]) | set(E.swap_pairs(target, n_fit)[0])
        pool = E.negation_eval_scenes(target, 8 * n, seed=seed)
    else:
        raise ValueError(f"unknown task {task!r}: style or negation")
    out = [s for s in pool if W.caption(s) not in fit][:n]
    if len(out) < n:
        raise ValueError(f"only {len(out)} held-out scenes for {task}:{target}")
    return out


def rewrite(scene: W.Scene, task: str, target: str, text: str) -> str:
    """The prompt an artist writes instead of steering."""
    if task == "style" and text == "style":
        return W.caption(W.with_style(scene, target))
    if task == "negation" and text == "without":
        return f"{W.caption(scene)}, without a {target}"
    if task == "negation" and text == "oracle":
        return W.caption(W.without_shape(scene, target))
    raise ValueError(f"no prompt rewrite {text!r} for {task}")


def negative_text(scene: W.Scene, target: str, text: str) -> str:
    if text == "word":
        return target
    if text == "article":
        return f"a {target}"
    if text == "phrase":
        return W.object_phrase(next(o for o in scene.objects if o.shape == target))
    raise ValueError(f"unknown negative prompt form {text!r}: word, article or phrase")


# -- scoring ---------------------------------------------------------------------------------------


def score_images(j: dict, scenes: Sequence[W.Scene], task: str, target: str) -> Dict[str, np.ndarray]:
    """Per-image booleans (see the module docstring)."""
    if task == "style":
        content = [all(j["shapes"][i][W.SHAPES.index(o.shape)] and j["colors"][i][W.COLOR_NAMES.index(o.color)]
                       for o in s.objects) for i, s in enumerate(scenes)]
        return {"presence": np.asarray(j["style"] == target), "content": np.asarray(content)}
    k = W.SHAPES.index(target)
    content, gone = [], []
    for i, s in enumerate(scenes):
        other = [o for o in s.objects if o.shape != target]
        content.append(all(j["shapes"][i][W.SHAPES.index(o.shape)] and j["colors"][i][W.COLOR_NAMES.index(o.color)]
                           for o in other))
        neg = next(o for o in s.objects if o.shape == target)
        gone.append(not j["colors"][i][W.COLOR_NAMES.index(neg.color)])
    return {"presence": np.asarray(j["shapes"][:, k]), "content": np.asarray(content), "color_gone": np.asarray(gone)}


def _bits(a: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in np.asarray(a).ravel())


def unbits(s: str, shape) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8).reshape(shape) == ord("1")


def cell_arrays(cell: dict) -> Dict[str, np.ndarray]:
    """``{metric: (seeds, n) bool}`` of a stored cell."""
    shape = (len(cell["seeds"]), cell["n"])
    return {k: unbits(cell[k], shape) for k in ("presence", "content", "color_gone") if k in cell}


def bootstrap(per_prompt: Sequence[np.ndarray], b: int = BOOTSTRAP, seed: int = 0) -> Tuple[float, float, float]:
    """Mean over targets of the per-prompt means, with a 95% percentile bootstrap interval
    (prompts resampled within each target). ``per_prompt``: one ``(n,)`` array per target."""
    rng = np.random.default_rng(seed)
    est = float(np.mean([a.mean() for a in per_prompt]))
    draws = np.zeros(b)
    for a in per_prompt:
        idx = rng.integers(0, len(a), (b, len(a)))
        draws += a[idx].mean(1)
    draws /= len(per_prompt)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return est, float(lo), float(hi)


def summarize(cells: Sequence[dict], metric: str) -> Tuple[float, float, float]:
    """Mean and 95% CI of ``metric`` over one or several cells (several = average over targets)."""
    return bootstrap([cell_arrays(c)[metric].mean(0) for c in cells])


# -- running ---------------------------------------------------------------------------------------


def cell_key(regime: str, task: str, target: str, method: str, value) -> str:
    v = "-" if value is None else f"{float(value):g}"
    return f"{regime}|{task}|{target}|{method}|{v}"


@dataclass
class Study:
    """Runs cells for one regime (a loaded pipeline) and stores them in ``results["cells"]``."""

    regime: str
    pipe: Any
    judges: Any
    results: dict
    n: int = N_EVAL
    seeds: Tuple[int, ...] = SEEDS
    n_fit: int = N_FIT
    eval_seed: int = E.EVAL_SEED
    log: Callable[[str], None] = print
    save: Callable[[], None] = lambda: None
    store: str = "cells"  # where in ``results`` the cells go ("screen" for the validation-prompt screen)
    _scenes: Dict[tuple, list] = field(default_factory=dict)
    _maps: Dict[str, Any] = field(default_factory=dict)

    def scenes(self, task: str, target: str) -> List[W.Scene]:
        key = (task, target)
        if key not in self._scenes:
            self._scenes[key] = heldout_scenes(task, target, self.n, self.n_fit, self.eval_seed)
        return self._scenes[key]

    def tmap(self, task: str, target: str, method: Method):
        from ..pipeline import fit_sdxl_map

        kw = method.fit_kwargs
        key = json.dumps([task, target, kw], sort_keys=True)
        if key not in self._maps:
            pairs = kw.pop("pairs")
            layers = TEXT_AND_EMBEDDINGS if kw["layers"] == "text+embeddings" else kw["layers"]
            t0 = time.time()
            if pairs == "phrase_to_pad":  # token rows: the named phrase -> padding (variants.fit_token_map)
                from .variants import fit_token_map, word_ids

                src = E.negation_pairs(target, self.n_fit)[0]
                self._maps[key] = fit_token_map(self.pipe, src, ("phrase", word_ids(self.pipe, target)), "eos", layers,
                                                kw["method"], world="miniworld", task=task, concept=target,
                                                pairs=pairs)
                self.log(f"[{self.regime}] fitted {task}:{target} {method.fit_kwargs} ({time.time() - t0:.1f}s)")
                return self._maps[key]
            if pairs == "eos_tokens":  # token rows at the end-of-text/padding positions: plain -> styled
                from .variants import fit_token_map

                src, tgt = E.style_pairs(target, self.n_fit)
                self._maps[key] = fit_token_map(self.pipe, src, "eos", "eos", layers, kw["method"], target_prompts=tgt,
                                                world="miniworld", task=task, style=target, pairs=pairs)
                self.log(f"[{self.regime}] fitted {task}:{target} {method.fit_kwargs} ({time.time() - t0:.1f}s)")
                return self._maps[key]
            if task == "style":
                src, tgt = E.style_pairs(target, self.n_fit)
            elif pairs == "swap":
                src, tgt = E.swap_pairs(target, self.n_fit)
            else:
                src, tgt = E.negation_pairs(target, self.n_fit)
            self._maps[key] = fit_sdxl_map(self.pipe, src, tgt, layers, kw["method"], kw["procedure"],
                                           pooling=kw["pooling"], seed=0, batch_size=32, world="miniworld",
                                           task=task, pairs=pairs,
                                           **({"style": target} if task == "style" else {"concept": target}))
            self.log(f"[{self.regime}] fitted {task}:{target} {method.fit_kwargs} "
                     f"({len(self._maps[key])} modules, {time.time() - t0:.1f}s)")
        return self._maps[key]

    def images(self, task: str, target: str, method: Optional[Method], value, seed: int,
               limit: Optional[int] = None) -> np.ndarray:
        """uint8 (n, 32, 32, 3) for one seed (the first ``limit`` prompts); ``method=None``: unsteered."""
        from ..pipeline import generate

        scenes = self.scenes(task, target)[:limit]
        prompts = [W.caption(s) for s in scenes]

        def gen(ps=prompts, tmap=None, strength=0.0, **kw):
            imgs = generate(self.pipe, list(ps), tmap, strength=strength, seed=seed, output_type="np", **kw)
            return (np.clip(np.asarray(imgs), 0, 1) * 255).round().astype(np.uint8)

        if method is None:
            return gen()
        if method.kind == "prompt":
            return gen([rewrite(s, task, target, method.text) for s in scenes])
        if method.kind == "act":
            return gen(tmap=self.tmap(task, target, method), strength=float(value), support=method.support)
        if method.kind == "meanvec":
            from ..baselines import mean_difference_map

            return gen(tmap=mean_difference_map(self.tmap(task, target, method)), strength=float(value))
        if method.kind == "gated":
            from .variants import token_gated_steer, word_ids

            pos = method.positions
            if pos in ("from_concept", "at_concept", "phrase_concept"):
                pos = (pos.split("_")[0], word_ids(self.pipe, target))
            with token_gated_steer(self.pipe, self.tmap(task, target, method), float(value), pos, method.support):
                return gen()
        negs = [negative_text(s, target, method.text) for s in scenes]
        if method.kind == "negprompt":
            return gen(negative_prompt=negs, guidance=float(value))
        if method.kind == "nag":
            from ..baselines import nag

            with nag(self.pipe, negs, scale=float(value), tau=method.nag_tau, alpha=method.nag_alpha):
                return gen()
        raise ValueError(method.kind)

    def run_cell(self, task: str, target: str, method: Optional[Method], value, tag: Optional[str] = None) -> dict:
        name = "unsteered" if method is None else method.name
        key = cell_key(self.regime, task, target, name, value)
        cells = self.results.setdefault(self.store, {})
        if key in cells and cells[key]["n"] == self.n and cells[key]["seeds"] == list(self.seeds):
            return cells[key]
        t0 = time.time()
        scenes = self.scenes(task, target)
        per_seed = []
        for s in self.seeds:
            imgs = self.images(task, target, method, value, s)
            per_seed.append(score_images(self.judges.judge(imgs), scenes, task, target))
        cell = {"regime": self.regime, "task": task, "target": target, "method": name,
                "kind": "unsteered" if method is None else method.kind,
                "group": "unsteered" if method is None else method.group, "value": value,
                "n": self.n, "seeds": list(self.seeds), "seconds": round(time.time() - t0, 1)}
        if method is not None:
            cell.update(knob=method.knob, fit=method.fit_kwargs if method.kind in ("act", "gated", "meanvec") else None,
                        support=method.support, positions=method.positions, text=method.text,
                        **({"nag_tau": method.nag_tau, "nag_alpha": method.nag_alpha} if method.kind == "nag" else {}))
        for m in per_seed[0]:
            cell[m] = _bits(np.stack([p[m] for p in per_seed]))
        cells[key] = cell
        p, c = cell_arrays(cell)["presence"].mean(), cell_arrays(cell)["content"].mean()
        self.log(f"[{key}] presence {p:.2f} content {c:.2f} ({cell['seconds']}s)")
        self.save()
        return cell

    def run(self, task: str, target: str, method: Method) -> List[dict]:
        return [self.run_cell(task, target, method, v) for v in method.values]


# -- the catalogue ---------------------------------------------------------------------------------

LAMBDAS = (0.5, 1.0, 1.5, 2.0)
SCREEN_LAMBDAS = (0.5, 1.0, 2.0)
SCREEN_LAYERS = ("unet_norms", "unet_groupnorms", "unet_layernorms", "unet_attention_outputs", "unet_cross_attention",
                 "unet_transformer_blocks", "unet_resnets", "unet_mid_block", "text_encoder_layers",
                 "text_encoder_mlp", "text_encoder_norms")
SCREEN_VARIANTS = (("Linear q_0_100", "linear", None), ("Linear all", "linear", "all"), ("Mean", "mean", None))


def screen_methods() -> List[Method]:
    """Every layer preset × {Linear-AcT on q_0_100, Linear-AcT on all, Mean-AcT}, simultaneous fit."""
    return [act(f"{layers} | {label}", SCREEN_LAMBDAS, group="screen", support=sup, layers=layers, method=m)
            for layers in SCREEN_LAYERS for label, m, sup in SCREEN_VARIANTS]


def screen_score(task: str, presence: float, content: float) -> float:
    """One number per screened point: the worse of the two goals (style: presence and content;
    negation: absence and content)."""
    return min(presence, content) if task == "style" else min(1.0 - presence, content)


def best_screened(results: dict, task: str, k: int = 2, exclude: Sequence[str] = ("unet_norms", "text_encoder_layers")
                  ) -> List[Tuple[str, str, Optional[str], float]]:
    """The ``k`` best screened (layers, method, support) for ``task`` by their best
    :func:`screen_score` over λ, averaged over the task's targets; presets in ``exclude`` skipped."""
    targets = W.STYLES[1:] if task == "style" else W.SHAPES
    scores = []
    for layers in SCREEN_LAYERS:
        if layers in exclude:
            continue
        for label, m, sup in SCREEN_VARIANTS:
            name = f"{layers} | {label}"
            best = []
            for t in targets:
                vals = []
                for lam in SCREEN_LAMBDAS:
                    c = results.get("screen", {}).get(cell_key("student", task, t, name, lam))
                    if c:
                        a = cell_arrays(c)
                        vals.append(screen_score(task, a["presence"].mean(), a["content"].mean()))
                if vals:
                    best.append(max(vals))
            if len(best) == len(targets):
                scores.append((layers, m, sup, float(np.mean(best))))
    return sorted(scores, key=lambda x: -x[3])[:k]


def main_methods(task: str, regime: str, screened: Sequence[Tuple[str, str, Optional[str], float]] = ()
                 ) -> List[Method]:
    """The curves of the study for one task and regime (reasons in docs/miniworld.md).

    ``paper``: the reference's recipe and its switches (pooled fit at t = 999, applied at every
    step): UNet norms vs text-encoder layers, Linear vs Mean, q_0_100 vs all, simultaneous vs
    causal. ``layers``: the two best layer sets of the screen (student only). ``variant``: other
    pair designs and token-level / token-gated maps. ``baseline``: what an artist would use
    instead. ``reference``: the words deleted from the prompt (not a steering method: the bar)."""
    L = LAMBDAS
    teacher = regime == "teacher"
    if teacher:
        L = (0.5, 1.0, 2.0)
    out = [
        act("UNet norms, Linear, q_0_100 (paper)", L, "paper"),
        act("UNet norms, Linear, all", L, "paper", support="all"),
        act("UNet norms, Mean-AcT", L, "paper", method="mean"),
        act("UNet norms, Linear, causal", L, "paper", procedure="causal"),
        act("text layers, Linear, q_0_100", L, "paper", layers="text_encoder_layers"),
        act("text layers, Linear, all", L, "paper", support="all", layers="text_encoder_layers"),
        act("text layers, Mean-AcT", L, "paper", layers="text_encoder_layers", method="mean"),
    ]
    if not teacher:
        out.append(act("text layers, Linear, causal", L, "paper", layers="text_encoder_layers", procedure="causal"))
    for layers, m, sup, _ in screened:  # screened on the student; the same sets on the teacher
        label = "Mean-AcT" if m == "mean" else f"Linear, {sup or 'q_0_100'}"
        out.append(act(f"{layers}, {label} (screened)", L, "layers", support=sup, layers=layers, method=m))
    fine = (0.75, 1.0, 1.5) if teacher else (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)
    if task == "style":
        out += [
            gated(EOS_TOKENS_ALL, fine, "eos", "variant", support="all", layers="text_encoder_layers",
                  pairs="eos_tokens"),
        ]
        if not teacher:
            out += [
                gated("text layers, EOS-token fit, Linear q_0_100, EOS-gated", fine, "eos", "variant",
                      layers="text_encoder_layers", pairs="eos_tokens"),
                gated("text layers, EOS-token fit, Mean-AcT, EOS-gated", fine, "eos", "variant",
                      layers="text_encoder_layers", pairs="eos_tokens", method="mean"),
                gated("text layers, pooled fit, Linear all, EOS-gated", (0.75, 1.0, 1.25, 1.5, 2.0), "eos", "variant",
                      support="all", layers="text_encoder_layers"),
                act("text layers, token-level fit (all positions), Linear", (0.5, 1.0, 1.5), "variant",
                    layers="text_encoder_layers", pooling="none"),
            ]
        out.append(Method("prompt: '…, in X style'", "prompt", (None,), text="style", group="baseline"))
    else:
        out += [
            gated(PHRASE_TO_PAD_ALL, fine, "phrase_concept", "variant", support="all", layers="text+embeddings",
                  pairs="phrase_to_pad"),
        ]
        if not teacher:
            out += [
                gated("phrase→padding token map, Linear q_0_100, phrase-gated", fine, "phrase_concept", "variant",
                      layers="text+embeddings", pairs="phrase_to_pad"),
                gated("phrase→padding token map, Mean-AcT, phrase-gated", fine, "phrase_concept", "variant",
                      layers="text+embeddings", pairs="phrase_to_pad", method="mean"),
                gated("phrase→padding, layers without embeddings, Linear all", (1.0, 1.5), "phrase_concept",
                      "variant", support="all", layers="text_encoder_layers", pairs="phrase_to_pad"),
                act("text layers, Linear, swap pairs", L, "variant", layers="text_encoder_layers", pairs="swap"),
                act("UNet norms, Linear all, swap pairs", L, "variant", support="all", pairs="swap"),
                gated("token-level swap map, gated from the word", (1.0, 2.0, 4.0), "from_concept", "variant",
                      support="all", layers="text_encoder_layers", pooling="none", pairs="swap"),
                gated("token-level remove map, gated from the word", (1.0, 2.0, 4.0), "from_concept", "variant",
                      layers="text_encoder_layers", pooling="none", pairs="remove"),
            ]
        out += [
            Method("prompt: '…, without a k'", "prompt", (None,), text="without", group="baseline"),
            Method("prompt: object deleted (reference)", "prompt", (None,), text="oracle", group="reference"),
        ]
        if not teacher:
            nag_scales = (2.0, 3.0, 5.0, 8.0, 12.0)
            out += [
                Method("NAG α 0.25 τ 2.5, negative 'a k'", "nag", nag_scales, text="article", group="baseline"),
                Method("NAG α 0.25 τ 2.5, negative 'a small red k'", "nag", nag_scales, text="phrase",
                       group="baseline"),
                Method("NAG α 0.5 τ 2.5, negative 'a small red k'", "nag", nag_scales, text="phrase", group="baseline",
                       nag_alpha=0.5),
                Method("NAG α 1 τ 2.5, negative 'a small red k'", "nag", nag_scales, text="phrase", group="baseline",
                       nag_alpha=1.0),
                Method("NAG α 0.5 τ 10, negative 'a small red k'", "nag", nag_scales, text="phrase", group="baseline",
                       nag_alpha=0.5, nag_tau=10.0),
            ]
        else:
            out += [
                Method("negative prompt 'a k', CFG", "negprompt", (4.0, 6.0, 8.0), text="article", group="baseline"),
                Method("negative prompt 'a small red k', CFG", "negprompt", (4.0, 6.0, 8.0), text="phrase",
                       group="baseline"),
            ]
    S_ = (1.0, 2.0, 4.0) if teacher else (0.5, 1.0, 2.0, 4.0)
    out += [meanvec("mean-difference vector, UNet norms", S_),
            meanvec("mean-difference vector, text layers", S_, layers="text_encoder_layers")]
    return out


EOS_TOKENS_ALL = "text layers, EOS-token fit, Linear all, EOS-gated"
PHRASE_TO_PAD_ALL = "phrase→padding token map, Linear all, phrase-gated"
