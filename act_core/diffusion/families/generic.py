"""The generic path: any model ComfyUI can load, steered on ComfyUI's own module names.

Models without a family module (Wan, HunyuanVideo, Lumina, Chroma, HiDream, Qwen-Image, ...)
are fitted and steered on the names of ComfyUI's own module trees, relative to ``MODEL.model``
(``diffusion_model.double_blocks.3``) and ``CLIP.cond_stage_model`` (``t5xxl.transformer.encoder.block.0``).
Such a map records ``architecture = "comfyui:<model class>"`` (ComfyUI's model config class,
e.g. ``comfyui:Chroma``) and ``names = "comfyui"``: it fits models of that class only, and only
in ComfyUI (diffusers names its modules differently).

Layer sets come from the module tree itself, not from a family's table:

- :func:`norms`: every normalisation layer (a leaf module whose class name ends in ``Norm``:
  ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``T5LayerNorm`` ...) of the denoiser;
- :func:`blocks`: every block output, the items of the denoiser's block lists (a
  ``ModuleList`` whose name ends in ``blocks`` or ``layers``: ``double_blocks.3``, ``blocks.12``);
  a block returning a tuple is read at element 0;
- :func:`text_layers`: the layers / blocks of every text encoder.

No ComfyUI import here: these functions walk ``torch.nn.Module`` trees.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from .base import CanonicalTree

PREFIX = "comfyui:"
DENOISER = "diffusion_model"
_BLOCK_LIST = re.compile(r"(.*_)?(blocks|layers)")
_TEXT_LAYER = re.compile(r"[^.]+\.transformer\.(text_model\.)?encoder\.(layers|block)\.\d+")


def architecture(comfy_class: str) -> str:
    """The architecture string a generic map records: ``"comfyui:<model config class>"``."""
    return PREFIX + comfy_class


def is_generic(architecture: Optional[str]) -> bool:
    return bool(architecture) and architecture.startswith(PREFIX)


def model_class(architecture: str) -> str:
    return architecture[len(PREFIX):]


def component(name: str) -> str:
    """``"model"`` for names below ``diffusion_model.``, else ``"clip"``."""
    return "model" if name.split(".", 1)[0] == DENOISER else "clip"


def tree(model: Optional[torch.nn.Module] = None, clip: Optional[torch.nn.Module] = None) -> CanonicalTree:
    """A view whose names are ComfyUI's own: the CLIP's modules first (they run first), then the
    MODEL's; only modules below ``diffusion_model`` count on the MODEL side."""
    sites: Dict[str, torch.nn.Module] = {}
    for root in (clip, model):
        if root is None:
            continue
        for n, m in root.named_modules():
            if n and (root is clip or n == DENOISER or n.startswith(DENOISER + ".")):
                sites.setdefault(n, m)
    return CanonicalTree(sites, "ComfyUI model")


def _named(tree_or_items) -> Iterable[Tuple[str, torch.nn.Module]]:
    return tree_or_items.named_modules() if isinstance(tree_or_items, torch.nn.Module) else tree_or_items


def norms(tree_view: torch.nn.Module) -> List[str]:
    """Every normalisation layer of the denoiser: leaf modules whose class name ends in ``Norm``."""
    out = []
    for n, m in _named(tree_view):
        if n.startswith(DENOISER + ".") and type(m).__name__.endswith("Norm") and not list(m.children()):
            out.append(n)
    return out


def blocks(tree_view: torch.nn.Module) -> List[str]:
    """Every block output of the denoiser: items of its ``*blocks`` / ``*layers`` lists (the
    shallowest such lists)."""
    found: List[str] = []
    depth = None
    for n, m in _named(tree_view):
        if not n.startswith(DENOISER + ".") or not isinstance(m, torch.nn.ModuleList):
            continue
        if not _BLOCK_LIST.fullmatch(n.rsplit(".", 1)[-1]):
            continue
        d = n.count(".")
        if depth is None or d < depth:
            depth, found = d, []
        if d == depth:
            found.extend(f"{n}.{k}" for k, _ in m.named_children())
    return found


def text_layers(tree_view: torch.nn.Module) -> List[str]:
    """The layers (CLIP) and blocks (T5 and other encoder stacks) of every text encoder."""
    return [n for n, _ in _named(tree_view) if _TEXT_LAYER.fullmatch(n)]


PRESETS = {"norms": norms, "blocks": blocks, "text": text_layers}


__all__ = ["PREFIX", "architecture", "is_generic", "model_class", "component", "tree", "norms", "blocks",
           "text_layers", "PRESETS"]
