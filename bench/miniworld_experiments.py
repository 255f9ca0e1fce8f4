"""The miniature study, end to end: reports/miniworld/REPORT.md from one command.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/miniworld_experiments.py          # everything (hours, 1 core)
    python bench/miniworld_experiments.py --phases report     # re-derive REPORT.md, plots, grids from results.json (~1 min)
    python bench/miniworld_experiments.py --quick             # a small end-to-end run into ./miniworld-quick (~10 min)

Phases (each resumable: finished cells in results.json are reused, so an interrupted run continues):

- ``quality``: unsteered quality of the teacher (20 steps, CFG 4), the naive 4-step teacher and
  the distilled students, by the judges (and the students' latent error against the teacher).
- ``screen``: every layer preset × {Linear q_0_100, Linear all, Mean} on the 4-step student, on
  VALIDATION prompts (another seed than the test prompts), 24 prompts × 1 seed; the best two
  layer sets per task join the main study.
- ``student`` / ``teacher``: every method of :func:`act_core.diffusion.miniworld.study.main_methods`
  on the TEST prompts (--n per cell, --seeds), all knob values.
- ``confirm``: the winners re-measured on FRESH prompts (another seed): per regime and task the
  best AcT curve and the best baseline at their best values, and per target its best AcT cell.
- ``report``: REPORT.md, plots (presence against content with 95% bootstrap intervals), grids.

Writes into --out (default reports/miniworld): results.json, REPORT.md, PNGs.
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

PHASES = ("quality", "screen", "student", "teacher", "confirm", "report")
#: --quick: the paper's recipe, the best AcT variants and the baselines (regex over method names)
QUICK_METHODS = (r"^UNet norms, Linear, q_0_100 \(paper\)$|^text layers, Linear, q_0_100$|, phrase-gated$|"
                 r"^text layers, EOS-token fit, Linear all|^prompt:|^NAG α 1 τ 2.5|^negative prompt 'a small red k'|"
                 r"^mean-difference vector, text layers$")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/miniworld")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--n", type=int, default=48, help="held-out test prompts per cell")
    ap.add_argument("--seeds", default="0,1,2", help="generation seeds per cell")
    ap.add_argument("--targets", default=None, help="restrict to some targets, e.g. poster,circle")
    ap.add_argument("--teacher-n", type=int, default=None, help="test prompts per teacher cell (default: --n)")
    ap.add_argument("--teacher-seeds", default=None, help="seeds per teacher cell (default: --seeds)")
    ap.add_argument("--quality-n", type=int, default=None, help="captions per style in the quality phase (default 64)")
    ap.add_argument("--quality-seeds", default=None, help="seeds in the quality phase (default 0,1,2)")
    ap.add_argument("--quality-latent", type=int, default=128, help="prompts for the students' latent error")
    ap.add_argument("--only", default=None, help="regex: run only the methods whose name matches (student/teacher)")
    ap.add_argument("--exclude", default=None, help="regex: skip the methods whose name matches (student/teacher)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="a small end-to-end run (12 prompts × 1 seed, the core methods, every phase but the screen) "
                         "into ./miniworld-quick unless --out is given: checks the pipeline, not the claims")
    args = ap.parse_args(argv)
    if args.quick:
        if args.out == ap.get_default("out"):
            args.out = "miniworld-quick"
        args.n, args.seeds, args.teacher_n, args.teacher_seeds = 12, "0", 12, "0"
        args.quality_n, args.quality_seeds, args.quality_latent = 4, "0", 8
        args.only = args.only or QUICK_METHODS
        if args.phases == ap.get_default("phases"):
            args.phases = "quality,student,teacher,report"

    import torch

    torch.set_num_threads(args.threads)
    from act_core.diffusion import miniworld as MW
    from act_core.diffusion.miniworld import study as S
    from act_core.diffusion.miniworld import world as W
    from act_core.diffusion.miniworld.judges import Judges

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    seeds = tuple(int(s) for s in args.seeds.split(","))
    regime_n = {"student": args.n, "teacher": args.teacher_n or args.n}
    regime_seeds = {"student": seeds,
                    "teacher": tuple(int(s) for s in args.teacher_seeds.split(",")) if args.teacher_seeds else seeds}

    def wanted(method) -> bool:
        import re

        return ((args.only is None or re.search(args.only, method.name) is not None)
                and (args.exclude is None or re.search(args.exclude, method.name) is None))
    results.setdefault("settings", {"n": args.n, "seeds": list(seeds), "n_fit": S.N_FIT, "teacher": MW.GENERATION,
                                    "student": {"steps": 4, "guidance": 0.0}})
    phases = set(args.phases.split(","))
    targets = {"style": list(W.STYLES[1:]), "negation": list(W.SHAPES)}
    if args.targets:
        keep = set(args.targets.split(","))
        targets = {k: [t for t in v if t in keep] for k, v in targets.items()}
    t0 = time.time()
    logf = open(out / "experiments_log.txt", "a")

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    def save():
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=0))
        tmp.replace(res_path)

    if phases - {"report"}:  # what measured results.json, for the report's Reproduce section
        import shlex

        given = sys.argv[1:] if argv is None else list(argv)
        results.setdefault("runs", []).append(" ".join(["python bench/miniworld_experiments.py"]
                                                       + [shlex.quote(a) for a in given]))
    judges = Judges.load()
    results["judges_accuracy"] = judges.accuracy
    if "quality" in phases:
        from act_core.diffusion.miniworld import quality as Q

        qn = args.quality_n or Q.N_SCENES
        qs = tuple(int(s) for s in args.quality_seeds.split(",")) if args.quality_seeds else Q.SEEDS
        results["quality"] = Q.measure_all(judges, log=log, done=results.get("quality"), n=qn, seeds=qs,
                                           n_latent=args.quality_latent)
        save()
    pipes = {}

    def pipe(regime):
        if regime not in pipes:
            pipes[regime] = MW.load(student=4) if regime == "student" else MW.load()
        return pipes[regime]

    if "screen" in phases:
        st = S.Study("student", pipe("student"), judges, results, n=24, seeds=(0,), eval_seed=S.VALIDATION_SEED,
                     store="screen", log=log, save=save)
        for task, ts in targets.items():
            for t in ts:
                st.run_cell(task, t, None, None)
                for m in S.screen_methods():
                    st.run(task, t, m)
        log(f"[screen] done ({time.time() - t0:.0f}s)")
    screened = {task: S.best_screened(results, task) for task in targets}
    results["screened"] = screened
    for regime in ("student", "teacher"):
        if regime not in phases:
            continue
        st = S.Study(regime, pipe(regime), judges, results, n=regime_n[regime], seeds=regime_seeds[regime], log=log,
                     save=save)
        for task, ts in targets.items():
            for t in ts:
                st.run_cell(task, t, None, None)
                for m in S.main_methods(task, regime, screened[task]):
                    if wanted(m):
                        st.run(task, t, m)
        log(f"[{regime}] done ({time.time() - t0:.0f}s)")
        save()
    if "confirm" in phases:
        from act_core.diffusion.miniworld import report as R

        for regime in ("student", "teacher"):
            if not any(c["regime"] == regime for c in results.get("cells", {}).values()):
                continue
            st = S.Study(regime, pipe(regime), judges, results, n=regime_n[regime], seeds=regime_seeds[regime],
                         eval_seed=S.CONFIRM_SEED, store="confirm", log=log, save=save)
            for task, ts in targets.items():
                catalogue = {m.name: m for m in S.main_methods(task, regime, screened[task])}
                for name, value, target in R.confirm_plan(results, regime, task):
                    if target in ts and name in catalogue:
                        st.run_cell(task, target, catalogue[name], value)
                    elif target in ts and name == "unsteered":
                        st.run_cell(task, target, None, None)
        log(f"[confirm] done ({time.time() - t0:.0f}s)")
    if "report" in phases:
        from act_core.diffusion.miniworld.report import write_report

        write_report(results, out, pipes=pipe, judges=judges, log=log)
        log(f"[report] {out / 'REPORT.md'} ({time.time() - t0:.0f}s)")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
