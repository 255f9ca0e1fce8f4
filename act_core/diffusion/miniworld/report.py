"""REPORT.md, plots and grids from ``bench/miniworld_experiments.py``'s results.json.

Everything here is computed from the stored per-image judgements: means, 95% bootstrap
intervals over prompts (:func:`act_core.diffusion.miniworld.study.bootstrap`), each method's
best knob value (the value whose target-averaged point scores best, see :func:`score`), and
paired comparisons of AcT against each baseline (the same prompts and seeds, resampled
together).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import study as S
from . import world as W

CMD_TRAIN = "HF_HUB_OFFLINE=1 python bench/train_miniworld.py --threads 1 --vae-steps 600 --scenes 12000 --unet-steps 4500 --max-minutes 46"
CMD_DISTILL = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/train_miniworld.py --stages distill4,distill1"
CMD_EXP = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/miniworld_experiments.py"
TARGETS = {"style": tuple(W.STYLES[1:]), "negation": tuple(W.SHAPES)}
#: the issue's goals: style presence >= 0.9 with content >= 0.8; negated-shape presence <= 0.2 with content >= 0.8
GOALS = {"style": (0.8, 0.9, 1.0), "negation": (0.8, 0.0, 0.2)}
REGIME_TITLE = {"student": "4-step distilled student, no CFG (the paper's regime)",
                "teacher": "20-step teacher, CFG 4"}


def score(task: str, presence: float, content: float) -> float:
    """The worse of the two goals: style min(presence, content); negation min(1 − presence, content)."""
    return S.screen_score(task, presence, content)


def wilson(p: float, n: int, z: float = 1.96) -> Tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` observed on ``n`` trials."""
    if n <= 0:
        return (float("nan"), float("nan"))
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (float(mid - half), float(mid + half))


def meets(task: str, presence: float, content: float) -> bool:
    c_min, p_lo, p_hi = GOALS[task]
    return content >= c_min and p_lo <= presence <= p_hi


# -- access ----------------------------------------------------------------------------------------


def _cells(results, store="cells", **match) -> List[dict]:
    return [c for c in results.get(store, {}).values() if all(c.get(k) == v for k, v in match.items())]


def methods(results: dict, regime: str, task: str) -> List[str]:
    """Method names in the order they were run (unsteered first)."""
    seen = []
    for c in results.get("cells", {}).values():
        if c["regime"] == regime and c["task"] == task and c["method"] not in seen:
            seen.append(c["method"])
    return seen


def measured_targets(results, regime, task, method) -> Tuple[str, ...]:
    """The targets (in the task's order) on which ``method`` has at least one cell."""
    have = {c["target"] for c in _cells(results, regime=regime, task=task, method=method)}
    return tuple(t for t in TARGETS[task] if t in have)


def curve(results, regime, task, method, targets=None) -> List[Tuple[Optional[float], Dict[str, tuple], List[dict]]]:
    """Per knob value: (value, {metric: (mean, lo, hi)} averaged over targets, the cells). ``targets``
    default: every target the method was measured on (a method run on a subset of the targets is
    averaged over that subset; tables say which)."""
    targets = targets or measured_targets(results, regime, task, method)
    by_value: Dict[Optional[float], List[dict]] = {}
    for c in _cells(results, regime=regime, task=task, method=method):
        if c["target"] in targets:
            by_value.setdefault(c["value"], []).append(c)
    out = []
    for v, cells in by_value.items():
        if len(cells) != len(targets):
            continue
        cells = sorted(cells, key=lambda c: targets.index(c["target"]))
        metrics = ["presence", "content"] + (["color_gone"] if task == "negation" else [])
        out.append((v, {m: S.summarize(cells, m) for m in metrics}, cells))
    return sorted(out, key=lambda x: -1 if x[0] is None else x[0])


def regime_targets(results, regime, task) -> Tuple[str, ...]:
    """The targets measured in this regime and task (those with an unsteered cell)."""
    return measured_targets(results, regime, task, "unsteered")


def complete(results, regime, task, method) -> bool:
    """Was ``method`` measured on every target of the regime (so its average compares with the others)?"""
    return measured_targets(results, regime, task, method) == regime_targets(results, regime, task)


def sample_size(cells: Sequence[dict]) -> str:
    """``targets × prompts × seeds`` of a point, e.g. ``3 × 48 × 3``."""
    c = cells[0]
    return f"{len(cells)} × {c['n']} × {len(c['seeds'])}"


def best(results, regime, task, method, targets=None):
    """The knob value of ``method`` whose target-averaged point scores best (ties: smaller knob)."""
    pts = curve(results, regime, task, method, targets)
    if not pts:
        return None
    return max(pts, key=lambda p: (score(task, p[1]["presence"][0], p[1]["content"][0]),
                                   -(p[0] or 0)))


def paired_difference(task: str, a: Sequence[dict], b: Sequence[dict], b_draws: int = S.BOOTSTRAP,
                      seed: int = 0) -> Tuple[float, float, float]:
    """score(a) − score(b) with a 95% paired bootstrap interval (same prompts resampled for both;
    cells are per target, in the same target order)."""
    rng = np.random.default_rng(seed)
    pa = [S.cell_arrays(c) for c in a]
    pb = [S.cell_arrays(c) for c in b]
    def sc(p_list, idx_list):
        pres = np.mean([p["presence"].mean(0)[i].mean(-1) for p, i in zip(p_list, idx_list)], 0)
        cont = np.mean([p["content"].mean(0)[i].mean(-1) for p, i in zip(p_list, idx_list)], 0)
        return np.minimum(pres, cont) if task == "style" else np.minimum(1 - pres, cont)
    full = [np.arange(p["presence"].shape[1]) for p in pa]
    est = float(sc(pa, full) - sc(pb, full))
    idx = [rng.integers(0, p["presence"].shape[1], (b_draws, p["presence"].shape[1])) for p in pa]
    d = sc(pa, idx) - sc(pb, idx)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return est, float(lo), float(hi)


# -- formatting ------------------------------------------------------------------------------------


def _ci(t: tuple) -> str:
    return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"


def _v(v) -> str:
    return "–" if v is None else f"{v:g}"


def _point(m: Dict[str, tuple], label: str) -> tuple:
    c, p = m["content"], m["presence"]
    return (c[0], p[0], (c[1], c[2]), (p[1], p[2]), label)


def _series(results, regime, task, names, targets=None) -> Dict[str, list]:
    out = {}
    for name in names:
        pts = curve(results, regime, task, name, targets)
        if pts:
            out[name] = [_point(m, "" if v is None else _v(v)) for v, m, _ in pts]
    return out


# -- the report ------------------------------------------------------------------------------------


def write_report(results: dict, out: Path, pipes: Optional[Callable] = None, judges=None,
                 log: Callable[[str], None] = print) -> Path:
    out = Path(out)
    L: List[str] = []
    add = L.append
    st = results.get("settings", {})
    add("# The miniature SDXL: AcT in the paper's regime, against what an artist would do instead\n")
    add("Everything below the summary is generated from `results.json` by the command at the end; numbers are "
        "whatever they came out as. Intervals are 95% bootstrap intervals over prompts.\n")
    summary = out / "SUMMARY.md"  # hand-written reading of the numbers, kept across regenerations
    if summary.exists():
        add(summary.read_text().strip() + "\n")
    _setup(results, add, st)
    _judges(results, add)
    _quality(results, add)
    if pipes is not None and results.get("quality"):
        from .quality import sample_grid

        sample_grid(out / "samples_teacher_students.png")
        add("Samples (first image of each row: the same caption and seed for every sampler):\n\n"
            "![samples](samples_teacher_students.png)\n")
    _screen(results, add)
    for regime in ("student", "teacher"):
        for task in ("style", "negation"):
            if methods(results, regime, task):
                _task_section(results, out, regime, task, add, pipes, log)
    _goals(results, add)
    _confirm(results, add)
    _versus(results, add)
    _appendix(results, add)
    add("## Reproduce\n")
    add("One command regenerates everything from the committed weights: `" + CMD_EXP + "` (every phase and "
        "every method; the teacher, like the student, at 48 prompts × 3 seeds and the quality table at 64 captions "
        "× 3 seeds, more than the committed results below: many hours on one core; resumable, finished cells in "
        "results.json are reused). `--phases report` re-derives this file, the plots and the grids from "
        "results.json (about 2 minutes); `--quick` is a small end-to-end run (12 prompts × 1 seed, the core "
        "methods) into ./miniworld-quick that checks the pipeline, not the claims.\n")
    add("```bash")
    add(f"{CMD_TRAIN}   # the teacher (~45 min on 1 busy core)")
    add(f"{CMD_DISTILL}   # the students (4-step: ~95 min)")
    add(f"{CMD_EXP}   # this report (resumable)")
    add(f"{CMD_EXP} --phases report   # only the report, from results.json")
    add("```\n")
    runs = results.get("runs")
    if runs:
        add("The committed results.json was measured by these runs (in order; the teacher with fewer methods "
            "and prompts to fit the CPU budget):\n")
        add("```bash")
        for r in runs:
            add(r)
        add("```\n")
    path = out / "REPORT.md"
    path.write_text("\n".join(L))
    return path


def _setup(results, add, st):
    add("## Setup\n")
    add("- **World and judges**: 32×32 scenes of one or two coloured shapes with a background pattern and a render "
        "style; captions from the attributes; a small CNN + colour histograms judge style, shapes, colours and "
        "background (accuracies below). See [docs/miniworld.md](../../docs/miniworld.md).")
    add("- **Regimes**: the *teacher* (the miniature SDXL, 20 Euler steps, CFG 4) and its *4-step student* "
        "(distilled here, Euler with trailing timesteps 999/749/499/249, no CFG: the regime of the paper's "
        "SDXL-Lightning experiments).")
    sizes = {}
    for c in results.get("cells", {}).values():
        sizes.setdefault(c["regime"], set()).add((c["n"], len(c["seeds"])))
    per = "; ".join(f"{r}: " + ", ".join(f"{n} prompts × {k} seed{'s' if k > 1 else ''} = {n * k} images"
                                         for n, k in sorted(v, reverse=True)) for r, v in sorted(sizes.items()))
    add(f"- **Cells**: one point (one target, one method, one knob value) is held-out test prompts × seeds, judged "
        f"image by image ({per or 'none yet'}). Tables give targets × prompts × seeds per row. The prompts are "
        "captions of evaluation scenes that are not among the fit prompts; every method sees the same prompts and "
        "initial noise (paired).")
    add(f"- **Maps**: `fit_sdxl_map` on {st.get('n_fit')} prompt pairs, activations collected in ONE step at t = 999 "
        "with CFG off (the reference's procedure) and applied at every denoising step. Style pairs: caption → caption + "
        "\", in X style\". Negation pairs (`remove`): a two-object caption naming the shape → the same caption without "
        "that object; `swap`: the shape replaced by the third shape (object count kept). Evaluation prompts for "
        "negation NAME the shape, so the unsteered model draws it.")
    add("- **Measures**: style `presence` = judged to be in the style; `content` = every prompted shape and colour "
        "found. Negation `presence` = the named shape found; `content` = the other object's shape and colour found; "
        "`color_gone` = the named object's colour absent.")
    add("- **Best point** of a curve: the knob value whose target-averaged point has the best *score* = the worse of "
        "its two goals (style: min(presence, content); negation: min(1 − presence, content)). Every method's knob is "
        "tuned this way on the same test prompts, so best points are equally optimistic for all methods.")
    add("- The first, single-seed study of the teacher (24 prompts, no intervals) is kept as written in "
        "[earlier/REPORT.md](earlier/REPORT.md).\n")


def _judges(results, add):
    acc = results.get("judges_accuracy", {})
    if not acc:
        return
    add("## Judges (held-out procedural images)\n")
    add("| test set | style (5-way) | background | shape labels | all shapes right | colour labels (CNN) | colour labels (histogram) |")
    add("|---|---|---|---|---|---|---|")
    h = acc.get("color_histogram_raw", {})
    for name, label in (("heldout_raw", "rendered"), ("heldout_mixed", "half through the VAE")):
        a = acc.get(name, {})
        hist = f"{h.get('color_label', float('nan')):.3f}" if name == "heldout_raw" else "–"
        add(f"| {label} | {a.get('style', 0):.3f} | {a.get('background', 0):.3f} | {a.get('shape_label', 0):.3f} | "
            f"{a.get('shape_set', 0):.3f} | {a.get('color_label', 0):.3f} | {hist} |")
    add("\nThe colour histogram finds thin, faint sketch outlines less often, so `content` is underestimated for "
        "sketch (see the unsteered rates).\n")


def _quality(results, add):
    q = results.get("quality")
    if not q:
        return
    from . import STUDENTS

    add("## The distilled students: unsteered quality by the same judges\n")
    first = next(iter(q.values()))
    n, k = first.get("n", 64), len(first.get("seeds", [0, 1, 2]))
    add(f"{n} held-out captions prompted in each style × {k} seed{'s' if k > 1 else ''} per row ({n * k} images per "
        "cell). Cells: style recognised / content (every prompted shape and colour found). `content, all styles`: "
        f"the mean over the five styles ({5 * n * k} images) with a 95% Wilson interval. `latent MSE`: mean squared "
        "error of the clean latent against the guided teacher's (24-step trailing Euler, CFG 4) from the same noise, "
        f"on {first.get('n_latent', 128)} held-out prompts (latents have unit variance).\n")
    add("| sampler | " + " | ".join(W.STYLES) + " | content, all styles | latent MSE | ms / image (1 thread) |")
    add("|---|" + "---|" * (len(W.STYLES) + 3))
    for name, row in q.items():
        r = row["rates"]
        cells = [f"{r[s]['presence']:.2f} / {r[s]['content']:.2f}" for s in W.STYLES]
        mse = f"{row['latent_mse']:.3f}" if "latent_mse" in row else "–"
        total = 5 * row.get("n", n) * len(row.get("seeds", [0] * k))
        c = float(np.mean([r[s]["content"] for s in W.STYLES]))
        lo, hi = wilson(c, total)
        add(f"| {name} | " + " | ".join(cells) + f" | {c:.2f} [{lo:.2f}, {hi:.2f}] | {mse} | "
            f"{row['seconds_per_image'] * 1000:.0f} |")
    add("")
    for k, path in sorted(STUDENTS.items(), reverse=True):
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            size = path.stat().st_size / 1e6
            add(f"- `{path.name}` ({size:.1f} MB, fp16): {k}-step student, {meta.get('train_steps')} training steps, "
                f"{meta.get('prompts')} teacher trajectories, teacher CFG {meta.get('teacher_guidance')}, "
                f"{meta.get('teacher_steps_per_segment')} teacher steps per student step, on-policy prompts "
                f"{meta.get('onpolicy_prompts')}; held-out segment losses {meta.get('heldout')}.")
    add("- Training record: `distill_log.txt` (the `[distill]` lines of the run).\n")


def _screen(results, add):
    cells = results.get("screen", {})
    if not cells:
        return
    add("## Which layers? The screen (4-step student, validation prompts)\n")
    add("Every layer preset × {Linear-AcT on q_0_100, Linear-AcT on all, Mean-AcT}, simultaneous fit, λ ∈ "
        f"{list(S.SCREEN_LAMBDAS)}, 24 VALIDATION prompts (another seed than the test prompts) × 1 seed. Cell: the "
        "best score over λ (style: min(presence, content); negation: min(1 − presence, content)), with that point's "
        "presence / content. The two best sets per task that are not already in the main study join it.\n")
    for task in ("style", "negation"):
        targets = TARGETS[task]
        add(f"### {task}\n")
        add("| layers | fit | " + " | ".join(targets) + " | mean score |")
        add("|---|---|" + "---|" * (len(targets) + 1))
        rows = []
        for layers in S.SCREEN_LAYERS:
            for label, m, sup in S.SCREEN_VARIANTS:
                name = f"{layers} | {label}"
                parts, scores = [], []
                for t in targets:
                    pts = []
                    for lam in S.SCREEN_LAMBDAS:
                        c = cells.get(S.cell_key("student", task, t, name, lam))
                        if c:
                            a = S.cell_arrays(c)
                            p, q = a["presence"].mean(), a["content"].mean()
                            pts.append((score(task, p, q), lam, p, q))
                    if not pts:
                        break
                    s, lam, p, q = max(pts)
                    parts.append(f"{s:.2f} (λ {lam:g}: {p:.2f}/{q:.2f})")
                    scores.append(s)
                if len(scores) == len(targets):
                    rows.append((float(np.mean(scores)), f"| {layers} | {label} | " + " | ".join(parts)
                                 + f" | {np.mean(scores):.2f} |"))
        for _, r in sorted(rows, key=lambda x: -x[0]):
            add(r)
        chosen = results.get("screened", {}).get(task, [])
        if chosen:
            add("\nChosen for the main study: " + ", ".join(f"{l} ({m}, support {s or 'default'})"
                                                          for l, m, s, _ in chosen) + ".\n")


def _best_table(results, regime, task, add):
    metrics = ["presence", "content"] + (["color_gone"] if task == "negation" else [])
    head = ("| method | group | knob | best value | targets × prompts × seeds | " + " | ".join(metrics) + " | score |",
            "|---|---|---|---|---|" + "---|" * (len(metrics) + 1))
    full, partial = [], []
    for name in methods(results, regime, task):
        b = best(results, regime, task, name)
        if b is None:
            continue
        v, m, cells = b
        c0 = cells[0]
        s = score(task, m["presence"][0], m["content"][0])
        size = sample_size(cells)
        if not complete(results, regime, task, name):
            size += " (" + ", ".join(c["target"] for c in cells) + ")"
        row = (s, f"| {name} | {c0.get('group', '')} | {c0.get('knob', '–')} | {_v(v)} | {size} | "
               + " | ".join(_ci(m[k]) for k in metrics) + f" | {s:.2f} |")
        (full if complete(results, regime, task, name) else partial).append(row)
    add(head[0])
    add(head[1])
    for _, r in sorted(full, key=lambda x: -x[0]):
        add(r)
    if partial:
        add("\nMeasured on some targets only (averages over those targets; not comparable row for row with the "
            "table above):\n")
        add(head[0])
        add(head[1])
        for _, r in sorted(partial, key=lambda x: -x[0]):
            add(r)
    add("")


def _top_act(results, regime, task, k=3, groups=("paper", "layers", "variant")):
    scored = []
    for name in methods(results, regime, task):
        b = best(results, regime, task, name)
        if b and b[2][0].get("group") in groups and complete(results, regime, task, name):
            scored.append((score(task, b[1]["presence"][0], b[1]["content"][0]), name))
    return [n for _, n in sorted(scored, reverse=True)[:k]]


def _task_section(results, out, regime, task, add, pipes, log):
    add(f"## {task.capitalize()}: {REGIME_TITLE[regime]}\n")
    goal = GOALS[task]
    add("Goal (the issue's): " + ("presence ≥ 0.9 with content ≥ 0.8." if task == "style"
                                   else "named-shape presence ≤ 0.2 with content ≥ 0.8.") + " Rows: each method at "
        "its best knob value, averaged over the targets (" + ", ".join(regime_targets(results, regime, task))
        + "), best score first; intervals: 95% bootstrap over prompts.\n")
    _best_table(results, regime, task, add)
    names = methods(results, regime, task)
    paper = [n for n in names if _group(results, regime, task, n) in ("unsteered", "paper")
             and complete(results, regime, task, n)]
    top = _top_act(results, regime, task)
    base_all = [n for n in names if _group(results, regime, task, n) in ("baseline", "reference", "unsteered")]
    base = [n for n in base_all if complete(results, regime, task, n)]
    goal_box = goal if task == "negation" else goal
    panels = [{"title": f"{regime} {task}: paper-regime variants (mean of targets)", "goal": goal_box,
               "series": _series(results, regime, task, paper)},
              {"title": f"{regime} {task}: best AcT vs baselines (mean of targets)", "goal": goal_box,
               "series": _series(results, regime, task, top + base)}]
    from .plots import tradeoff_plot

    fname = f"tradeoff_{regime}_{task}.png"
    tradeoff_plot(panels, out / fname)
    add(f"![{regime} {task}]({fname})\n")
    per_target = [{"title": f"{regime}: {t}", "goal": goal_box,
                   "series": _series(results, regime, task, top + base_all, targets=(t,))}
                  for t in regime_targets(results, regime, task)]
    fname = f"tradeoff_{regime}_{task}_targets.png"
    tradeoff_plot(per_target, out / fname, size=(360, 360))
    add(f"Per target (best three AcT curves and the baselines):\n\n![{regime} {task} per target]({fname})\n")
    if pipes is not None:
        gname, legend = _grids(results, out, regime, task, top[:2], base, pipes, log)
        if gname:
            add("Grids (seed 0, first 4 test prompts; columns: unsteered, then each method at its best value: "
                + legend + "):\n\n" + "\n".join(f"![grid {t}]({g})" for t, g in gname) + "\n")


def _group(results, regime, task, name):
    for c in _cells(results, regime=regime, task=task, method=name):
        return c.get("group")
    return None


def _grids(results, out, regime, task, top, base, pipes, log):

    from ..images import label_grid
    from .experiments import upscale
    from .judges import Judges

    try:
        pipe = pipes(regime)
    except FileNotFoundError as e:
        log(f"[report] no grids for {regime}: {e}")
        return [], ""
    study = S.Study(regime, pipe, Judges.load(), {}, log=lambda m: None)
    catalogue = {m.name: m for m in S.main_methods(task, regime, [tuple(x) for x in results.get("screened", {}).get(task, [])])}
    cols = [(None, None, "unsteered")]
    for name in top + [b for b in base if b != "unsteered"]:
        m = catalogue.get(name)
        b = best(results, regime, task, name)
        if m is not None and b is not None:
            cols.append((m, b[0], name))
    written = []
    for t in regime_targets(results, regime, task):
        imgs = [study.images(task, t, m, v, seed=0, limit=4) for m, v, _ in cols]
        scenes = study.scenes(task, t)[:4]
        cells = [[upscale(imgs[c][r], 3) for c in range(len(cols))] for r in range(4)]
        labels = ["unsteered"] + [chr(65 + i) + ("" if v is None else f" @ {v:g}") for i, (_, v, _) in enumerate(cols[1:])]
        g = label_grid(cells, labels, [W.caption(s) for s in scenes])
        name = f"grid_{regime}_{task}_{t}.png"
        g.save(out / name)
        written.append((t, name))
    legend = "; ".join(f"**{chr(65 + i)}** = {lab}" for i, (_, _, lab) in enumerate(cols[1:]))
    return written, legend


def confirm_plan(results, regime: str, task: str) -> List[Tuple[str, Optional[float], str]]:
    """``(method, value, target)`` cells to re-measure on fresh prompts: the unsteered model, the best
    AcT curve and the best baseline (every target, at their best values), and per target the AcT
    cell that scored best on the test prompts."""
    plan = [("unsteered", None, t) for t in regime_targets(results, regime, task)]
    for groups in (("paper", "layers", "variant"), ("baseline",)):
        top = _top_act(results, regime, task, k=1, groups=groups)
        if top:
            b = best(results, regime, task, top[0])
            plan += [(top[0], b[0], t) for t in regime_targets(results, regime, task)]
    for t in regime_targets(results, regime, task):
        cells = [c for c in _cells(results, regime=regime, task=task, target=t)
                 if c.get("group") in ("paper", "layers", "variant")]
        if cells:
            scored = [(score(task, S.cell_arrays(c)["presence"].mean(), S.cell_arrays(c)["content"].mean()), c)
                      for c in cells]
            c = max(scored, key=lambda x: x[0])[1]
            plan.append((c["method"], c["value"], t))
    seen, out = set(), []
    for p in plan:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _confirm(results, add):
    cells = results.get("confirm", {})
    if not cells:
        return
    add("## The winners on fresh prompts\n")
    add("The cells chosen above (best curves, best per-target cells) measured again on prompts drawn with another "
        "seed (same size: held-out prompts × seeds), so the choice of the best knob value does not flatter them.\n")
    for task in ("style", "negation"):
        rows = [c for c in cells.values() if c["task"] == task]
        if not rows:
            continue
        metrics = ["presence", "content"] + (["color_gone"] if task == "negation" else [])
        add(f"### {task}\n")
        add("| regime | target | method | value | " + " | ".join(metrics) + " | goal met |")
        add("|---|---|---|---|" + "---|" * (len(metrics) + 1))
        for c in sorted(rows, key=lambda c: (c["regime"], c["target"], c["method"] != "unsteered", c["method"])):
            m = {k: S.summarize([c], k) for k in metrics}
            ok = meets(task, m["presence"][0], m["content"][0])
            add(f"| {c['regime']} | {c['target']} | {c['method']} | {_v(c['value'])} | "
                + " | ".join(_ci(m[k]) for k in metrics) + f" | {'yes' if ok else 'no'} |")
        add("")


def _goals(results, add):
    add("## Did anything reach the goals?\n")
    add("Every cell (one target, one method, one knob value) whose point estimate meets the goal; intervals in "
        "brackets.\n")
    for task in ("style", "negation"):
        hits: Dict[str, List[str]] = {}
        for c in results.get("cells", {}).values():
            if c["task"] != task:
                continue
            a = S.cell_arrays(c)
            p, q = a["presence"].mean(0), a["content"].mean(0)
            pm, qm = S.bootstrap([p]), S.bootstrap([q])
            if meets(task, pm[0], qm[0]):
                hits.setdefault(c["target"], []).append(
                    f"{c['regime']}: {c['method']} @ {_v(c['value'])} (presence {_ci(pm)}, content {_ci(qm)})")
        add(f"### {task}\n")
        for t in TARGETS[task]:
            h = hits.get(t, [])
            add(f"- **{t}**: " + ("none" if not h else f"{len(h)} cell(s): " + "; ".join(h[:6])
                                  + (" …" if len(h) > 6 else "")))
        add("")


def versus(results, regime: str, task: str, groups=("paper", "layers", "variant")) -> List[dict]:
    """The best AcT curve of ``groups`` (at its best knob value) against every baseline at ITS best
    value: scores, the paired difference with its interval, and the verdict. A baseline measured on
    fewer targets is compared on those targets only (both sides' best values chosen there)."""
    top = _top_act(results, regime, task, k=1, groups=groups)
    if not top:
        return []
    rows = []
    for name in methods(results, regime, task):
        if _group(results, regime, task, name) != "baseline":
            continue
        common = measured_targets(results, regime, task, name)
        a = best(results, regime, task, top[0], targets=common)
        b = best(results, regime, task, name, targets=common)
        if a is None or b is None:
            continue
        d = paired_difference(task, a[2], b[2])
        rows.append({"act": top[0], "act_value": a[0], "baseline": name, "baseline_value": b[0],
                     "targets": common, "size": sample_size(a[2]),
                     "act_score": score(task, a[1]["presence"][0], a[1]["content"][0]),
                     "baseline_score": score(task, b[1]["presence"][0], b[1]["content"][0]), "difference": d,
                     "act_point": (a[1]["presence"], a[1]["content"]), "baseline_point": (b[1]["presence"], b[1]["content"]),
                     "verdict": "beats" if d[1] > 0 else "loses" if d[2] < 0 else "matches"})
    return rows


def _versus(results, add):
    add("## AcT against each baseline (paired)\n")
    add("The best AcT curve (at its best knob value) against each baseline at ITS best value, on the same prompts "
        "and seeds: the difference of scores with a 95% paired bootstrap interval (prompts resampled together). "
        "`beats` / `loses`: the interval excludes 0; `matches`: it does not. Two AcT entries per regime and task: "
        "the best of everything measured, and the best of the paper's recipe (pooled maps fitted at t = 999: UNet "
        "norms or text-encoder layers, Linear or Mean, either support or procedure).\n")
    add("| regime | task | targets × prompts × seeds | AcT | baseline | AcT score | baseline score | difference | verdict |")
    add("|---|---|---|---|---|---|---|---|---|")
    for regime in ("student", "teacher"):
        for task in ("style", "negation"):
            for groups in (("paper", "layers", "variant"), ("paper",)):
                for r in versus(results, regime, task, groups):
                    add(f"| {regime} | {task} | {r['size']} | {r['act']} @ {_v(r['act_value'])} | {r['baseline']} @ "
                        f"{_v(r['baseline_value'])} | {r['act_score']:.2f} | {r['baseline_score']:.2f} | "
                        f"{_ci(r['difference'])} | {r['verdict']} |")
    add("")


def _appendix(results, add):
    add("## Appendix: every cell\n")
    for regime in ("student", "teacher"):
        for task in ("style", "negation"):
            names = methods(results, regime, task)
            if not names:
                continue
            add(f"<details><summary>{regime}, {task}: all cells (per target)</summary>\n")
            metrics = ["presence", "content"] + (["color_gone"] if task == "negation" else [])
            add("| method | knob value | " + " | ".join(f"{t} {m[:4]}" for t in TARGETS[task] for m in metrics[:2])
                + " | mean presence | mean content |")
            add("|---|---|" + "---|" * (2 * len(TARGETS[task]) + 2))
            for name in names:
                for v, m, cells in curve(results, regime, task, name):
                    by_t = {c["target"]: S.cell_arrays(c) for c in cells}
                    parts = [f"{by_t[t][k].mean():.2f}" if t in by_t else "–" for t in TARGETS[task] for k in metrics[:2]]
                    add(f"| {name} | {_v(v)} | " + " | ".join(parts) + f" | {_ci(m['presence'])} | "
                        f"{_ci(m['content'])} |")
            add("\n</details>\n")
