"""Named layer presets, resolved on CANONICAL module names.

A preset is a list of full-match regular expressions over canonical names (see
``docs/CONTRIBUTING-AGENTS.md``): for SDXL ``unet.<diffusers UNet name>``,
``text_encoder.<CLIP-L name below text_model>`` and ``text_encoder_2.<OpenCLIP-G name below
text_model>``. Resolution works on any iterable of canonical names, so the ComfyUI side can
resolve presets on names translated from its own module tree.

Unit counts on the real SDXL trees (checked in tests/test_presets.py on meta-device models):

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

This module also knows how canonical names relate to a diffusers ``StableDiffusionXLPipeline``
(duck-typed: anything with ``unet``, ``text_encoder``, ``text_encoder_2`` attributes):
:func:`sdxl_canonical_names`, :func:`sdxl_module_path`, :func:`sdxl_module`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .selection import close_names, match_patterns

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

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Preset:
    name: str
    patterns: Tuple[str, ...]
    description: str
    architecture: str = "sdxl"


def _p(name: str, description: str, *patterns: str) -> Preset:
    return Preset(name, tuple(patterns), description)


PRESETS: Dict[str, Preset] = {
    p.name: p
    for p in [
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
    ]
}


def _close_presets(name: str) -> List[str]:
    return difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.5)


def resolve_modules(
    name_or_patterns: Union[str, Sequence[str]], canonical_names: Iterable[str]
) -> Dict[str, Optional[int]]:
    """Like :func:`resolve_preset` but keeps a ``:k`` tuple-output index: ``{name: k or None}``."""
    names = [n for n in canonical_names if n]
    items = [name_or_patterns] if isinstance(name_or_patterns, str) else list(name_or_patterns)
    if not items:
        raise ValueError(f"no layer preset or pattern given; presets: {', '.join(PRESETS)}")
    patterns: List[Tuple[str, str]] = []  # (shown as, pattern)
    for it in items:
        it = str(it).strip()
        if it in PRESETS:
            patterns.extend((it, p) for p in PRESETS[it].patterns)
        else:
            patterns.append((it, it))
    chosen, empty = match_patterns(names, patterns, what="layer pattern")
    if empty:
        msgs = []
        for s in empty:
            if _IDENT.match(s) and s not in names and s not in PRESETS:
                close = _close_presets(s)
                msgs.append(f"unknown layer preset {s!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            else:
                close = close_names(s, names)
                msgs.append(f"{s!r} matched no module" + (f" (close: {', '.join(close)})" if close else ""))
        raise ValueError(
            "; ".join(msgs) + f". Presets: {', '.join(PRESETS)}; or give full-match regexes over canonical names "
            f"(e.g. 'unet\\.mid_block\\..*norm.*'); {len(names)} names were searched."
        )
    return chosen


def resolve_preset(name_or_patterns: Union[str, Sequence[str]], canonical_names: Iterable[str]) -> List[str]:
    """Canonical names selected by a preset name, a regex, or a list mixing both.

    Names come back in the order of ``canonical_names`` (forward order for
    :func:`sdxl_canonical_names`). A ``:k`` suffix on a pattern is accepted and dropped (see
    :func:`resolve_modules` to keep it). Raises ValueError for an unknown preset (with close
    preset names) or a pattern that matches nothing (with close module names).
    """
    return list(resolve_modules(name_or_patterns, canonical_names))


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
