"""A miniature SDXL trained here on a procedural world of coloured shapes, with judges.

- :mod:`.world`: scenes with known attributes, renderer, captions (numpy + PIL).
- :mod:`.model`: the miniature SDXL's configs, the real CLIP BPE tokenizer, single-file export.
- :mod:`.train`: training from scratch (``bench/train_miniworld.py`` runs it).
- :mod:`.judges`: deterministic measurements + a small trained classifier of the attributes.
- :mod:`.experiments`: style control and concept negation measured per λ; :mod:`.report` writes
  ``reports/miniworld/REPORT.md`` from ``bench/miniworld_experiments.py``'s results.
- :mod:`.single_file`: diffusers SDXL pipeline -> one original-layout (A1111/ComfyUI) checkpoint.

``load()`` returns the shipped model as a diffusers ``StableDiffusionXLPipeline`` (through
:func:`act_core.diffusion.pipeline.load_sdxl`), with the miniature's generation defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

WEIGHTS = Path(__file__).with_name("weights")
MODEL = WEIGHTS / "model"
JUDGES = WEIGHTS / "judges.safetensors"
#: generation settings the miniature model was checked with (Euler, CFG)
GENERATION = {"steps": 20, "guidance": 4.0}


def available() -> bool:
    return (MODEL / "model_index.json").exists()


def load(path: Union[str, Path, None] = None, device: str = "cpu"):
    """The miniature SDXL pipeline (float32), ``act_defaults`` set to :data:`GENERATION`."""
    from ..pipeline import load_sdxl

    path = Path(path) if path else MODEL
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no miniature model at {path}: run `python bench/train_miniworld.py` to train it "
                                "(about 40 minutes on 2 CPU cores)")
    pipe = load_sdxl(path, kind="base", dtype="float32", device=device)
    pipe.act_defaults.update(GENERATION, kind="base")
    return pipe


def single_file(out: Union[str, Path], path: Union[str, Path, None] = None) -> Path:
    """Write the miniature model as ONE original-layout SDXL checkpoint (A1111/ComfyUI keys):
    ``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.{0,1}.*``.
    Load it back with ``load_sdxl(out, config=MODEL)``."""
    from ..single_file import save_single_file

    pipe = load(path)
    out = Path(out)
    save_single_file(pipe, out)
    return out
