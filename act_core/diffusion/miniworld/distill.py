"""A few-step, CFG-free student of the miniature SDXL: trajectory (segment) distillation.

The teacher is the shipped miniature (epsilon prediction, SDXL's noise schedule) sampled with
classifier-free guidance ``w`` (4 by default). The student is a copy of its UNet that must
reproduce, in ``K`` Euler steps WITHOUT guidance, where the teacher's guided probability-flow
ODE goes. Everything runs in the Euler-discrete ("k-diffusion") parameterisation diffusers and
ComfyUI both use: a latent ``x`` at noise level ``σ`` is fed to the UNet as ``x / sqrt(σ² + 1)``
at the timestep ``t(σ)``, and one Euler step from ``σ_k`` to ``σ_{k+1}`` is
``x_{k+1} = x_k + (σ_{k+1} − σ_k) · ε(x_k, σ_k)``.

**Student schedule.** ``K`` steps with *trailing* spacing, as SDXL-Lightning / Turbo:
K = 4 -> t = 999, 749, 499, 249 (σ = 14.61, 4.08, 1.61, 0.69, then 0); K = 1 -> t = 999
(σ = 14.61 -> 0). diffusers: ``EulerDiscreteScheduler(timestep_spacing="trailing")``;
ComfyUI: sampler ``euler``, scheduler ``simple`` (same σ's), CFG 1.

**Teacher targets.** For each prompt ``c`` and starting noise ``x_0 ~ N(0, σ_0² I)`` the teacher
integrates the guided ODE ``ε_w = ε(x, σ, ∅) + w (ε(x, σ, c) − ε(x, σ, ∅))`` with ``S`` Euler
steps per student segment (a trailing schedule of ``K·S`` steps whose every S-th σ is a
student σ; S = 6 -> 24 teacher steps, more than the 20 the teacher is used with), recording the
latent at every segment boundary: ``x_0, x_1, …, x_K`` (``x_K`` = the teacher's clean latent).

**Loss.** Segment ``k`` turns into the epsilon the student must output so that ONE Euler step
lands where the teacher's S steps landed: ``ε*_k = (x_{k+1} − x_k) / (σ_{k+1} − σ_k)``;
loss ``= ‖ε_student(x_k, σ_k, c) − ε*_k‖²`` averaged over segments (the segment's end-point
error divided by its step size). The student keeps epsilon prediction, so it runs with the
stock Euler sampler in diffusers and ComfyUI; guidance is baked in, and it is run at CFG 0/1.

**On-policy round** (``onpolicy_fraction`` > 0): after the first phase the student's own
states ``x̂_k`` (k ≥ 1, reached by its own steps from ``x_0``) get fresh teacher targets
(the teacher integrates segment ``k`` from ``x̂_k``), and training continues on the union. This
is DAgger for the sampler's compounding error: at inference the student starts later
segments from its own, slightly wrong, states, not from the teacher's.

No adversarial loss, no real images: the student only ever sees teacher outputs. The text
encoders and VAE are the teacher's (frozen; shared on disk), so a student is one UNet file
(2.9 MB in fp16).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import model as M
from . import world as W

Log = Callable[[str], None]

#: distillation defaults (the shipped students were trained with these; bench/train_miniworld.py)
TEACHER_GUIDANCE = 4.0
STEPS_PER_SEGMENT = 6
PROMPT_SEED = 7000  # distillation prompts: disjoint from the fit (1000) and evaluation (2000+) seeds


@functools.lru_cache(maxsize=None)
def schedule(steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(timesteps (steps,), sigmas (steps+1,))`` of Euler with trailing spacing on the miniature's
    noise schedule (the final σ is 0)."""
    from diffusers import EulerDiscreteScheduler

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    s = EulerDiscreteScheduler(**{**M.SCHEDULER, "timestep_spacing": "trailing"})
    s.set_timesteps(steps)
    return s.timesteps.float().clone(), s.sigmas.float().clone()


@functools.lru_cache(maxsize=None)
def teacher_schedule(student_steps: int, per_segment: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The teacher's trailing schedule of ``student_steps · per_segment`` steps; checks that every
    ``per_segment``-th σ equals the student's σ (so segment boundaries coincide)."""
    t, s = schedule(student_steps * per_segment)
    _, s_student = schedule(student_steps)
    if not torch.allclose(s[::per_segment], s_student, rtol=1e-5, atol=1e-6):
        raise ValueError(f"a {student_steps * per_segment}-step trailing schedule does not pass through the "
                         f"{student_steps}-step schedule's sigmas; choose another steps_per_segment")
    return t, s


def unet_eps(unet, x: torch.Tensor, sigma: float, t: float, emb: torch.Tensor, pooled: torch.Tensor,
             guidance: Optional[float] = None) -> torch.Tensor:
    """ε for latents ``x`` (B,4,16,16) at noise level ``sigma`` / timestep ``t``.

    ``guidance=None``: conditional only (the student). Otherwise classifier-free guidance against the
    pipeline's unconditional input (all-zero embeddings, as ``force_zeros_for_empty_prompt``):
    ``ε_∅ + w (ε_c − ε_∅)``, computed in one batch of 2B."""
    b = x.shape[0]
    inp = x / math.sqrt(sigma ** 2 + 1)
    ids = M.add_time_ids(b).to(x)
    tt = torch.full((b,), float(t), device=x.device)
    if guidance is None:
        return unet(inp, tt, emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    out = unet(torch.cat([inp, inp]), torch.cat([tt, tt]), torch.cat([torch.zeros_like(emb), emb]),
               added_cond_kwargs={"text_embeds": torch.cat([torch.zeros_like(pooled), pooled]),
                                  "time_ids": torch.cat([ids, ids])}).sample
    e_u, e_c = out.chunk(2)
    return e_u + guidance * (e_c - e_u)


@torch.no_grad()
def teacher_segment(unet, x: torch.Tensor, k: int, emb, pooled, student_steps: int, per_segment: int,
                    guidance: float) -> torch.Tensor:
    """Integrate the teacher's guided ODE over student segment ``k`` (σ_k -> σ_{k+1}) with
    ``per_segment`` Euler steps."""
    ts, ss = teacher_schedule(student_steps, per_segment)
    for j in range(k * per_segment, (k + 1) * per_segment):
        e = unet_eps(unet, x, float(ss[j]), float(ts[j]), emb, pooled, guidance)
        x = x + (ss[j + 1] - ss[j]) * e
    return x


@torch.no_grad()
def student_sample(unet, x: torch.Tensor, emb, pooled, steps: int, upto: Optional[int] = None) -> List[torch.Tensor]:
    """The student's own Euler states ``[x_0, x_1, …]`` (up to boundary ``upto``, default all)."""
    ts, ss = schedule(steps)
    out = [x]
    for k in range(steps if upto is None else upto):
        x = x + (ss[k + 1] - ss[k]) * unet_eps(unet, x, float(ss[k]), float(ts[k]), emb, pooled)
        out.append(x)
    return out


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds (N,77,80), pooled (N,48))`` as the pipeline computes them."""
    embs, pools = [], []
    for i in range(0, len(prompts), batch):
        e, p = M.encode_text(pipe, list(prompts[i:i + batch]))
        embs.append(e)
        pools.append(p)
    return torch.cat(embs), torch.cat(pools)


def distill_prompts(n: int, seed: int = PROMPT_SEED) -> List[str]:
    """Captions of random world scenes (all styles, one or two objects), disjoint from fit/eval seeds."""
    return [W.caption(s) for s in W.sample_scenes(n, seed=seed)]


@torch.no_grad()
def teacher_trajectories(pipe, prompts: Sequence[str], student_steps: int = 4, per_segment: int = STEPS_PER_SEGMENT,
                         guidance: float = TEACHER_GUIDANCE, seed: int = 0, batch: int = 32, log: Log = print,
                         ) -> Dict[str, torch.Tensor]:
    """Teacher states at the student's segment boundaries: ``x`` (N, K+1, 4, 16, 16) float32,
    plus the prompts' ``emb`` (N,77,80, fp16) and ``pooled`` (N,48)."""
    emb, pooled = encode_prompts(pipe, prompts)
    _, ss = schedule(student_steps)
    g = torch.Generator().manual_seed(seed)
    n = len(prompts)
    xs = torch.empty(n, student_steps + 1, 4, M.LATENT, M.LATENT)
    t0 = time.time()
    for i in range(0, n, batch):
        e, p = emb[i:i + batch], pooled[i:i + batch]
        x = torch.randn(len(e), 4, M.LATENT, M.LATENT, generator=g) * ss[0]
        xs[i:i + batch, 0] = x
        for k in range(student_steps):
            x = teacher_segment(pipe.unet, x, k, e, p, student_steps, per_segment, guidance)
            xs[i:i + batch, k + 1] = x
        if (i // batch) % 20 == 0:
            log(f"[distill] teacher trajectories {min(i + batch, n)}/{n} ({time.time() - t0:.0f}s)")
    return {"x": xs, "emb": emb.half(), "pooled": pooled}


@torch.no_grad()
def onpolicy_targets(pipe, student, data: Dict[str, torch.Tensor], idx: torch.Tensor, student_steps: int,
                     per_segment: int = STEPS_PER_SEGMENT, guidance: float = TEACHER_GUIDANCE, batch: int = 32,
                     log: Log = print) -> Dict[str, torch.Tensor]:
    """Segments that start from the STUDENT's own states: for prompts ``idx`` of ``data``, the
    student steps from the recorded ``x_0``; the teacher integrates each segment k ≥ 1 from the
    student's ``x̂_k``. Returns ``{"start": (M,4,16,16), "end": …, "k": (M,), "row": (M,)}``."""
    starts, ends, ks, rows = [], [], [], []
    t0 = time.time()
    for i in range(0, len(idx), batch):
        r = idx[i:i + batch]
        e, p = data["emb"][r].float(), data["pooled"][r]
        states = student_sample(student, data["x"][r, 0], e, p, student_steps)
        for k in range(1, student_steps):
            end = teacher_segment(pipe.unet, states[k], k, e, p, student_steps, per_segment, guidance)
            starts.append(states[k])
            ends.append(end)
            ks.append(torch.full((len(r),), k))
            rows.append(r)
        if (i // batch) % 20 == 0:
            log(f"[distill] on-policy targets {min(i + batch, len(idx))}/{len(idx)} ({time.time() - t0:.0f}s)")
    if not starts:
        z = torch.zeros(0, 4, M.LATENT, M.LATENT)
        return {"start": z, "end": z, "k": torch.zeros(0, dtype=torch.long), "row": torch.zeros(0, dtype=torch.long)}
    return {"start": torch.cat(starts), "end": torch.cat(ends), "k": torch.cat(ks), "row": torch.cat(rows)}


def _segments(data: Dict[str, torch.Tensor], extra: Optional[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """All training segments as flat tensors (start, end, k, row)."""
    n, kp1 = data["x"].shape[:2]
    k = torch.arange(kp1 - 1).repeat(n)
    row = torch.arange(n).repeat_interleave(kp1 - 1)
    seg = {"start": data["x"][:, :-1].reshape(-1, 4, M.LATENT, M.LATENT),
           "end": data["x"][:, 1:].reshape(-1, 4, M.LATENT, M.LATENT), "k": k, "row": row}
    if extra is not None and len(extra["k"]):
        seg = {key: torch.cat([seg[key], extra[key]]) for key in seg}
    return seg


def segment_loss(student, seg: Dict[str, torch.Tensor], data: Dict[str, torch.Tensor], j: torch.Tensor,
                 student_steps: int) -> torch.Tensor:
    """Mean over the picked segments ``j`` of ‖ε_student(x_k) − (x_{k+1} − x_k)/(σ_{k+1} − σ_k)‖²."""
    ts, ss = schedule(student_steps)
    k = seg["k"][j]
    x, end = seg["start"][j], seg["end"][j]
    emb, pooled = data["emb"][seg["row"][j]].float(), data["pooled"][seg["row"][j]]
    sig, sig_next = ss[k], ss[k + 1]
    target = (end - x) / (sig_next - sig).view(-1, 1, 1, 1)
    inp = x / (sig ** 2 + 1).sqrt().view(-1, 1, 1, 1)
    pred = student(inp, ts[k], emb, added_cond_kwargs={"text_embeds": pooled,
                                                       "time_ids": M.add_time_ids(len(j))}).sample
    return ((pred - target) ** 2).mean()


def train_student(pipe, data: Dict[str, torch.Tensor], ckpt: Union[str, Path], student_steps: int = 4,
                  steps: int = 4000, batch: int = 32, lr: float = 1e-4, seed: int = 0,
                  onpolicy_at: Optional[int] = None, onpolicy_prompts: int = 0,
                  per_segment: int = STEPS_PER_SEGMENT, guidance: float = TEACHER_GUIDANCE,
                  log: Log = print, max_minutes: Optional[float] = None):
    """Train a student UNet (initialised from the teacher's) on ``data`` (:func:`teacher_trajectories`).

    Resumable from ``ckpt/student_{K}step.pt`` (per-step generators: a resumed run equals an
    uninterrupted one). At step ``onpolicy_at`` the first ``onpolicy_prompts`` prompts get
    on-policy targets (:func:`onpolicy_targets`, K > 1 only), added to the segment pool.
    Returns ``(student EMA UNet (eval), steps done)``.
    """
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / f"student_{student_steps}step.pt"
    student = copy.deepcopy(pipe.unet).float().train().requires_grad_(True)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    start, extra = 0, None
    if path.exists():
        st = torch.load(path, weights_only=False)
        student.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start, extra = st["step"], st.get("extra")
        log(f"[distill] resumed the {student_steps}-step student at step {start}")
    sched = lambda s: lr * min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    seg = _segments(data, extra)
    t0, done = time.time(), start
    for s in range(start, steps):
        if onpolicy_at is not None and s == onpolicy_at and extra is None and onpolicy_prompts and student_steps > 1:
            idx = torch.arange(min(onpolicy_prompts, len(data["x"])))
            extra = onpolicy_targets(pipe, ema, data, idx, student_steps, per_segment, guidance, log=log)
            seg = _segments(data, extra)
            log(f"[distill] on-policy round: +{len(extra['k'])} segments (pool {len(seg['k'])})")
            _save({"model": student.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": s,
                   "extra": extra}, path)
        g = torch.Generator().manual_seed(seed * 1_000_003 + s)
        for gr in opt.param_groups:
            gr["lr"] = sched(s)
        j = torch.randint(0, len(seg["k"]), (batch,), generator=g)
        loss = segment_loss(student, seg, data, j, student_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + s) / (10 + s))
            for pe, pm in zip(ema.parameters(), student.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        done = s + 1
        if done % 100 == 0 or done == steps:
            el = time.time() - t0
            log(f"[distill] {student_steps}-step student: step {done}/{steps} loss {loss.item():.4f} "
                f"lr {sched(s):.2e} ({el:.0f}s, {el / (done - start):.2f}s/step)")
        stop = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if done % 500 == 0 or done == steps or stop:
            _save({"model": student.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": done,
                   "extra": extra}, path)
        if stop:
            log(f"[distill] time limit reached at step {done}; rerun to resume")
            break
    return ema.eval(), done


@torch.no_grad()
def validation_loss(student, data: Dict[str, torch.Tensor], student_steps: int, n: int = 256) -> Dict[str, float]:
    """Per-segment loss on (held-out) teacher trajectories, and the end-to-end latent error of the
    student's own K-step sample against the teacher's clean latent."""
    seg = _segments({k: v[:n] for k, v in data.items()}, None)
    out = {}
    for k in range(student_steps):
        j = (seg["k"] == k).nonzero().flatten()
        out[f"segment_{k}"] = float(segment_loss(student, seg, data, j, student_steps))
    final = student_sample(student, data["x"][:n, 0], data["emb"][:n].float(), data["pooled"][:n], student_steps)[-1]
    out["end_to_end_mse"] = float(((final - data["x"][:n, -1]) ** 2).mean())
    return out


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_student(unet, path: Union[str, Path], meta: Optional[dict] = None) -> Path:
    """The student UNet as ONE diffusers-format safetensors file (fp16), like SDXL-Lightning's
    ``sdxl_lightning_4step_unet.safetensors``: load it with ``load_sdxl(teacher, unet=path)``."""
    import json

    from safetensors.torch import save

    from ...files import atomic_write_bytes

    path = Path(path)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    data = save(sd, metadata={k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (meta or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path
