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
``unet``, ``text_encoder``, ``text_encoder_2`` attributes) through :func:`sdxl_canonical_names`,
:func:`sdxl_module_path`, :func:`sdxl_module` and :func:`sdxl_module_tree`.
"""

from __future__ import annotations

import difflib
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ..presets import Preset, preset_table

ARCHITECTURE = "sdxl"
UNET = "unet"
TEXT_ENCODERS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
COMFY_UNET_ROOT = "diffusion_model"


class NameTranslationError(ValueError):
    """A module name has no counterpart in the other naming scheme."""


# -- block tables (generated once for the SDXL layout) ------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "dropout": "out_layers.2", "conv2": "out_layers.3",
           "conv_shortcut": "skip_connection"}
_EMBED = {"linear_1": "0", "act": "1", "linear_2": "2"}
_DOWN = {"conv": "op"}
_UP = {"conv": "conv"}
_LEAF: Dict[str, str] = {}
_IDENTITY = None  # attention internals keep their names

# kind -> inner table (diffusers child -> ComfyUI child); None = identical names
_INNER = {"resnet": _RESNET, "embed": _EMBED, "down": _DOWN, "up": _UP, "attention": _IDENTITY, "leaf": _LEAF}


def _sdxl_blocks() -> List[Tuple[str, str, str]]:
    rows = [("conv_in", "input_blocks.0.0", "leaf"),
            ("time_embedding", "time_embed", "embed"),
            ("add_embedding", "label_emb.0", "embed"),
            ("conv_norm_out", "out.0", "leaf"), ("conv_act", "out.1", "leaf"), ("conv_out", "out.2", "leaf"),
            ("mid_block.resnets.0", "middle_block.0", "resnet"),
            ("mid_block.attentions.0", "middle_block.1", "attention"),
            ("mid_block.resnets.1", "middle_block.2", "resnet")]
    for d in range(3):
        for i in range(2):
            rows.append((f"down_blocks.{d}.resnets.{i}", f"input_blocks.{1 + 3 * d + i}.0", "resnet"))
            if d >= 1:
                rows.append((f"down_blocks.{d}.attentions.{i}", f"input_blocks.{1 + 3 * d + i}.1", "attention"))
        if d < 2:
            rows.append((f"down_blocks.{d}.downsamplers.0", f"input_blocks.{3 + 3 * d}.0", "down"))
    for u in range(3):
        for i in range(3):
            rows.append((f"up_blocks.{u}.resnets.{i}", f"output_blocks.{3 * u + i}.0", "resnet"))
            if u <= 1:
                rows.append((f"up_blocks.{u}.attentions.{i}", f"output_blocks.{3 * u + i}.1", "attention"))
        if u <= 1:
            rows.append((f"up_blocks.{u}.upsamplers.0", f"output_blocks.{3 * u + 2}.2", "up"))
    return rows


_BLOCKS = _sdxl_blocks()
_D2C = {d: (c, k) for d, c, k in _BLOCKS}
_C2D = {c: (d, k) for d, c, k in _BLOCKS}


def _split_prefix(name: str, table: Dict[str, Tuple[str, str]]) -> Optional[Tuple[str, str]]:
    """Longest ``prefix`` in ``table`` with ``name == prefix`` or ``name`` starting with ``prefix.``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return head, ".".join(parts[n:])
    return None


def _inner(rest: str, kind: str, forward: bool, full: str) -> str:
    if not rest:
        return ""
    table = _INNER[kind]
    if table is None:
        return "." + rest
    if not forward:
        table = {v: k for k, v in table.items()}
    hit = _split_prefix(rest, {k: (v, "") for k, v in table.items()})
    if hit is None:
        side = "ComfyUI" if forward else "diffusers"
        raise NameTranslationError(
            f"{full!r} has no {side} counterpart: below a {kind} block only "
            f"{', '.join(sorted(table))} translate"
        )
    head, tail = hit
    return "." + table[head] + ("." + tail if tail else "")


# -- UNet ---------------------------------------------------------------------------------------

def unet_to_comfy(local: str) -> str:
    """diffusers UNet name (no ``unet.`` prefix) -> ComfyUI ``UNetModel`` name (no root prefix)."""
    hit = _split_prefix(local, _D2C)
    if hit is None:
        raise NameTranslationError(
            f"diffusers UNet module {local!r} has no ComfyUI counterpart; translatable modules live under "
            "conv_in, time_embedding, add_embedding, down_blocks.D.{resnets,attentions,downsamplers}.I, "
            "mid_block.{resnets,attentions}.I, up_blocks.U.{resnets,attentions,upsamplers}.I, conv_norm_out, conv_act, conv_out"
        )
    head, rest = hit
    comfy, kind = _D2C[head]
    return comfy + _inner(rest, kind, True, local)


def unet_from_comfy(local: str) -> str:
    """ComfyUI ``UNetModel`` name (no root prefix) -> diffusers UNet name (no ``unet.`` prefix)."""
    hit = _split_prefix(local, _C2D)
    if hit is None:
        raise NameTranslationError(
            f"ComfyUI UNet module {local!r} has no diffusers counterpart; translatable modules are the blocks "
            "input_blocks.K.J, middle_block.K, output_blocks.K.J, time_embed, label_emb.0, out.K and their insides"
        )
    head, rest = hit
    diff, kind = _C2D[head]
    return diff + _inner(rest, kind, False, local)


# -- whole names --------------------------------------------------------------------------------

def component(canonical: str) -> str:
    """``"unet"`` or ``"clip"``: which ComfyUI object (MODEL or CLIP) a canonical name lives in."""
    head = canonical.split(".", 1)[0]
    if head == UNET:
        return "unet"
    if head in TEXT_ENCODERS:
        return "clip"
    raise NameTranslationError(
        f"{canonical!r} is not a canonical SDXL name: it must start with 'unet.', 'text_encoder.' or 'text_encoder_2.'"
    )


def to_comfy(canonical: str) -> str:
    """Canonical name -> ComfyUI name relative to ``MODEL.model`` (UNet) or ``CLIP.cond_stage_model``."""
    head, _, rest = canonical.partition(".")
    if not rest:
        raise NameTranslationError(f"{canonical!r} names a whole model, not a module inside it")
    if head == UNET:
        return f"{COMFY_UNET_ROOT}.{unet_to_comfy(rest)}"
    if head in TEXT_ENCODERS:
        enc = TEXT_ENCODERS[head]
        if rest == "text_projection" or rest.startswith("text_projection."):
            if head != "text_encoder_2":
                raise NameTranslationError(f"{canonical!r}: only text_encoder_2 (OpenCLIP-G) has a text_projection")
            return f"{enc}.transformer.{rest}"
        return f"{enc}.transformer.text_model.{rest}"
    component(canonical)  # raises with the explanation
    raise AssertionError  # pragma: no cover


def from_comfy(local: str) -> str:
    """ComfyUI name (relative to ``MODEL.model`` or ``CLIP.cond_stage_model``) -> canonical name."""
    head, _, rest = local.partition(".")
    if head == COMFY_UNET_ROOT and rest:
        return f"{UNET}.{unet_from_comfy(rest)}"
    for canon, enc in TEXT_ENCODERS.items():
        if head != enc:
            continue
        if rest.startswith("transformer.text_model.") and len(rest) > len("transformer.text_model."):
            return f"{canon}.{rest[len('transformer.text_model.'):]}"
        if canon == "text_encoder_2" and (rest == "transformer.text_projection" or rest.startswith("transformer.text_projection.")):
            return f"{canon}.{rest[len('transformer.'):]}"
        raise NameTranslationError(
            f"ComfyUI CLIP module {local!r} has no canonical name: use modules below {enc}.transformer.text_model."
        )
    raise NameTranslationError(
        f"{local!r} is not a ComfyUI SDXL module name: it must start with 'diffusion_model.', 'clip_l.' or 'clip_g.'"
    )


def try_from_comfy(local: str) -> Optional[str]:
    """Like :func:`from_comfy` but returns None for names without a canonical counterpart."""
    try:
        return from_comfy(local)
    except NameTranslationError:
        return None


def canonical_names(comfy_names: Iterable[str]) -> Dict[str, str]:
    """``{canonical: comfy}`` for every ComfyUI name that has a canonical counterpart (order kept)."""
    out: Dict[str, str] = {}
    for n in comfy_names:
        c = try_from_comfy(n)
        if c is not None:
            out.setdefault(c, n)
    return out


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


PRESETS: Dict[str, Preset] = preset_table(
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
    _p("text_encoder_layers", "encoder layers of both text encoders",
       r"text_encoder(_2)?\.encoder\.layers\.\d+"),
    _p("text_encoder_mlp", "MLP outputs of both text encoders",
       r"text_encoder(_2)?\.encoder\.layers\.\d+\.mlp\.fc2"),
    _p("text_encoder_norms", "LayerNorms of both text encoders",
       r"text_encoder(_2)?\.encoder\.layers\.\d+\.layer_norm[12]", r"text_encoder(_2)?\.final_layer_norm"),
    _p("text_encoder_fast", "CLIP-L first-layer MLP (fast, weak)", r"text_encoder\.encoder\.layers\.0\.mlp"),
)


# -- SDXL pipelines: canonical names <-> diffusers modules ---------------------------------------


def _text_inner(encoder: torch.nn.Module) -> Tuple[Optional[torch.nn.Module], str]:
    """(the module holding embeddings/encoder/final_layer_norm, its path inside ``encoder``).

    transformers 5 ``CLIPTextModel`` holds them directly; ``CLIPTextModelWithProjection`` (and
    both classes in transformers 4) keep them under ``text_model``.
    """
    inner = getattr(encoder, "text_model", None)
    return (inner, "text_model") if isinstance(inner, torch.nn.Module) else (encoder, "")


def _component_names(prefix: str, module: torch.nn.Module) -> List[str]:
    if prefix == "unet":
        return ["unet"] + [f"unet.{n}" for n, _ in module.named_modules() if n]
    inner, path = _text_inner(module)
    out = [prefix]
    for n, _ in module.named_modules():
        if not n or n == path:
            continue
        if path and n.startswith(path + "."):
            n = n[len(path) + 1:]
        out.append(f"{prefix}.{n}")
    return out


def sdxl_canonical_names(pipe) -> List[str]:
    """Canonical names of every module of an SDXL pipeline's text encoders and UNet,
    ``text_model.`` dropped: text_encoder, text_encoder_2, then unet, each in ``named_modules()``
    order. Inside the UNet that is not forward order (diffusers registers ``up_blocks`` before
    ``mid_block`` and ``attentions`` before ``resnets``); causal fitting measures forward order
    with a probe run (``diffusers_sdxl.SDXLRunner.order``)."""
    names: List[str] = []
    for comp in SDXL_COMPONENTS:
        m = getattr(pipe, comp, None)
        if m is not None:
            names.extend(_component_names(comp, m))
    return names


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
    path = sdxl_module_path(pipe, canonical)
    comp, _, rest = path.partition(".")
    root = getattr(pipe, comp)
    try:
        return root.get_submodule(rest) if rest else root
    except AttributeError:
        close = difflib.get_close_matches(canonical, sdxl_canonical_names(pipe), n=5, cutoff=0.5)
        raise ValueError(f"no module {canonical!r} in this SDXL pipeline"
                         + (f" (close: {', '.join(close)})" if close else "")) from None


class _Flat(torch.nn.Module):
    """A view whose children are given modules (shared, not copied): no forward of its own."""

    def __init__(self, children: Dict[str, torch.nn.Module]):
        super().__init__()
        for k, v in children.items():
            self.add_module(k, v)

    def forward(self, *a, **k):  # pragma: no cover - a view, never called
        raise RuntimeError("this is a naming view over SDXL components; call the pipeline instead")


def sdxl_module_tree(pipe) -> torch.nn.Module:
    """An ``nn.Module`` whose ``named_modules()`` are exactly the canonical names.

    Children are the pipeline's own modules (shared, so hooks on the view are hooks on the
    pipeline). Text encoders with a ``text_model`` wrapper are flattened: its children and the
    encoder's other children (e.g. ``text_projection``) sit side by side. Hook
    libraries that take a module tree (collectors, ``steer``, ``fit_map``) work on it directly.
    """
    children: Dict[str, torch.nn.Module] = {}
    for comp in SDXL_COMPONENTS:
        m = getattr(pipe, comp, None)
        if m is None:
            continue
        if comp == "unet":
            children[comp] = m
            continue
        inner, path = _text_inner(m)
        if not path:
            children[comp] = m
            continue
        kids = dict(inner.named_children())
        kids.update({k: v for k, v in m.named_children() if k != path})
        children[comp] = _Flat(kids)
    return _Flat(children)


__all__ = [
    "ARCHITECTURE", "NameTranslationError", "component", "to_comfy", "from_comfy", "try_from_comfy",
    "unet_to_comfy", "unet_from_comfy", "canonical_names",
    "SDXL_COMPONENTS", "SDXL_UNET_CONFIG", "PRESETS", "sdxl_canonical_names", "sdxl_module_path", "sdxl_module",
    "sdxl_module_tree",
]
