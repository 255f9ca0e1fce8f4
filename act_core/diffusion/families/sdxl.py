"""SDXL (base, Lightning, Turbo and fine-tunes with the same keys): canonical names, their
ComfyUI counterparts, layer presets and the diffusers module tree.

A map file stores *canonical* names:

- UNet: ``unet.<diffusers UNet2DConditionModel name>``, e.g. ``unet.mid_block.resnets.0.norm2``;
- CLIP-L: ``text_encoder.<name below text_model>``, e.g. ``text_encoder.encoder.layers.3.mlp.fc2``;
- OpenCLIP-G: ``text_encoder_2.<name below text_model>``; its projection is
  ``text_encoder_2.text_projection``.

ComfyUI names are relative to the ``torch.nn.Module`` a ComfyUI ``ModelPatcher`` wraps,
so they can be used directly with ``get_submodule`` and ``add_object_patch``:

- UNet: ``diffusion_model.<UNetModel name>`` on ``MODEL.model`` (a ``comfy.model_base.SDXL``);
- text encoders: ``clip_l.transformer.text_model.<x>`` / ``clip_g.transformer.text_model.<x>``
  on ``CLIP.cond_stage_model`` (``comfy.sdxl_clip.SDXLClipModel``), and
  ``clip_g.transformer.text_projection``.

The UNet translation follows the SDXL layout (3 levels, 2 resnets per down level, 3 per up
level, attention on levels 1-2 going down and 0-1 going up): ComfyUI numbers its blocks
``input_blocks.k.j`` / ``output_blocks.k.j`` where diffusers groups them per level::

    down_blocks.d.resnets.i     <-> input_blocks.(1+3d+i).0      d in 0..2, i in 0..1
    down_blocks.d.attentions.i  <-> input_blocks.(1+3d+i).1      d in 1..2
    down_blocks.d.downsamplers.0 <-> input_blocks.(3+3d).0       d in 0..1 (.conv <-> .op)
    mid_block.resnets.0 / attentions.0 / resnets.1 <-> middle_block.0 / 1 / 2
    up_blocks.u.resnets.i       <-> output_blocks.(3u+i).0       u in 0..2, i in 0..2
    up_blocks.u.attentions.i    <-> output_blocks.(3u+i).1       u in 0..1
    up_blocks.u.upsamplers.0    <-> output_blocks.(3u+2).2       u in 0..1
    conv_in <-> input_blocks.0.0;  conv_norm_out / conv_act / conv_out <-> out.0 / out.1 / out.2
    time_embedding.{linear_1,act,linear_2} <-> time_embed.{0,1,2}
    add_embedding.{linear_1,act,linear_2}  <-> label_emb.0.{0,1,2}

Inside a resnet: ``norm1<->in_layers.0``, ``conv1<->in_layers.2``, ``time_emb_proj<->emb_layers.1``,
``norm2<->out_layers.0``, ``dropout<->out_layers.2``, ``conv2<->out_layers.3``,
``conv_shortcut<->skip_connection``. Inside attention blocks (``Transformer2DModel`` <->
``SpatialTransformer``) the names are identical. Modules without a counterpart (diffusers'
shared ``nonlinearity``, ComfyUI's ``in_layers.1`` SiLU, container lists) raise
:class:`NameTranslationError`.

Layer presets (unit counts on the real SDXL trees, checked in the tests on meta-device models):

==========================  =======  ==================================================
preset                      modules  what
==========================  =======  ==================================================
unet_norms                  256      every UNet normalisation (paper default, ``unet.*norm.*``):
                                     46 GroupNorms (4-D, spatial-mean layout) + 210 LayerNorms
unet_groupnorms             46       ResNet norm1/norm2, Transformer2D norm, conv_norm_out
unet_layernorms             210      BasicTransformerBlock norm1/norm2/norm3
unet_attention_outputs      140      attn1/attn2 ``to_out.0`` (self- and cross-attention)
unet_cross_attention        70       attn2 ``to_out.0`` only
unet_transformer_blocks     70       BasicTransformerBlock outputs
unet_resnets                17       ResnetBlock2D outputs
unet_mid_block              1+       the mid block's norms (a small, cheap set)
text_encoder_layers         44       encoder layers of both text encoders (12 + 32)
text_encoder_mlp            44       MLP outputs (``mlp.fc2``) of both encoders
text_encoder_norms          90       layer_norm1/2 of every layer + both final_layer_norms
text_encoder_fast           1        CLIP-L layer 0 MLP (the reference's ``fast`` option)
==========================  =======  ==================================================

Canonical names relate to a diffusers ``StableDiffusionXLPipeline`` (duck-typed: anything with
``unet``, ``text_encoder``, ``text_encoder_2`` attributes) through :data:`FAMILY` (a
:class:`~act_core.diffusion.families.base.Family`) and the helpers :func:`sdxl_canonical_names`,
:func:`sdxl_module_path`, :func:`sdxl_module` and :func:`sdxl_module_tree`.
"""

from __future__ import annotations

import difflib
import re
from typing import Dict, Iterable, List, Optional

import torch

from ..presets import Preset, preset_table
from .base import CLIP_G, CLIP_L, Family, LdmUNet, NameTranslationError, _text_inner

ARCHITECTURE = "sdxl"
UNET = "unet"
TEXT_ENCODERS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
COMFY_UNET_ROOT = "diffusion_model"

#: SDXL's UNet layout: 3 levels, attention on down levels 1-2 and up levels 0-1.
UNET_LAYOUT = LdmUNet(levels=3, down_attention=(1, 2), up_attention=(0, 1))

# -- layer presets and the real-size UNet config ---------------------------------------------------

SDXL_COMPONENTS = ("text_encoder", "text_encoder_2", "unet")  # forward order
#: Structural fields of the SDXL base 1.0 UNet config (diffusers ``UNet2DConditionModel``), shared
#: by Lightning and Turbo: what builds the real-size tree on the meta device, without a download.
SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)


def _p(name: str, description: str, *patterns: str) -> Preset:
    return Preset(name, tuple(patterns), description)


#: UNet presets shared with the other LDM UNet families (SD1.x, SD2.x)
UNET_PRESETS = (
    _p("unet_norms", "every UNet normalisation module (paper default)", r"unet\..*norm.*"),
    _p("unet_groupnorms", "UNet GroupNorms only (4-D feature maps)",
       r"unet\..*\.resnets\.\d+\.norm[12]", r"unet\..*\.attentions\.\d+\.norm", r"unet\.conv_norm_out"),
    _p("unet_layernorms", "LayerNorms of every UNet transformer block",
       r"unet\..*\.transformer_blocks\.\d+\.norm[123]"),
    _p("unet_attention_outputs", "self- and cross-attention output projections",
       r"unet\..*\.transformer_blocks\.\d+\.attn[12]\.to_out\.0"),
    _p("unet_cross_attention", "cross-attention (text) output projections",
       r"unet\..*\.transformer_blocks\.\d+\.attn2\.to_out\.0"),
    _p("unet_transformer_blocks", "BasicTransformerBlock outputs", r"unet\..*\.transformer_blocks\.\d+"),
    _p("unet_resnets", "ResnetBlock2D outputs", r"unet\..*\.resnets\.\d+"),
    _p("unet_mid_block", "normalisations of the UNet mid block", r"unet\.mid_block\..*norm.*"),
)

PRESETS: Dict[str, Preset] = preset_table(
    *UNET_PRESETS,
    _p("text_encoder_layers", "encoder layers of both text encoders",
       r"text_encoder(_2)?\.encoder\.layers\.\d+"),
    _p("text_encoder_mlp", "MLP outputs of both text encoders",
       r"text_encoder(_2)?\.encoder\.layers\.\d+\.mlp\.fc2"),
    _p("text_encoder_norms", "LayerNorms of both text encoders",
       r"text_encoder(_2)?\.encoder\.layers\.\d+\.layer_norm[12]", r"text_encoder(_2)?\.final_layer_norm"),
    _p("text_encoder_fast", "CLIP-L first-layer MLP (fast, weak)", r"text_encoder\.encoder\.layers\.0\.mlp"),
)


class SDXLFamily(Family):
    """SDXL: Lightning (Euler, trailing spacing; ``prediction_type="sample"`` for the 1-step UNet)."""

    def guess_kind(self, pipe, text: str) -> str:
        text = text.lower()
        if "lightning" in text:
            return "lightning"
        if "turbo" in text:
            return "turbo"
        return "base"

    def prepare(self, pipe, kind: str, unet_path=None) -> Optional[int]:
        if kind != "lightning":
            return None
        from diffusers import EulerDiscreteScheduler

        n = _lightning_steps(unet_path) or _lightning_steps(getattr(pipe, "_act_source", None))
        extra = {"prediction_type": "sample"} if n == 1 else {}
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", **extra)
        return n

    def matches_pipeline(self, pipe) -> bool:
        if type(pipe).__name__ in ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"):
            return True
        return (getattr(pipe, "unet", None) is not None and getattr(pipe, "text_encoder_2", None) is not None
                and getattr(pipe, "transformer", None) is None)


def _lightning_steps(path) -> Optional[int]:
    m = re.search(r"(\d+)step", str(path).lower()) if path else None
    return int(m.group(1)) if m else None


FAMILY = SDXLFamily(
    name=ARCHITECTURE, title="SDXL", denoiser=UNET, text_encoders={"text_encoder": CLIP_L, "text_encoder_2": CLIP_G},
    presets=PRESETS, default_layers="unet_norms", pipeline_class="StableDiffusionXLPipeline",
    kinds={"base": (30, 5.0), "lightning": (4, 0.0), "turbo": (1, 0.0)},
    # KOALA (one resnet per level) has another block layout: it takes the generic path
    comfy_models=("SDXL", "SSD1B", "Segmind_Vega", "SDXL_instructpix2pix"), comfy_clips=("SDXLClipModel",),
    roles={"norms": ("unet_norms",), "blocks": ("unet_resnets", "unet_transformer_blocks"),
           "attention": ("unet_attention_outputs",), "text": ("text_encoder_layers",)},
    notes="base, Lightning, Turbo and fine-tunes with the same keys", _unet=UNET_LAYOUT,
)


# -- module-level API (kept for callers of the SDXL-only releases) ----------------------------------

def unet_to_comfy(local: str) -> str:
    """diffusers UNet name (no ``unet.`` prefix) -> ComfyUI ``UNetModel`` name (no root prefix)."""
    return UNET_LAYOUT.to_comfy(local)


def unet_from_comfy(local: str) -> str:
    """ComfyUI ``UNetModel`` name (no root prefix) -> diffusers UNet name (no ``unet.`` prefix)."""
    return UNET_LAYOUT.from_comfy(local)


def component(canonical: str) -> str:
    """``"unet"`` or ``"clip"``: which ComfyUI object (MODEL or CLIP) a canonical name lives in."""
    return "unet" if FAMILY.component(canonical) == "model" else "clip"


def to_comfy(canonical: str) -> str:
    """Canonical name -> ComfyUI name relative to ``MODEL.model`` (UNet) or ``CLIP.cond_stage_model``."""
    return FAMILY.to_comfy(canonical)


def from_comfy(local: str) -> str:
    """ComfyUI name (relative to ``MODEL.model`` or ``CLIP.cond_stage_model``) -> canonical name."""
    return FAMILY.from_comfy(local)


def try_from_comfy(local: str) -> Optional[str]:
    """Like :func:`from_comfy` but returns None for names without a canonical counterpart."""
    return FAMILY.try_from_comfy(local)


def canonical_names(comfy_names: Iterable[str]) -> Dict[str, str]:
    """``{canonical: comfy}`` for every ComfyUI name that has a canonical counterpart (order kept)."""
    out: Dict[str, str] = {}
    for n in comfy_names:
        c = try_from_comfy(n)
        if c is not None:
            out.setdefault(c, n)
    return out


def sdxl_canonical_names(pipe) -> List[str]:
    """Canonical names of every module of an SDXL pipeline's text encoders and UNet,
    ``text_model.`` dropped: text_encoder, text_encoder_2, then unet, each in ``named_modules()``
    order. Inside the UNet that is not forward order (diffusers registers ``up_blocks`` before
    ``mid_block`` and ``attentions`` before ``resnets``); causal fitting measures forward order
    with a probe run (``PipelineRunner.order``)."""
    return FAMILY.canonical_names(pipe)


def sdxl_module_path(pipe, canonical: str) -> str:
    """Canonical name -> dotted path on the pipeline (``text_encoder_2.encoder.layers.3`` ->
    ``text_encoder_2.text_model.encoder.layers.3``)."""
    comp, _, rest = canonical.partition(".")
    if comp not in SDXL_COMPONENTS or getattr(pipe, comp, None) is None:
        raise ValueError(f"{canonical!r} is not an SDXL canonical name: it must start with one of "
                         f"{', '.join(SDXL_COMPONENTS)} (of components this pipeline has)")
    if comp == "unet" or not rest:
        return canonical
    _, path = _text_inner(getattr(pipe, comp))
    head = rest.split(".", 1)[0]
    if path and head != path and not hasattr(getattr(pipe, comp), head):
        return f"{comp}.{path}.{rest}"
    return canonical


def sdxl_module(pipe, canonical: str) -> torch.nn.Module:
    """The actual diffusers/transformers module a canonical name refers to."""
    sdxl_module_path(pipe, canonical)  # raises for other components
    try:
        return FAMILY.module(pipe, canonical)
    except AttributeError:
        close = difflib.get_close_matches(canonical, sdxl_canonical_names(pipe), n=5, cutoff=0.5)
        raise ValueError(f"no module {canonical!r} in this SDXL pipeline"
                         + (f" (close: {', '.join(close)})" if close else "")) from None


def sdxl_module_tree(pipe) -> torch.nn.Module:
    """An ``nn.Module`` whose ``named_modules()`` are exactly the canonical names; its modules
    are the pipeline's own (shared, so hooks on the view are hooks on the pipeline)."""
    return FAMILY.module_tree(pipe)


__all__ = [
    "ARCHITECTURE", "FAMILY", "NameTranslationError", "component", "to_comfy", "from_comfy", "try_from_comfy",
    "unet_to_comfy", "unet_from_comfy", "canonical_names", "UNET_PRESETS",
    "SDXL_COMPONENTS", "SDXL_UNET_CONFIG", "PRESETS", "sdxl_canonical_names", "sdxl_module_path", "sdxl_module",
    "sdxl_module_tree",
]
