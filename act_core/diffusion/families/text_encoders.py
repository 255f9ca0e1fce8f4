"""Text encoders of the families (CLIP-L, OpenCLIP-G/H, T5-XXL): canonical names <-> ComfyUI names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

import torch

from .names import NameTranslationError



@dataclass(frozen=True)
class TextEncoder:
    """A text encoder of a family: ``kind`` "clip" (transformers ``CLIPTextModel``, canonical
    names below ``text_model``) or "t5" (``T5EncoderModel`` names), and the attribute of
    ComfyUI's ``CLIP.cond_stage_model`` that holds it (``clip_l``, ``clip_g``, ``clip_h``, ``t5xxl``)."""

    kind: str
    comfy: str
    projection: bool = False  # has a text_projection (CLIPTextModelWithProjection)
    title: str = ""


CLIP_L = TextEncoder("clip", "clip_l", title="CLIP-L")
CLIP_L_PROJ = TextEncoder("clip", "clip_l", projection=True, title="CLIP-L")
CLIP_G = TextEncoder("clip", "clip_g", projection=True, title="OpenCLIP-G")
CLIP_H = TextEncoder("clip", "clip_h", title="OpenCLIP-H")
T5_XXL = TextEncoder("t5", "t5xxl", title="T5-XXL")

_T5_NONE = re.compile(r"(.*\.)?dropout|encoder\.embed_tokens|.*\.DenseReluDense\.act")


def text_to_comfy(te: TextEncoder, canonical: str, rest: str) -> str:
    if te.kind == "clip":
        if rest == "text_projection" or rest.startswith("text_projection."):
            if not te.projection:
                raise NameTranslationError(f"{canonical!r}: this text encoder ({te.title}) has no text_projection")
            return f"{te.comfy}.transformer.{rest}"
        return f"{te.comfy}.transformer.text_model.{rest}"
    if not (rest == "shared" or rest.startswith("encoder.")) or _T5_NONE.fullmatch(rest):
        raise NameTranslationError(
            f"{canonical!r} has no ComfyUI counterpart: T5 modules below 'encoder.' (blocks, layer norms, "
            "attention and feed-forward projections) or 'shared' translate; dropouts and activations do not"
        )
    return f"{te.comfy}.transformer.{rest}"


def text_from_comfy(te: TextEncoder, canon: str, local: str, rest: str) -> str:
    if te.kind == "clip":
        if rest.startswith("transformer.text_model.") and len(rest) > len("transformer.text_model."):
            return f"{canon}.{rest[len('transformer.text_model.'):]}"
        if te.projection and (rest == "transformer.text_projection" or rest.startswith("transformer.text_projection.")):
            return f"{canon}.{rest[len('transformer.'):]}"
        raise NameTranslationError(
            f"ComfyUI CLIP module {local!r} has no canonical name: use modules below {te.comfy}.transformer.text_model."
        )
    if rest.startswith("transformer.") and len(rest) > len("transformer."):
        inner = rest[len("transformer."):]
        if inner == "shared" or inner.startswith("encoder."):
            return f"{canon}.{inner}"
    raise NameTranslationError(
        f"ComfyUI T5 module {local!r} has no canonical name: use modules below {te.comfy}.transformer.encoder."
    )


def _text_inner(encoder: torch.nn.Module) -> Tuple[torch.nn.Module, str]:
    """(the module holding embeddings/encoder/final_layer_norm, its path inside ``encoder``).

    transformers 5 ``CLIPTextModel`` holds them directly; ``CLIPTextModelWithProjection`` (and
    both classes in transformers 4) keep them under ``text_model``. T5 has no wrapper.
    """
    inner = getattr(encoder, "text_model", None)
    return (inner, "text_model") if isinstance(inner, torch.nn.Module) else (encoder, "")


__all__ = ["TextEncoder", "CLIP_L", "CLIP_L_PROJ", "CLIP_G", "CLIP_H", "T5_XXL", "text_to_comfy", "text_from_comfy"]
