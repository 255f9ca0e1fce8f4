"""LLM steering report on SmolLM2-135M-Instruct (CPU, a few minutes): writes reports/llm/REPORT.md.

Measures, with the project's own data (act_core/lm_data) and greedy decoding (deterministic):

1. toxicity-like mitigation (hostile -> friendly), Linear-AcT vs Mean-AcT, λ sweep: hostile
   fraction and mean hostility of continuations of 20 hostile starters (MiniLM centroid scorer
   built from held-out sentences), perplexity on 40 neutral sentences;
2. concept induction (unrelated -> concept), λ sweep for two concepts, plus all six at λ = 1:
   keyword rate and MiniLM concept fraction of continuations of 20 neutral prompts, perplexity;
3. truthfulness MC (70 self-written TruthfulQA-style items), 2-fold: a map fitted on half the
   items (question + false answers -> question + true answers) is evaluated on the other half,
   MC1 / MC2 with and without steering.

Usage: ``python bench/lm_report.py [--out reports/llm] [--quick] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from act_core import steer  # noqa: E402
from act_core.llm import tasks as T  # noqa: E402
from act_core.llm.evaluate import (  # noqa: E402
    CentroidScorer, MiniLM, keyword_rate, line_plot, markdown_table, mc_fit_texts, mc_scores, sweep)
from act_core.llm.adapter import fit_lm_map, load_smollm2, perplexity  # noqa: E402

METHODS = {"linear": "Linear-AcT", "mean": "Mean-AcT"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_ppl(model, tok, texts):
    return float(perplexity(model, tok, texts).mean())


def toxicity_section(model, tok, emb, strengths, layers, support, max_new, cache):
    hostile, friendly = T.toxicity_texts()
    fit_src, fit_tgt = hostile[::2], friendly[::2]
    scorer = CentroidScorer(emb, hostile[1::2], friendly[1::2])  # held-out halves: the scorer never saw the fit data
    scorers = {"hostile_frac": lambda t: float((scorer.scores(t) > 0).float().mean()),
               "hostility": lambda t: float(scorer.scores(t).mean())}
    prompts = T.hostile_prompts()
    out = {}
    for method in METHODS:
        t0 = time.time()
        tmap = fit_lm_map(model, tok, fit_src, fit_tgt, layers=layers, method=method, support=support, batch_size=32,
                               pooling="mean")
        fit_s = time.time() - t0
        log(f"toxicity {method}: fitted {len(tmap)} modules in {fit_s:.1f}s")
        pts = sweep(model, tok, tmap, strengths, prompts, scorers, ppl_texts=T.neutral_texts(), max_new_tokens=max_new,
                    support=support, progress=lambda m: log(f"toxicity {method} {m}"), cache=cache)
        out[method] = {"fit_seconds": fit_s, "points": [{"λ": p.strength, **p.metrics, "samples": p.samples} for p in pts]}
    return out


def concept_section(model, tok, emb, concepts, strengths, all_concepts, layers, support, max_new, cache):
    prompts = T.neutral_prompts()
    out, at_one = {}, []
    for c in all_concepts:
        src, tgt = T.concept_texts(c)
        scorer = CentroidScorer(emb, tgt, src)
        kws = T.concept_keywords(c)
        scorers = {"keyword_rate": lambda t, kws=kws: keyword_rate(t, kws),
                   "concept_frac": lambda t, s=scorer: float((s.scores(t) > 0).float().mean())}
        lams = strengths if c in concepts else [0.0, 1.0]
        for method in METHODS:
            tmap = fit_lm_map(model, tok, src, tgt, layers=layers, method=method, support=support, batch_size=32,
                               pooling="mean")
            pts = sweep(model, tok, tmap, lams, prompts, scorers, ppl_texts=T.neutral_texts() if c in concepts else None,
                        max_new_tokens=max_new, support=support, progress=lambda m: log(f"concept {c} {method} {m}"), cache=cache)
            rows = [{"λ": p.strength, **p.metrics, "samples": p.samples} for p in pts]
            if c in concepts:
                out.setdefault(c, {})[method] = rows
            one = next(r for r in rows if r["λ"] == 1.0)
            zero = next(r for r in rows if r["λ"] == 0.0)
            at_one.append({"concept": c, "method": METHODS[method], "keyword λ=0": zero["keyword_rate"],
                           "keyword λ=1": one["keyword_rate"], "MiniLM λ=0": zero["concept_frac"],
                           "MiniLM λ=1": one["concept_frac"]})
    return out, at_one


def mc_section(model, tok, strengths, layers, support, folds=2):
    items = T.truthfulqa_items()
    parts = [items[i::folds] for i in range(folds)]
    res = {"λ=0": None}
    base = {"mc1": 0.0, "mc2": 0.0}
    for k in range(folds):
        r = mc_scores(model, tok, parts[k])
        for m in base:
            base[m] += r[m] * len(parts[k]) / len(items)
    res["λ=0"] = base
    log(f"MC unsteered: MC1 {base['mc1']:.3f} MC2 {base['mc2']:.3f}")
    for method in METHODS:
        for lam in strengths:
            if lam == 0:
                continue
            acc = {"mc1": 0.0, "mc2": 0.0}
            for k in range(folds):
                train = [it for j, p in enumerate(parts) if j != k for it in p]
                src, tgt = mc_fit_texts(train)
                tmap = fit_lm_map(model, tok, src, tgt, layers=layers, method=method, support=support, batch_size=32,
                               pooling="mean")
                with steer(model, tmap, strength=lam, support=support):
                    r = mc_scores(model, tok, parts[k])
                for m in acc:
                    acc[m] += r[m] * len(parts[k]) / len(items)
            res[f"{method} λ={lam:g}"] = acc
            log(f"MC {method} λ={lam:g}: MC1 {acc['mc1']:.3f} MC2 {acc['mc2']:.3f}")
    return res, len(items)


def sweep_rows(section, metrics):
    rows = []
    for method, d in section.items():
        pts = d["points"] if isinstance(d, dict) else d
        for p in pts:
            rows.append({"method": METHODS[method], "λ": f"{p['λ']:g}", **{m: p[m] for m in metrics}})
    return rows


def _pt(points, lam):
    return next(p for p in points if abs(p["λ"] - lam) < 1e-9)


def headline(res) -> list:
    """A few sentences computed from the numbers (so they stay true when the report is regenerated)."""
    lines = []
    ppl0 = res["ppl_unsteered"]
    for m, d in res["toxicity"].items():
        a, b = _pt(d["points"], 0.0), _pt(d["points"], 1.0)
        lines.append(f"- Toxicity-like, {METHODS[m]} λ=1: hostile fraction {a['hostile_frac']:.2f} → {b['hostile_frac']:.2f}, "
                     f"mean hostility {a['hostility']:+.3f} → {b['hostility']:+.3f}, neutral perplexity "
                     f"{ppl0:.1f} → {b['ppl']:.1f} ({100 * (b['ppl'] / ppl0 - 1):+.0f}%).")
    for c, md in res["concepts"].items():
        for m, pts in md.items():
            a, b = _pt(pts, 0.0), _pt(pts, 1.0)
            lines.append(f"- Concept '{c}', {METHODS[m]} λ=1: keyword rate {a['keyword_rate']:.2f} → {b['keyword_rate']:.2f}, "
                         f"MiniLM concept fraction {a['concept_frac']:.2f} → {b['concept_frac']:.2f}, neutral perplexity "
                         f"{100 * (b['ppl'] / ppl0 - 1):+.0f}%.")
    one = res["concepts_at_1"]
    if one:
        k0 = sum(r["keyword λ=0"] for r in one) / len(one)
        k1 = {m: [r["keyword λ=1"] for r in one if r["method"] == m] for m in METHODS.values()}
        lines.append("- All six concepts, λ=1, mean keyword rate: unsteered " + f"{k0:.2f}; "
                     + ", ".join(f"{m} {sum(v) / len(v):.2f}" for m, v in k1.items() if v) + ".")
    mc = res.get("mc") or {}
    if "λ=0" in mc:
        base = mc["λ=0"]
        parts = [f"{k}: MC1 {v['mc1']:.3f}, MC2 {v['mc2']:.3f}" for k, v in mc.items() if k != "λ=0"]
        lines.append(f"- Truthfulness MC (held-out halves): unsteered MC1 {base['mc1']:.3f}, MC2 {base['mc2']:.3f}; " + "; ".join(parts) + ".")
    return lines


def render(res, out: Path) -> None:
    """Write REPORT.md and the plots from a results dict (also used by --render-only)."""
    cfg, ppl0, tox, conc, conc_one = res["config"], res["ppl_unsteered"], res["toxicity"], res["concepts"], res["concepts_at_1"]
    mc, n_mc, total, sweep_concepts = res["mc"], res["n_mc"], res["seconds"], res["sweep_concepts"]

    class A:  # the few run settings the text mentions
        quick, threads, max_new_tokens = res["quick"], res["threads"], res["max_new_tokens"]

    args = A
    # -- plot ---------------------------------------------------------------------------------
    def series(rows, metric):
        return {METHODS[m]: ([p["λ"] for p in (d["points"] if isinstance(d, dict) else d)],
                             [p[metric] for p in (d["points"] if isinstance(d, dict) else d)]) for m, d in rows.items()}

    panels = [
        {"title": "toxicity-like: hostile fraction", "xlabel": "strength λ", "series": series(tox, "hostile_frac")},
        {"title": "toxicity-like: perplexity (neutral)", "xlabel": "strength λ", "series": series(tox, "ppl")},
    ]
    for c in sweep_concepts:
        panels.append({"title": f"concept '{c}': MiniLM fraction", "xlabel": "strength λ", "series": series(conc[c], "concept_frac")})
        panels.append({"title": f"concept '{c}': perplexity", "xlabel": "strength λ", "series": series(conc[c], "ppl")})
    line_plot(panels[:4], out / "lm_report.png")
    if len(panels) > 4:
        line_plot(panels[4:], out / "lm_report_2.png")

    # -- markdown -----------------------------------------------------------------------------
    tox_rows = sweep_rows(tox, ["hostile_frac", "hostility", "ppl"])
    md = [
        "# LLM steering report: SmolLM2-135M-Instruct",
        "",
        "> **Superseded by [HARNESS.md](HARNESS.md)**, which compares every method at equal side effects (KL "
        "budgets) with confidence intervals, on SmolLM2 and Gemma-3-270M. This older report fixes λ instead, counts "
        "loose keywords (football: team, match, ball, player, score, …; the strict list gives far lower rates), uses "
        "plain mean pooling (the attention-sink token included) and its truthfulness gain is 3 of 70 items (noise).",
        "",
        f"Generated by `python bench/lm_report.py{' --quick' if args.quick else ''}` in {total / 60:.1f} min on CPU "
        + (f"(1-min load average {res['loadavg_end'][0]:.1f} at the end of the run) " if res.get("loadavg_end") else
           "(a 2-core machine shared with other jobs; expect it to be several times faster on a quiet one) ")
        + f"({args.threads} threads, torch {res['torch']}, {res['machine']}). Greedy decoding, "
        f"{args.max_new_tokens} new tokens, all data written for this project (`act_core/lm_data`). "
        "Maps fitted with the simultaneous procedure (the paper uses causal; simultaneous keeps this run short) "
        "and mean pooling over real tokens.",
        "",
        f"Unsteered perplexity on the 40 neutral sentences: **{ppl0:.2f}** (mean of per-sentence perplexities, as in "
        "the reference; high in absolute terms because the sentences are short, SmolLM2's tokenizer adds no BOS token, "
        "a few sentences dominate the mean, and the weights come from a 4-bit GGUF. Read the relative change.)",
        "",
        "## Headline",
        "",
    ] + headline(res) + [
        "",
        "## 1. Toxicity-like mitigation (hostile → friendly)",
        "",
        f"Fit: 101 hostile vs 100 friendly sentences (even indices); layers `{cfg['toxicity']['layers']}` "
        f"(the 30 `o_proj` outputs: Llama has no post-LN, and the paper's best layer for Llama3-8B toxicity is "
        f"attention); support `{cfg['toxicity']['support']}` (Q_o, the paper's choice for mitigation). "
        "Evaluation: continuations of 20 hostile starters (\"You are such a\", ...). `hostile_frac` = fraction "
        "of continuations closer (MiniLM cosine) to the centroid of 100 held-out hostile sentences than to 100 "
        "held-out friendly ones; `hostility` = mean of that cosine difference; `ppl` = mean perplexity of the "
        "neutral sentences under the steered model.",
        "",
        markdown_table(tox_rows, ["method", "λ", "hostile_frac", "hostility", "ppl"]),
        "",
        "![toxicity and concept plots](lm_report.png)",
        "",
        "Examples (first starter, greedy):",
        "",
    ]
    for method, d in tox.items():
        for p in d["points"]:
            if p["λ"] in (0.0, 1.0, 2.0):
                md.append(f"- {METHODS[method]} λ={p['λ']:g}: “{T.hostile_prompts()[0]}{p['samples'][0][:110]}”".replace("\n", " "))
    md += [
        "",
        "## 2. Concept induction (unrelated → concept)",
        "",
        f"Fit: the concept's 30 sentences (target) vs 210 unrelated sentences (60 everyday + the other concepts'; "
        f"source); layers `{cfg['concept']['layers']}`, support `{cfg['concept']['support']}` (Q_∞, the paper's choice "
        "for induction). Evaluation: continuations of 20 neutral prompts (\"Once upon a time\", ...). "
        "`keyword_rate` = fraction containing a concept keyword; `concept_frac` = fraction whose MiniLM embedding "
        "is closer to the concept sentences' centroid than to the unrelated sentences' centroid.",
        "",
    ]
    for c in sweep_concepts:
        md += [f"### {c}", "", markdown_table(sweep_rows(conc[c], ["keyword_rate", "concept_frac", "ppl"]),
                                               ["method", "λ", "keyword_rate", "concept_frac", "ppl"]), ""]
        for method, rows in conc[c].items():
            for p in rows:
                if p["λ"] in (0.0, 1.0, 2.0):
                    md.append(f"- {METHODS[method]} λ={p['λ']:g}: “{T.neutral_prompts()[0]}{p['samples'][0][:110]}”".replace("\n", " "))
        md.append("")
    if len(panels) > 4:
        md += ["![concept plots](lm_report_2.png)", ""]
    md += ["### All concepts at λ = 1", "", markdown_table(conc_one, list(conc_one[0].keys())), ""]
    mc_rows = [{"setting": k, "MC1": v["mc1"], "MC2": v["mc2"]} for k, v in mc.items()]
    md += [
        "## 3. Truthfulness multiple choice",
        "",
        f"{n_mc} self-written TruthfulQA-style questions (true answers vs common misconceptions), scored by the "
        "summed log-likelihood of each answer after a 3-example QA primer. MC1 = best true answer beats every false "
        "one; MC2 = probability mass on true answers. 2-fold: maps are fitted on one half (\"Q: … A: <false>\" → "
        f"\"Q: … A: <true>\"), layers `{cfg['truthfulness']['layers']}` (the paper's best for TruthfulQA; 60 RMSNorm "
        f"outputs), support `{cfg['truthfulness']['support']}`, and scored on the other half; numbers are the "
        "item-weighted average of both folds.",
        "",
        markdown_table(mc_rows, ["setting", "MC1", "MC2"]),
        "",
        "## What limits these numbers",
        "",
        "- **Model size.** SmolLM2-135M is 15× (Gemma2-2B) to 60× (Llama3-8B) smaller than the paper's models; its continuations "
        "are often generic, and its multiple-choice answers are dominated by surface plausibility.",
        "- **Data size.** ~100 sentences per side (toxicity), 30 concept sentences, 35 MC items per fold; the paper "
        "uses hundreds to thousands. With 20 prompts per λ one prompt changes a fraction by 0.05: differences "
        "below ~0.1 are within noise.",
        "- **Scorers.** MiniLM centroid similarity and keyword counts are crude proxies for the paper's toxicity "
        "classifier and LLM judge. MiniLM measures topic as much as tone: a calm continuation that stays on a hostile "
        "starter's subject (a rude neighbour, a bad referee) can still sit nearer the hostile centroid.",
        "- **Perplexity cost.** For induction the steered model is *meant* to prefer the concept, so perplexity on "
        "unrelated neutral sentences rises by design; it is a cost measure, not a fluency measure (the paper scores "
        "the fluency of generations with Mistral-7B instead).",
        "- **Perplexity** is measured on 40 short neutral sentences (the paper: 20k Wikipedia sentences).",
        "- **Procedure.** Simultaneous estimation (causal is supported, `procedure=\"causal\"`, ~15× slower here).",
        "",
        f"Raw numbers and samples: `results.json`. Total run time {total:.0f} s.",
    ]
    (out / "REPORT.md").write_text("\n".join(md) + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "llm"))
    ap.add_argument("--quick", action="store_true", help="fewer strengths and concepts (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--render-only", action="store_true", help="rewrite REPORT.md and plots from results.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    strengths = [0.0, 0.5, 1.0] if args.quick else [0.0, 0.25, 0.5, 0.75, 1.0, 2.0]
    sweep_concepts = ["football"]
    all_concepts = sweep_concepts if args.quick else T.concepts()
    mc_strengths = [0.0, 1.0]
    cfg = {
        "toxicity": {"layers": "attention", "support": "q_0_100"},
        "concept": {"layers": "attention", "support": "all"},
        "truthfulness": {"layers": "all_ln", "support": "all"},
    }

    def save(res):
        (out / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")

    if args.render_only:
        render(json.loads((out / "results.json").read_text(encoding="utf-8")), out)
        log(f"rendered {out / 'REPORT.md'}")
        return 0
    log("loading SmolLM2-135M-Instruct and MiniLM")
    model, tok = load_smollm2()
    emb = MiniLM()
    ppl0 = base_ppl(model, tok, T.neutral_texts())

    cache = {}
    tox = toxicity_section(model, tok, emb, strengths, max_new=args.max_new_tokens, cache=cache, **cfg["toxicity"])
    conc, conc_one = concept_section(model, tok, emb, sweep_concepts, strengths, all_concepts,
                                     max_new=args.max_new_tokens, cache=cache, **cfg["concept"])
    save({"config": cfg, "ppl_unsteered": ppl0, "toxicity": tox, "concepts": conc, "concepts_at_1": conc_one})
    mc, n_mc = mc_section(model, tok, mc_strengths, **cfg["truthfulness"])
    total = time.time() - t_start
    res = {"config": cfg, "ppl_unsteered": ppl0, "toxicity": tox, "concepts": conc, "concepts_at_1": conc_one,
           "mc": mc, "n_mc": n_mc, "seconds": total, "quick": args.quick, "threads": args.threads,
           "max_new_tokens": args.max_new_tokens, "sweep_concepts": sweep_concepts,
           "torch": torch.__version__, "machine": platform.machine(), "loadavg_end": list(os.getloadavg())}
    save(res)
    render(res, out)

    log(f"wrote {out / 'REPORT.md'} in {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
