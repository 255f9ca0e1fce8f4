"""Style control and concept negation on the miniature SDXL, per λ: the report.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/miniworld_experiments.py    # ~15-20 min, 1 core
    python bench/miniworld_experiments.py --quick                                # a few minutes

Writes reports/miniworld/REPORT.md, results.json (resumable: finished configurations are
reused) and PNG plots/grids. Numbers are whatever they are; nothing is tuned per result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
SHORT = (0.0, 0.5, 1.0, 1.5)


def configs(quick: bool):
    from act_core.diffusion.miniworld import world as W

    styles, shapes = list(W.STYLES[1:]), list(W.SHAPES)
    out = []
    for method in ("linear", "mean"):
        for s in styles:
            out.append(dict(task="style", target=s, method=method, layers="unet_norms", procedure="simultaneous",
                            strengths=SHORT if quick or method == "mean" else FULL, group="main"))
        for k in shapes:
            out.append(dict(task="negation", target=k, method=method, layers="unet_norms", procedure="simultaneous",
                            strengths=SHORT if quick or method == "mean" else FULL, group="main"))
    for s in styles:
        out.append(dict(task="style", target=s, method="linear", layers="unet_norms", procedure="causal",
                        strengths=SHORT, group="causal"))
        out.append(dict(task="style", target=s, method="linear", layers="text_encoder_layers",
                        procedure="simultaneous", strengths=SHORT, group="text"))
    for k in shapes:
        out.append(dict(task="negation", target=k, method="linear", layers="unet_norms", procedure="causal",
                        strengths=SHORT, group="causal"))
        out.append(dict(task="negation", target=k, method="linear", layers="text_encoder_layers",
                        procedure="simultaneous", strengths=SHORT, group="text"))
    for task, targets in (("style", styles), ("negation", shapes)):
        for t in targets:  # Linear-AcT applied on the unbounded support (its default is the source's q_0_100 band)
            out.append(dict(task=task, target=t, method="linear", layers="unet_norms", procedure="simultaneous",
                            strengths=SHORT, group="support_all", support="all"))
    for k in shapes:
        for layers in ("unet_norms", "text_encoder_layers"):
            out.append(dict(task="negation_swap", target=k, method="linear", layers=layers, procedure="simultaneous",
                            strengths=SHORT, group="swap"))
    for s in styles:
        out.append(dict(task="style", target=s, method="linear", layers="unet_norms", procedure="per_step",
                        strengths=SHORT, group="perstep"))
    if quick:
        out = [c for c in out if c["group"] == "main" and c["method"] == "linear"]
    return out


def key(c) -> str:
    k = f"{c['task']}:{c['target']}:{c['method']}:{c['layers']}:{c['procedure']}"
    return k + (f":support={c['support']}" if c.get("support") else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/miniworld")
    ap.add_argument("--n", type=int, default=24, help="held-out prompts per λ")
    ap.add_argument("--n-fit", type=int, default=64, help="prompt pairs per map")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from act_core.diffusion import miniworld as MW
    from act_core.diffusion.miniworld import experiments as E
    from act_core.diffusion.miniworld import world as W
    from act_core.diffusion.miniworld.judges import Judges

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results.setdefault("settings", {"n": args.n, "n_fit": args.n_fit, "seed": args.seed, **MW.GENERATION})
    results.setdefault("runs", {})
    t0 = time.time()
    pipe = MW.load()
    judges = Judges.load()
    cache: dict = {}

    def save():
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(res_path)

    # unsteered recognition and prompted references
    if "unsteered" not in results:
        scenes = E.style_eval_scenes(64, seed=E.EVAL_SEED + 1)
        rec = {}
        for st in W.STYLES:
            sc = [W.with_style(s, st) for s in scenes]
            imgs = E.generate_np(pipe, [W.caption(s) for s in sc], seed=args.seed)
            j = judges.judge(imgs)
            r = E.score_style(j, sc, st)
            r["background"] = float((j["background"] == [s.background for s in sc]).mean())
            rec[st] = r
            print(f"[unsteered] prompted style {st}: judged style {r['presence']:.2f}, shapes {r['shapes']:.2f}, "
                  f"colours {r['colors']:.2f}, background {r['background']:.2f}", flush=True)
            if st == "none":
                from PIL import Image

                tiles = [E.upscale(im, 2) for im in imgs[:32]]
                sheet = Image.new("RGB", (8 * 64, 4 * 64), "white")
                for i, t in enumerate(tiles):
                    sheet.paste(t, ((i % 8) * 64, (i // 8) * 64))
                sheet.save(out / "unsteered_samples.png")
        results["unsteered"] = rec
        save()
    if "prompted" not in results:
        results["prompted"] = {}
        for task, targets in (("style", W.STYLES[1:]), ("negation", W.SHAPES)):
            for t in targets:
                results["prompted"][f"{task}:{t}"] = E.prompted_reference(pipe, judges, task, t, n=args.n, seed=args.seed)
        save()
    for c in configs(args.quick):
        k = key(c)
        if k in results["runs"] and [r["strength"] for r in results["runs"][k]["rows"]] == list(c["strengths"]):
            continue
        t1 = time.time()
        tmap = E.fit(pipe, c["task"], c["target"], c["method"], c["layers"], c["procedure"], n=args.n_fit,
                     seed=args.seed)
        t_fit = time.time() - t1
        gen = {"support": c["support"]} if c.get("support") else {}
        rows, images = E.sweep(pipe, judges, c["task"], c["target"], tmap, c["strengths"], n=args.n, seed=args.seed,
                               cache=cache, **gen)
        results["runs"][k] = {**{x: c[x] for x in ("task", "target", "method", "layers", "procedure", "group")},
                              "support": c.get("support") or "default",
                              "strengths": list(c["strengths"]), "rows": rows, "fit_seconds": round(t_fit, 1),
                              "modules": len(next(iter(tmap.values()))) if isinstance(tmap, dict) else len(tmap)}
        if c["group"] == "main" and c["method"] == "linear":
            scenes = E.style_eval_scenes(args.n) if c["task"] == "style" else E.negation_eval_scenes(c["target"], args.n)
            E.grid(images, [W.caption(s) for s in scenes], rows=4).save(out / f"grid_{c['task']}_{c['target']}.png")
        r0, r1 = rows[0], next(r for r in rows if r["strength"] == 1.0)
        print(f"[{k}] fit {t_fit:.0f}s ({len(tmap)} modules); presence {r0['presence']:.2f} -> {r1['presence']:.2f}, "
              f"content {r0['content']:.2f} -> {r1['content']:.2f} ({time.time() - t0:.0f}s)", flush=True)
        save()
    results["judges_accuracy"] = judges.accuracy
    save()
    from act_core.diffusion.miniworld.report import write_report

    write_report(results, out)
    print(f"[done] {time.time() - t0:.0f}s -> {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
