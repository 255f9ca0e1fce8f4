"""Diffusion model families, one module each, and how to find a model's family.

================  ========================  =========================================================
family (``name``)  module                    models
================  ========================  =========================================================
``sd15``          :mod:`.sd15`              Stable Diffusion 1.x (CLIP-L)
``sd2``           :mod:`.sd15` (``SD2``)    Stable Diffusion 2.x, SD-Turbo (OpenCLIP-H)
``sdxl``          :mod:`.sdxl`              SDXL base, Lightning, Turbo (CLIP-L + OpenCLIP-G)
``sd3``           :mod:`.sd3`               SD3 / SD3.5 (MMDiT; CLIP-L + OpenCLIP-G + T5-XXL)
``flux``          :mod:`.flux`              FLUX.1 schnell / dev (CLIP-L + T5-XXL)
================  ========================  =========================================================

Each family is a :class:`~.base.Family`: canonical layer names and their diffusers and ComfyUI
counterparts, layer presets, the collection pass and generation defaults. Adding a family is
one module here plus its entry in :data:`FAMILIES`. Models of other families can still be
steered in ComfyUI through the generic path (ComfyUI's own module names; ``nodes/``).
"""

from __future__ import annotations

from typing import Dict, Optional

from . import flux, sd3, sd15, sdxl
from .base import CanonicalTree, Family, NameTranslationError

FAMILIES: Dict[str, Family] = {f.name: f for f in (sd15.FAMILY, sd15.SD2, sdxl.FAMILY, sd3.FAMILY, flux.FAMILY)}


def get(name: str) -> Family:
    """The family called ``name`` (``sd15``, ``sd2``, ``sdxl``, ``sd3``, ``flux``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}") from None


def for_pipeline(pipe) -> Family:
    """The family of a diffusers pipeline (or an object with the same component attributes)."""
    for f in (flux.FAMILY, sd3.FAMILY, sdxl.FAMILY, sd15.SD2, sd15.FAMILY):
        if f.matches_pipeline(pipe):
            return f
    raise ValueError(
        f"{type(pipe).__name__} is not a pipeline of a supported family ({', '.join(f.title for f in FAMILIES.values())}); "
        "load a StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline"
    )


def pipeline_tree(pipe):
    """The canonical-name module tree of a diffusers pipeline of any supported family (what
    ``act_core.steer(pipe, tmap)`` attaches to)."""
    try:
        fam = for_pipeline(pipe)
    except ValueError as e:
        raise TypeError(str(e)) from None
    return fam.module_tree(pipe)


def _by_class(class_name: str, attr: str) -> Optional[Family]:
    name = class_name.rstrip("_")  # ComfyUI builds some classes at load time: SD3ClipModel_, FluxClipModel_
    for f in FAMILIES.values():
        if name in getattr(f, attr):
            return f
    return None


def for_comfy_model(class_name: str) -> Optional[Family]:
    """The family of a ComfyUI model from its model type: the most derived class of its model
    config that ComfyUI defines (``comfy.supported_models``: ``SDXL``, ``FluxSchnell``, ``SSD1B``
    ...); None for model types without a family module (``WAN21_T2V``, ``Chroma``, ``KOALA_700M``
    whose blocks are laid out differently, ...)."""
    return _by_class(class_name, "comfy_models")


def for_comfy_clip(class_name: str) -> Optional[Family]:
    """The family of a ComfyUI text-encoder model (``CLIP.cond_stage_model``) from the most
    derived class ComfyUI defines (``SDXLClipModel``, ``FluxClipModel_`` ...)."""
    return _by_class(class_name, "comfy_clips")


def for_architecture(architecture: Optional[str]) -> Optional[Family]:
    """The family a map's recorded architecture names, or None (LLMs, generic ComfyUI maps)."""
    return FAMILIES.get(architecture or "")


__all__ = ["FAMILIES", "Family", "CanonicalTree", "NameTranslationError", "get", "for_pipeline", "pipeline_tree", "for_comfy_model",
           "for_comfy_clip", "for_architecture", "flux", "sd3", "sd15", "sdxl"]
