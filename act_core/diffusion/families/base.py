"""The family seam: what a diffusion model family provides, and the pieces families share.

A family (one module of this package, one :class:`Family` instance) answers for its models:

- **canonical names**: the diffusers module names prefixed with the pipeline component
  (``unet.mid_block.resnets.0.norm2``, ``transformer.transformer_blocks.3.norm1.norm``,
  ``text_encoder.encoder.layers.3.mlp.fc2`` with CLIP's ``text_model.`` dropped,
  ``text_encoder_2.encoder.block.5`` for T5), and their ComfyUI counterparts, relative to the
  ``torch.nn.Module`` a ComfyUI object wraps (``MODEL.model``: ``diffusion_model.…``;
  ``CLIP.cond_stage_model``: ``clip_l.transformer.text_model.…``, ``t5xxl.transformer.…``);
- **streams**: a block that returns several token streams as a tuple gets one canonical name
  per stream, the block name plus ``.img`` or ``.txt`` (``transformer.transformer_blocks.3.img``).
  Each framework reads the stream at its own tuple index (diffusers' FLUX block returns
  ``(txt, img)``, ComfyUI's ``(img, txt)``), so a map file never stores a framework's index for
  them. A block whose canonical output is ONE sequence that a framework returns in pieces
  (diffusers' FLUX single-stream block returns ``(txt, img)``, ComfyUI one ``[txt; img]``
  tensor) is read there with a tuple index ``(0, 1)``: the pieces joined along the tokens;
- **layer presets** (:mod:`act_core.diffusion.presets`), and the default one;
- **diffusers**: the pipeline class, the initial noise and the one-step collection call,
  default steps and guidance per model kind (base, Lightning, Turbo, schnell, dev, …);
- **detection**: from a diffusers pipeline, from ComfyUI's model-config and text-encoder classes.

Nothing here imports diffusers, transformers or ComfyUI: families see ``torch.nn.Module`` trees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ...mapfile import TransportMap
from ..noise import batch_noise
from ..presets import Preset
from .ldm_unet import LdmUNet
from .names import Index, NameTable, NameTranslationError, StreamRule, split_prefix
from .text_encoders import (CLIP_G, CLIP_H, CLIP_L, CLIP_L_PROJ, T5_XXL, TextEncoder, _text_inner, text_from_comfy,
                            text_to_comfy)


# -- a naming view -------------------------------------------------------------------------------


class CanonicalTree(torch.nn.Module):
    """An ``nn.Module`` whose ``named_modules()`` are canonical names and whose
    ``get_submodule(name)`` returns the model's own module for that name (shared, not copied).

    Collectors, :func:`act_core.hooks.steer` and :func:`act_core.fitting.fit_map` take it like
    any module tree, so hooks registered through it sit on the real modules. Two stream names
    of one block resolve to the same module; :meth:`act_output_index` tells the hooks which
    tuple element each reads, so canonical maps apply as they are. It is a view: it has no
    parameters, children or forward of its own.
    """

    def __init__(self, sites: Mapping[str, torch.nn.Module], family: str = "",
                 indices: Optional[Mapping[str, Index]] = None):
        super().__init__()
        self.__dict__["_sites"] = dict(sites)
        self.__dict__["_family"] = family
        self.__dict__["_indices"] = dict(indices or {})

    def act_output_index(self, name: str) -> Index:
        """The tuple index this framework reads for ``name`` (stream names), else None."""
        return self._indices.get(name)

    def get_submodule(self, target: str) -> torch.nn.Module:
        if not target:
            return self
        module = self._sites.get(target)
        if module is None:
            raise AttributeError(f"{target!r} is not a canonical layer name of this {self._family or 'model'}")
        return module

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True) -> Iterator:
        yield prefix, self
        for name, module in self._sites.items():
            yield (f"{prefix}.{name}" if prefix else name), module

    def names(self) -> List[str]:
        return list(self._sites)

    def forward(self, *a, **k):  # pragma: no cover - a view, never called
        raise RuntimeError("this is a naming view over a model's modules; call the model instead")


# -- the family ----------------------------------------------------------------------------------


@dataclass
class Family:
    """One model family. Subclasses (one per family module) fill in the names and tables.

    Attributes:
        name: the architecture string recorded in maps (``"sdxl"``, ``"flux"``, …).
        title: for messages and docs.
        denoiser: the pipeline attribute and canonical prefix of the denoiser (``unet`` or ``transformer``).
        text_encoders: canonical prefix (pipeline attribute) -> :class:`TextEncoder`, in forward order.
        presets: layer presets over canonical names; ``default_layers`` the paper's choice.
        pipeline_class: the diffusers pipeline class name.
        kinds: model kind -> (default steps, default guidance scale).
        comfy_models: ComfyUI ``supported_models`` class names of this family (matched on the
            model config's class and its bases, most derived first).
        comfy_clips: ComfyUI text-encoder model class names (``CLIP.cond_stage_model``).
        flow: a flow-matching model: the first step of any schedule is sigma = 1, so collection
            keeps the pipeline's scheduler; otherwise a 1-step trailing Euler schedule (t = 999).
        roles: which presets play a role every family has (``norms``, ``blocks``, ``attention``,
            ``text``, ``t5``): what family-neutral choices (the ComfyUI Fit node's) resolve to.
    """

    name: str
    title: str
    denoiser: str
    text_encoders: Mapping[str, TextEncoder]
    presets: Mapping[str, Preset]
    default_layers: str
    pipeline_class: str
    kinds: Mapping[str, Tuple[int, float]]
    comfy_models: Tuple[str, ...] = ()
    comfy_clips: Tuple[str, ...] = ()
    flow: bool = False
    streams: Tuple[StreamRule, ...] = ()
    comfy_root: str = "diffusion_model"
    notes: str = ""
    roles: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    _unet: Optional[LdmUNet] = field(default=None, repr=False)
    _table: Optional[NameTable] = field(default=None, repr=False)

    # -- components ------------------------------------------------------------------------------

    @property
    def components(self) -> Tuple[str, ...]:
        """Pipeline components in forward order: the text encoders, then the denoiser."""
        return (*self.text_encoders, self.denoiser)

    def component(self, canonical: str) -> str:
        """``"model"`` (the denoiser: ComfyUI's MODEL) or ``"clip"`` (a text encoder: ComfyUI's CLIP)."""
        head = canonical.split(".", 1)[0]
        if head == self.denoiser:
            return "model"
        if head in self.text_encoders:
            return "clip"
        raise NameTranslationError(
            f"{canonical!r} is not a canonical {self.title} name: it must start with "
            + ", ".join(f"'{c}.'" for c in self.components)
        )

    # -- denoiser names (family-specific; LDM UNets and name tables built in) ---------------------

    def denoiser_to_comfy(self, local: str) -> str:
        """diffusers denoiser name (no prefix) -> ComfyUI name below ``diffusion_model``."""
        if self._unet is not None:
            return self._unet.to_comfy(local)
        out = self._table.to_comfy(local) if self._table is not None else None
        if out is None:
            raise NameTranslationError(
                f"{self.denoiser} module {local!r} has no ComfyUI counterpart in {self.title} "
                f"(see act_core.diffusion.families.{self.name} for the layers that translate)"
            )
        return out

    def denoiser_from_comfy(self, local: str) -> str:
        if self._unet is not None:
            return self._unet.from_comfy(local)
        out = self._table.from_comfy(local) if self._table is not None else None
        if out is None:
            raise NameTranslationError(
                f"ComfyUI {self.title} module {local!r} has no diffusers counterpart "
                f"(see act_core.diffusion.families.{self.name} for the layers that translate)"
            )
        return out

    # -- streams ---------------------------------------------------------------------------------

    def _stream_of(self, local: str, side: str) -> Optional[Tuple[StreamRule, str, str]]:
        """``(rule, block name on that side, suffix)`` when ``local`` (a denoiser name without
        prefix; diffusers names may end in a stream suffix) is a stream name or stream block."""
        for rule in self.streams:
            rx = rule._rd if side == "diffusers" else rule._rc
            m = rx.fullmatch(local)
            if m and "" in rule.streams:
                return rule, local, ""
            if side == "diffusers":
                head, _, suffix = local.rpartition(".")
                m = rx.fullmatch(head)
                if m and suffix in rule.streams and suffix:
                    return rule, head, suffix
        return None

    def has_stream(self, block: torch.nn.Module, suffix: str) -> bool:
        """Whether ``block`` (of either framework) produces stream ``suffix`` (SD3's last block has no text output)."""
        return True

    def diffusers_index(self, canonical: str) -> Tuple[bool, Index]:
        """``(True, index)`` when the family fixes the tuple index diffusers reads for ``canonical``."""
        head, _, rest = canonical.partition(".")
        if head != self.denoiser:
            return False, None
        hit = self._stream_of(rest, "diffusers")
        return (True, hit[0].streams[hit[2]][0]) if hit else (False, None)

    def module_path(self, canonical: str) -> str:
        """The diffusers module path of ``canonical`` below its component (stream suffix removed)."""
        head, _, rest = canonical.partition(".")
        if head == self.denoiser:
            hit = self._stream_of(rest, "diffusers")
            return hit[1] if hit else rest
        return rest

    # -- whole canonical names <-> ComfyUI --------------------------------------------------------

    def comfy_site(self, canonical: str) -> Tuple[str, Index]:
        """Canonical name -> (ComfyUI name relative to ``MODEL.model`` / ``CLIP.cond_stage_model``,
        the tuple index ComfyUI reads there, or None)."""
        head, _, rest = canonical.partition(".")
        if not rest:
            raise NameTranslationError(f"{canonical!r} names a whole model, not a module inside it")
        if head == self.denoiser:
            hit = self._stream_of(rest, "diffusers")
            if hit is not None:
                rule, block, suffix = hit
                m = rule._rd.fullmatch(block)
                return f"{self.comfy_root}.{rule.comfy.format(**m.groupdict())}", rule.streams[suffix][1]
            for rule in self.streams:
                if rule._rd.fullmatch(rest):
                    raise NameTranslationError(
                        f"{canonical!r} returns several streams; name one: "
                        + ", ".join(f"{canonical}.{s}" for s in rule.streams if s)
                    )
            return f"{self.comfy_root}.{self.denoiser_to_comfy(rest)}", None
        if head in self.text_encoders:
            return text_to_comfy(self.text_encoders[head], canonical, rest), None
        self.component(canonical)  # raises with the explanation
        raise AssertionError  # pragma: no cover

    def to_comfy(self, canonical: str) -> str:
        return self.comfy_site(canonical)[0]

    def from_comfy(self, local: str, index: Index = None) -> str:
        """ComfyUI name (relative to ``MODEL.model`` or ``CLIP.cond_stage_model``) -> canonical
        name; ``index`` picks a stream of a multi-output block."""
        head, _, rest = local.partition(".")
        if head == self.comfy_root and rest:
            for rule in self.streams:
                m = rule._rc.fullmatch(rest)
                if not m:
                    continue
                block = f"{self.denoiser}.{rule.diffusers.format(**m.groupdict())}"
                for suffix, (_, ci) in rule.streams.items():
                    if ci == index or (suffix == "" and index is None):
                        return f"{block}.{suffix}" if suffix else block
                raise NameTranslationError(
                    f"ComfyUI module {local!r} returns several streams: its canonical names are "
                    + ", ".join(f"{block}.{s}" for s in rule.streams if s)
                )
            return f"{self.denoiser}.{self.denoiser_from_comfy(rest)}"
        for canon, te in self.text_encoders.items():
            if head == te.comfy:
                return text_from_comfy(te, canon, local, rest)
        raise NameTranslationError(
            f"{local!r} is not a ComfyUI {self.title} module name: it must start with "
            + ", ".join(f"'{p}.'" for p in (self.comfy_root, *(t.comfy for t in self.text_encoders.values())))
        )

    def try_from_comfy(self, local: str, index: Index = None) -> Optional[str]:
        try:
            return self.from_comfy(local, index)
        except NameTranslationError:
            return None

    def comfy_names(self, model: Optional[torch.nn.Module] = None,
                    clip: Optional[torch.nn.Module] = None) -> Dict[str, Tuple[str, Index, torch.nn.Module]]:
        """``{canonical: (ComfyUI name, index, module)}`` for every module of ComfyUI's trees
        (``MODEL.model``, ``CLIP.cond_stage_model``) that has a canonical name; text encoders
        first, then the denoiser (forward order of the components)."""
        out: Dict[str, Tuple[str, Index, torch.nn.Module]] = {}
        for root in (clip, model):
            if root is None:
                continue
            for n, m in root.named_modules():
                if not n:
                    continue
                head, _, rest = n.partition(".")
                rule = next((r for r in self.streams if head == self.comfy_root and r._rc.fullmatch(rest)), None)
                if rule is not None:
                    for suffix, (_, ci) in rule.streams.items():
                        if suffix == "" or self.has_stream(m, suffix):
                            out.setdefault(self.from_comfy(n, ci if suffix else None), (n, ci, m))
                    continue
                c = self.try_from_comfy(n)
                if c is not None:
                    out.setdefault(c, (n, None, m))
        return out

    def comfy_tree(self, model: Optional[torch.nn.Module] = None,
                   clip: Optional[torch.nn.Module] = None) -> CanonicalTree:
        """A canonical-name view of ComfyUI's module trees (see :meth:`comfy_names`)."""
        names = self.comfy_names(model, clip)
        return CanonicalTree({c: m for c, (_, _, m) in names.items()}, self.title,
                             {c: i for c, (_, i, _) in names.items() if i is not None})

    # -- maps in ComfyUI's own names and indices ---------------------------------------------------

    def comfy_map(self, tmap: TransportMap) -> Tuple[TransportMap, Dict[str, str]]:
        """(``tmap`` with ComfyUI's tuple indices, ``{canonical: ComfyUI name}``) for steering
        ComfyUI's trees with ``name_map``. A map file stores no index for stream names (the
        name says which stream); this copy holds the index ComfyUI reads."""
        out = TransportMap(dict(tmap.maps), dict(tmap.layouts), dict(tmap.output_index), dict(tmap.meta))
        names = {}
        for n in out.maps:
            local, index = self.comfy_site(n)
            names[n] = local
            if self.diffusers_index(n)[0]:
                out.output_index[n] = index
        return out, names

    # -- diffusers pipelines -----------------------------------------------------------------------

    def component_names(self, prefix: str, module: torch.nn.Module) -> List[str]:
        """Canonical names of one pipeline component (``named_modules()`` order; stream blocks
        replaced by their stream names; CLIP's ``text_model`` flattened)."""
        if prefix == self.denoiser:
            out = [prefix]
            for n, m in module.named_modules():
                if not n:
                    continue
                rule = next((r for r in self.streams if r._rd.fullmatch(n)), None)
                if rule is None:
                    out.append(f"{prefix}.{n}")
                    continue
                for suffix in rule.streams:
                    if suffix == "":
                        out.append(f"{prefix}.{n}")
                    elif self.has_stream(m, suffix):
                        out.append(f"{prefix}.{n}.{suffix}")
            return out
        inner, path = _text_inner(module)
        out = [prefix]
        for n, _ in module.named_modules():
            if not n or n == path:
                continue
            if path and n.startswith(path + "."):
                n = n[len(path) + 1:]
            out.append(f"{prefix}.{n}")
        return out

    def canonical_names(self, pipe) -> List[str]:
        """Canonical names of every module of a pipeline's text encoders and denoiser, in
        component order, ``named_modules()`` order inside each. Inside a UNet that is not
        forward order (diffusers registers ``up_blocks`` before ``mid_block``); causal fitting
        measures forward order with a probe run (:meth:`act_core.diffusion.pipeline.PipelineRunner.order`)."""
        names: List[str] = []
        for comp in self.components:
            m = getattr(pipe, comp, None)
            if m is not None:
                names.extend(self.component_names(comp, m))
        return names

    def module(self, pipe, canonical: str) -> torch.nn.Module:
        """The diffusers/transformers module a canonical name refers to (the block, for a stream name)."""
        comp, _, rest = canonical.partition(".")
        root = getattr(pipe, comp, None) if comp in self.components else None
        if root is None:
            raise ValueError(f"{canonical!r} is not a {self.title} canonical name: it must start with one of "
                             f"{', '.join(self.components)} (of components this pipeline has)")
        if not rest:
            return root
        path = self.module_path(canonical)
        if comp != self.denoiser:
            inner, wrap = _text_inner(root)
            head = path.split(".", 1)[0]
            if wrap and head != wrap and not hasattr(root, head):
                path = f"{wrap}.{path}"
        return root.get_submodule(path)

    def module_tree(self, pipe) -> CanonicalTree:
        """A view of the pipeline whose names are exactly :meth:`canonical_names` (and whose
        stream names read diffusers' tuple elements)."""
        sites, indices = {}, {}
        for n in self.canonical_names(pipe):
            sites[n] = self.module(pipe, n)
            fixed, index = self.diffusers_index(n)
            if fixed:
                indices[n] = index
        return CanonicalTree(sites, self.title, indices)

    def denoiser_module(self, pipe) -> torch.nn.Module:
        return getattr(pipe, self.denoiser)

    def default_size(self, pipe) -> int:
        """The pipeline's default image height = width in pixels."""
        size = getattr(pipe, "default_sample_size", None)
        if size is None:
            size = self.denoiser_module(pipe).config.sample_size
        return int(size) * int(pipe.vae_scale_factor)

    def noise(self, pipe, prompts: Sequence[str], height: Optional[int], width: Optional[int], seed: int) -> torch.Tensor:
        """Initial latents for the collection pass, one noise per prompt
        (:func:`act_core.diffusion.noise.prompt_noise`, the rule the ComfyUI Fit node uses too), in
        the layout the pipeline's ``latents=`` argument takes (``(B, C, h, w)`` here)."""
        scale = pipe.vae_scale_factor
        h = (height or self.default_size(pipe)) // scale
        w = (width or self.default_size(pipe)) // scale
        c = self.denoiser_module(pipe).config.in_channels
        den = self.denoiser_module(pipe)
        return batch_noise(seed, prompts, (c, h, w)).to(den.device, den.dtype)

    def collect_guidance(self, pipe) -> float:
        """Guidance scale of the collection call: 0 (no CFG batch), as the reference."""
        return 0.0

    def guess_kind(self, pipe, text: str) -> str:
        """The model kind from file/folder names (``text``) and the loaded pipeline."""
        for kind in self.kinds:
            if kind != "base" and kind in text.lower():
                return kind
        return next(iter(self.kinds))

    def prepare(self, pipe, kind: str, unet_path=None) -> Optional[int]:
        """Adjust a freshly loaded pipeline for ``kind`` (e.g. the scheduler); may return the
        default step count when a file name says it (SDXL-Lightning)."""
        return None

    # -- detection ---------------------------------------------------------------------------------

    def matches_pipeline(self, pipe) -> bool:
        """Whether a diffusers pipeline (or an object with the same attributes) is of this family."""
        return type(pipe).__name__ == self.pipeline_class

    def role(self, role: str) -> Tuple[str, ...]:
        """The presets of a family-neutral role (``default`` is the paper's preset); ValueError
        when this family has none."""
        if role == "default":
            return (self.default_layers,)
        presets = self.roles.get(role)
        if not presets:
            raise ValueError(f"{self.title} has no {role!r} layers; choose among "
                             + ", ".join(sorted(("default", *self.roles))))
        return tuple(presets)

    def describe(self) -> str:
        te = ", ".join(f"{t.title} ({p})" for p, t in self.text_encoders.items())
        return f"{self.title}: {self.denoiser} + {te}"


__all__ = [
    "Index", "NameTranslationError", "CanonicalTree", "NameTable", "StreamRule", "LdmUNet", "TextEncoder",
    "CLIP_L", "CLIP_L_PROJ", "CLIP_G", "CLIP_H", "T5_XXL", "Family", "split_prefix",
]
