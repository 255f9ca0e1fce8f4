"""A miniature SDXL trained here on a procedural world of coloured shapes, with judges.

- :mod:`.world`: scenes with known attributes, renderer, captions (numpy + PIL).
- :mod:`.model`: the miniature SDXL's configs, the real CLIP BPE tokenizer, single-file export.
- :mod:`.train`: training from scratch (``bench/train_miniworld.py`` runs it).
- :mod:`.judges`: deterministic measurements + a small trained classifier of the attributes.
- :mod:`.experiments`: style control and concept negation measured per λ; :mod:`.report` writes
  ``reports/miniworld/REPORT.md`` from ``bench/miniworld_experiments.py``'s results.
- :mod:`.distill`: the few-step, CFG-free students (trajectory distillation of the guided teacher).
- :mod:`.single_file`: diffusers SDXL pipeline -> one original-layout (A1111/ComfyUI) checkpoint.

``load()`` returns the shipped model as a diffusers ``StableDiffusionXLPipeline`` (through
:func:`act_core.diffusion.pipeline.load_sdxl`), with the miniature's generation defaults.
``load(student=4)`` returns the same pipeline with the distilled 4-step student UNet (Euler,
trailing spacing, 4 steps, guidance 0), loaded exactly as SDXL-Lightning's UNet file is loaded
on the SDXL base: ``load_sdxl(MODEL, unet=STUDENTS[4], kind="lightning")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

WEIGHTS = Path(__file__).with_name("weights")
MODEL = WEIGHTS / "model"
JUDGES = WEIGHTS / "judges.safetensors"
#: generation settings the miniature model was checked with (Euler, CFG)
GENERATION = {"steps": 20, "guidance": 4.0}
#: the distilled students: diffusers-format UNet files (fp16) for the teacher's pipeline, by step count
STUDENTS = {4: WEIGHTS / "student_4step_unet.safetensors", 1: WEIGHTS / "student_1step_unet.safetensors"}
#: how the students are sampled: Euler with trailing timesteps (t = 999, 749, 499, 249 for 4 steps), no CFG.
#: ComfyUI: KSampler sampler "euler", scheduler "simple", cfg 1.0, steps 4 (or 1).
STUDENT_GENERATION = {"steps": 4, "guidance": 0.0, "scheduler": "EulerDiscreteScheduler(timestep_spacing='trailing')",
                      "comfyui": {"sampler_name": "euler", "scheduler": "simple", "cfg": 1.0}}


def available(student: Optional[int] = None) -> bool:
    """The teacher's weights are there (and, with ``student=K``, the K-step student's)."""
    ok = (MODEL / "model_index.json").exists()
    return ok and (student is None or (student in STUDENTS and STUDENTS[student].exists()))


def load(path: Union[str, Path, None] = None, device: str = "cpu", student: Optional[int] = None):
    """The miniature SDXL pipeline (float32), ``act_defaults`` set to :data:`GENERATION`;
    ``student=4`` (or 1): with the distilled K-step student UNet, defaults K steps, guidance 0."""
    from ..pipeline import load_sdxl

    path = Path(path) if path else MODEL
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no miniature model at {path}: run `python bench/train_miniworld.py` to train it "
                                "(about 40 minutes on 2 CPU cores)")
    if student is None:
        pipe = load_sdxl(path, kind="base", dtype="float32", device=device)
        pipe.act_defaults.update(GENERATION, kind="base")
        return pipe
    if student not in STUDENTS:
        raise ValueError(f"no {student}-step student: choose one of {sorted(STUDENTS)}")
    if not STUDENTS[student].exists():
        raise FileNotFoundError(f"no {student}-step student at {STUDENTS[student]}: run "
                                f"`python bench/train_miniworld.py --stages distill{student}`")
    pipe = load_sdxl(path, kind="lightning", unet=STUDENTS[student], dtype="float32", device=device)
    # the students predict epsilon at every step count (load_sdxl's 1-step Lightning rule is for its x0 UNet)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="epsilon")
    pipe.act_defaults.update(steps=student, guidance=0.0, kind="lightning", student=student)
    return pipe


def single_file(out: Union[str, Path], path: Union[str, Path, None] = None, student: Optional[int] = None) -> Path:
    """Write the miniature model as ONE original-layout SDXL checkpoint (A1111/ComfyUI keys):
    ``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.{0,1}.*``.
    Load it back with ``load_sdxl(out, config=MODEL)`` (a student: add ``kind="lightning"``).
    ``student=4``: the 4-step student's UNet with the teacher's text encoders and VAE."""
    from ..single_file import save_single_file

    pipe = load(path, student=student)
    out = Path(out)
    save_single_file(pipe, out)
    return out
