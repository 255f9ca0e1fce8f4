"""The embedded demos (no download needed).

``run_demo`` (``act-steer demo``, ``bash tools/demo.sh``): on the miniature SDXL trained in this
repository on a procedural world (:mod:`act_core.diffusion.miniworld`), fit a style map and a concept
negation map with the same code as for real SDXL, write labelled λ-sweep grids and a table of
what the world's judges measure per λ (style presence, the negated shape's presence, content
kept). With ``model=PATH`` it runs on a real SDXL-family model instead (no judges there: grids
only; use ``act-steer evaluate`` with a CLIP model for numbers).

``run_llm_demo`` (``act-steer demo --llm``): the earlier tiny-Llama demo. Two "prompt sets" are token sequences drawn from two disjoint halves of the vocabulary.
A Linear-AcT map is fitted on every layer norm of a tiny Llama, saved, reloaded and
applied; the demo prints how far the steered source activations are from the target
distribution at λ = 0, 0.5, 1 (a 1-D Wasserstein distance between pooled activations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..fitting import fit_map
from ..hooks import ActivationCollector, run_until_stop, steer
from ..mapfile import TransportMap
from .common import CLIError, ProgressBar, positive_int


class TokenRunner:
    """Runner over lists of token-id lists for any HF-style model taking ``input_ids``."""

    def __init__(self, model: torch.nn.Module, architecture: str, batch_size: int = 16):
        self.model, self.architecture, self.batch_size = model, architecture, batch_size

    @torch.no_grad()
    def run(self, inputs: Sequence[Sequence[int]], collector: ActivationCollector) -> None:
        for i in range(0, len(inputs), self.batch_size):
            ids = torch.tensor(inputs[i : i + self.batch_size])
            collector.attention_mask = torch.ones_like(ids)
            run_until_stop(self.model, input_ids=ids)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over units of the 1-D W1 distance between two sample sets (equal sizes)."""
    return (a.sort(0).values - b.sort(0).values).abs().mean().item()


def build_tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def run_llm_demo(out: str = "act-demo", seed: int = 0) -> dict:
    model = build_tiny_llama(seed)
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(0, 64, (96, 12), generator=g).tolist()
    target = torch.randint(64, 128, (96, 12), generator=g).tolist()
    runner = TokenRunner(model, "LlamaForCausalLM/tiny-demo")
    tmap = fit_map(runner, source, target, r"model\.layers\.\d+\.post_attention_layernorm", method="linear",
                   procedure="causal", support="all")
    Path(out).mkdir(parents=True, exist_ok=True)
    path = tmap.save(Path(out) / "demo_map.safetensors")
    tmap = TransportMap.load(path)
    last = tmap.modules[-1]
    tgt = _pooled(runner, target, last)
    rows = {}
    for lam in (0.0, 0.5, 1.0):
        with steer(model, tmap, strength=lam):
            rows[lam] = wasserstein_1d(_pooled(runner, source, last), tgt)
    print(f"fitted {len(tmap)} modules ({sum(t.units for t in tmap.maps.values())} units), saved {path}")
    print(f"distance of steered source to target at {last} (1-D W1, mean over units):")
    for lam, d in rows.items():
        print(f"  λ = {lam:.1f}: {d:.4f}")
    return rows


def _pooled(runner, inputs, name):
    col = ActivationCollector(runner.model, [name], pooling="mean", stop_after=True)
    with col:
        runner.run(inputs, col)
    return col.take()[name]


# -- the image demo --------------------------------------------------------------------------------

DEMO_STRENGTHS = (0.0, 0.5, 0.75, 1.0, 1.25)


def run_demo(out: str = "act-demo", seed: int = 0, model: Optional[str] = None, unet: Optional[str] = None,
             config: Optional[str] = None, style: str = "poster", concept: str = "circle", n_fit: int = 64,
             n_eval: int = 16, strengths: Sequence[float] = DEMO_STRENGTHS, steps: Optional[int] = None,
             layers: Optional[str] = None, log=print, regime: Optional[str] = None) -> dict:
    """Fit a style map and a negation map, write grids (+ a measured table on the miniature model).

    Returns ``{"style": rows, "negation": rows}`` (rows: dicts per λ; empty for real models) and
    writes into ``out``: ``style_<style>.safetensors``, ``negation_<concept>.safetensors``,
    ``style_grid.png``, ``negation_grid.png`` and (miniature model) ``results.md`` / ``results.json``.
    """
    import json
    import time

    from ..diffusion import pipeline as D
    from ..diffusion.images import save_image

    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if model is None:
        return _mini_demo(outp, seed, style, concept, n_fit, n_eval, strengths, steps, log, t0, layers, regime)
    pipe = D.load_sdxl(model, unet=unet, config=config)
    log(f"loaded {model} ({pipe.act_defaults['kind']}) in {time.time() - t0:.0f}s")
    real_style = style if style != "poster" else "watercolor"
    real_concept = concept if concept != "circle" else "pink_elephant"
    smap = D.fit_style_map(pipe, real_style, n=n_fit, seed=seed, layers=layers or "unet_norms",
                           progress=ProgressBar(f"fit style {real_style}"))
    nmap = D.fit_negation_map(pipe, real_concept, n=n_fit, seed=seed, layers=layers or "unet_norms",
                              progress=ProgressBar(f"fit negation {real_concept}"))
    smap.save(outp / f"style_{real_style}.safetensors")
    nmap.save(outp / f"negation_{real_concept}.safetensors")
    from ..diffusion import prompts as P

    caps = P.captions("eval")[:3]
    save_image(D.sweep_grid(pipe, caps, smap, strengths, seed=seed, steps=steps), outp / "style_grid.png",
                 {"map": real_style, "strengths": list(strengths)})
    neg_prompts = P.negation_eval_prompts(real_concept, n=3, seed=seed)
    save_image(D.sweep_grid(pipe, neg_prompts, nmap, strengths, seed=seed, steps=steps),
                 outp / "negation_grid.png", {"map": real_concept, "strengths": list(strengths)})
    log(f"wrote style_grid.png, negation_grid.png and the two maps ({time.time() - t0:.0f}s) into\n  "
        f"{outp.resolve()}\nmeasure them with `act-steer evaluate --clip ...`")
    (outp / "results.json").write_text(json.dumps({"model": str(model), "style": real_style,
                                                   "concept": real_concept}, indent=2))
    return {"style": [], "negation": []}


#: what the demo runs on the miniature, per regime and task: a method of the study
#: (:func:`act_core.diffusion.miniworld.study.main_methods`). Each entry is among the best rows of the
#: cited table of reports/miniworld/REPORT.md (within the best row's interval): student negation 0.87
#: against the best 0.89 (presence 0.13, content 0.89 at λ 0.75); student style 0.69 against 0.71
#: (the prompt: 0.71); teacher negation the best row (0.89); teacher style 0.59 against 0.60 for
#: the pooled text-encoder map (the prompt: 0.75, better than any map there).
MINI_DEFAULTS = {
    ("student", "style"): {"method": "text layers, EOS-token fit, Linear all, EOS-gated",
                           "cite": "Style: 4-step distilled student"},
    ("student", "negation"): {"method": "phrase→padding token map, Linear all, phrase-gated",
                              "cite": "Negation: 4-step distilled student"},
    ("teacher", "style"): {"method": "text layers, EOS-token fit, Linear all, EOS-gated",
                           "cite": "Style: 20-step teacher, CFG 4"},
    ("teacher", "negation"): {"method": "phrase→padding token map, Linear all, phrase-gated",
                              "cite": "Negation: 20-step teacher, CFG 4"},
}


def _mini_method(regime: str, task: str, layers: Optional[str]):
    import dataclasses

    from ..diffusion.miniworld import study as S

    name = MINI_DEFAULTS[(regime, task)]["method"]
    m = next(x for x in S.main_methods(task, regime) if x.name == name)
    if layers:  # --layers: the same recipe on other layers
        m = dataclasses.replace(m, fit=tuple(sorted({**dict(m.fit), "layers": layers}.items())),
                                name=f"{name} [{layers}]")
    return m


def _mini_demo(outp: Path, seed, style, concept, n_fit, n_eval, strengths, steps, log, t0, layers=None,
               regime: Optional[str] = None) -> dict:
    import json
    import time

    from ..diffusion import miniworld as MW
    from ..diffusion.images import save_image
    from ..diffusion.miniworld import experiments as E
    from ..diffusion.miniworld import study as S
    from ..diffusion.miniworld import world as W
    from ..diffusion.miniworld.judges import Judges

    if style not in W.STYLES[1:]:
        raise ValueError(f"unknown miniworld style {style!r}: choose one of {', '.join(W.STYLES[1:])}")
    if concept not in W.SHAPES:
        raise ValueError(f"unknown miniworld concept {concept!r}: choose one of {', '.join(W.SHAPES)}")
    regime = regime or ("student" if MW.available(student=4) else "teacher")
    if regime not in ("student", "teacher"):
        raise ValueError(f"unknown regime {regime!r}: student (the 4-step distilled model) or teacher (20 steps, CFG 4)")
    pipe = MW.load(student=4 if regime == "student" else None)
    if steps:
        pipe.act_defaults["steps"] = int(steps)
    judges = Judges.load()
    d = pipe.act_defaults
    log(f"miniature SDXL ({regime}: {d['steps']} steps, guidance {d['guidance']}) loaded ({time.time() - t0:.1f}s)")
    study = S.Study(regime, pipe, judges, {}, n=n_eval, seeds=(seed,), n_fit=n_fit, log=lambda m: None)
    results, md = {"regime": regime}, ["# act-steer demo: the miniature SDXL (procedural world)", "",
                                       f"Regime: **{regime}** ({d['steps']} Euler steps, guidance {d['guidance']}).", ""]
    for task, target in (("style", style), ("negation", concept)):
        method = _mini_method(regime, task, layers)
        fit_bar = ProgressBar(f"fit {task} {target}")
        fit_bar(0, 1, f"{method.name}, {n_fit} prompt pairs")
        tmap = study.tmap(task, target, method)
        fit_bar(1, 1)
        name = f"{task}_{target}.safetensors"
        tmap.meta.update(demo_method=method.name, token_gate=method.positions)
        tmap.save(outp / name)
        bar, rows = ProgressBar(f"sweep {task} {target}"), []
        for i, lam in enumerate(strengths):  # one λ at a time, for the progress bar
            bar(i, len(strengths), f"λ={lam:g}: {n_eval} images")
            cell = study.run_cell(task, target, method, float(lam))
            a = S.cell_arrays(cell)
            rows.append({"strength": float(lam), **{k: float(v.mean()) for k, v in a.items()}})
        bar(len(strengths), len(strengths))
        images = {float(lam): study.images(task, target, method, float(lam), seed, limit=6) for lam in strengths}
        scenes = study.scenes(task, target)
        img = E.grid(images, [W.caption(s) for s in scenes], rows=6)
        save_image(img, outp / f"{task}_grid.png", {"map": name, "strengths": list(strengths), "seed": seed})
        cols = ["presence", "content"] + (["color_gone"] if task == "negation" else [])
        what = (f"style **{style}** (presence = judged {style}; content = prompted shapes and colours found)"
                if task == "style" else f"negation of **{concept}** (presence = a {concept} found; "
                f"content = the other object's shape and colour found)")
        md += [f"## {what}", "", f"{method.name}, fitted on {n_fit} prompt pairs; {n_eval} held-out prompts, seed "
               f"{seed}; grid: `{task}_grid.png`. Why this setting: reports/miniworld/REPORT.md, section "
               f"\"{MINI_DEFAULTS[(regime, task)]['cite']}\".", "", E.table(rows, cols), ""]
        results[task] = rows
        r0, r1 = rows[0], min(rows, key=lambda r: abs(r["strength"] - 1.0))
        log(f"{task} {target}: presence {r0['presence']:.2f} -> {r1['presence']:.2f} at λ={r1['strength']:g}, "
            f"content {r0['content']:.2f} -> {r1['content']:.2f}  ({time.time() - t0:.0f}s)")
    (outp / "results.md").write_text("\n".join(md))
    (outp / "results.json").write_text(json.dumps(results, indent=2))
    log(f"wrote results.md, style_grid.png, negation_grid.png and the two maps ({time.time() - t0:.0f}s) into\n  "
        f"{outp.resolve()}")
    return results


# -- the `act-steer demo` subcommand ----------------------------------------------------------------


def register(sub) -> None:
    d = sub.add_parser("demo", help="the embedded end-to-end demo on the miniature SDXL (no download needed)")
    d.add_argument("--out", default="act-demo", help="output folder (default: ./act-demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--model", default=None, help="a real SDXL-family model (diffusers folder or single file) "
                   "instead of the embedded miniature")
    d.add_argument("--unet", default=None, help="with --model: diffusers-format UNet weights (e.g. SDXL-Lightning)")
    d.add_argument("--config", default=None, help="with a single-file --model: a local diffusers SDXL folder")
    d.add_argument("--style", default="poster", help="miniature: sketch, pixel_art, watercolor, poster (default); "
                   "real models: a shipped style (default watercolor)")
    d.add_argument("--concept", default="circle", help="miniature: circle (default), square, triangle; "
                   "real models: a shipped concept (default pink_elephant)")
    d.add_argument("--layers", default=None, help="a layer preset or regexes for both maps (default: the "
                   "miniature's measured best per regime, see docs/miniworld.md; real models: unet_norms)")
    d.add_argument("--regime", default=None, choices=["student", "teacher"],
                   help="miniature: the 4-step distilled student, no CFG (default; the paper's regime) or the 20-step "
                        "teacher with CFG 4")
    d.add_argument("--n-eval", type=positive_int, default=16, help="held-out prompts measured per λ (miniature)")
    d.add_argument("--llm", action="store_true", help="run the earlier tiny-Llama demo instead")
    d.set_defaults(handler=_demo)


def _demo(args) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out!r} is a file; give a folder for the demo's outputs (it is created if missing)")
    if args.llm:
        run_llm_demo(out=args.out, seed=args.seed)
        return 0
    if args.unet and not args.model:
        raise CLIError("--unet needs --model (the SDXL base pipeline the UNet weights go on)")
    run_demo(out=args.out, seed=args.seed, model=args.model, unet=args.unet, config=args.config, style=args.style,
             concept=args.concept, n_eval=args.n_eval, layers=args.layers, regime=args.regime)
    return 0
