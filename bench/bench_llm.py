"""Generation speed of SmolLM2-135M steered vs unsteered (target: steered ≥ 0.97× tokens/s).

    python bench/bench_llm.py [--repeats 5] [--layers all_ln]

A Linear-AcT map (hostile -> friendly, shipped toxicity-like data) on every layer norm of
the 30 decoder layers (`all_ln`, 61 modules) steers greedy batched generation of 32 new tokens
for 4 prompts. Variants, interleaved per repeat: unsteered; hooks with the map's default
support (`q_0_100`); hooks with the unbounded support; the fixed-λ map folded into the
weights of a copy of the model (`act_core.llm.export.fold_map`, exact with the unbounded support).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from act_core import steer  # noqa: E402
from act_core.llm.export import apply_folded, fold_map  # noqa: E402
from act_core.llm.tasks import toxicity_texts  # noqa: E402
from act_core.llm.adapter import fit_lm_map, load_smollm2, prepare_tokenizer  # noqa: E402

PROMPTS = ["You are such a", "The weather today is", "My neighbour told me that", "I think the new policy"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", default="all_ln")
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    model, tok = load_smollm2()
    prepare_tokenizer(tok, "left")
    hostile, friendly = toxicity_texts()
    t0 = time.perf_counter()
    tmap = fit_lm_map(model, tok, hostile[:128], friendly[:128], layers=args.layers)
    fit_s = time.perf_counter() - t0
    fused = copy.deepcopy(model)
    apply_folded(fused, fold_map(model, tmap, strength=1.0, support="all"))
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              pad_token_id=tok.pad_token_id)

    def gen(m):
        with torch.no_grad():
            return m.generate(**batch, **kw)

    import contextlib

    variants = {
        "unsteered": (model, lambda: contextlib.nullcontext()),
        "hooks q_0_100": (model, lambda: steer(model, tmap, 1.0, support="q_0_100")),
        "hooks all": (model, lambda: steer(model, tmap, 1.0, support="all")),
        "fused (folded weights)": (fused, lambda: contextlib.nullcontext()),
    }
    gen(model)
    times = {k: [] for k in variants}
    outs = {}
    for _ in range(args.repeats):
        for k, (m, ctx) in variants.items():
            with ctx():
                t0 = time.perf_counter()
                outs[k] = gen(m)
                times[k].append(time.perf_counter() - t0)
    n_tok = len(PROMPTS) * args.new_tokens
    base = statistics.median(times["unsteered"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loadavg {os.getloadavg()[0]:.2f}\n")
    print(f"### SmolLM2-135M generation: {len(PROMPTS)} prompts x {args.new_tokens} new tokens, greedy; "
          f"map on `{args.layers}` ({len(tmap)} modules, {sum(t.units for t in tmap.maps.values())} units), "
          f"fitted on 128+128 sentences in {fit_s:.1f} s\n")
    best = min(times["unsteered"])
    print("| variant | min s | median s | tokens/s (median) | ratio vs unsteered (median) | ratio (min) |\n|---|---|---|---|---|---|")
    for k, xs in times.items():
        med = statistics.median(xs)
        print(f"| {k} | {min(xs):.3f} | {med:.3f} | {n_tok / med:.1f} | {base / med:.3f}x | {best / min(xs):.3f}x |")
    same = torch.equal(outs["fused (folded weights)"], outs["hooks all"])
    print(f"\nfused and hooked (support all) generate the same tokens: {same}")


if __name__ == "__main__":
    main()
