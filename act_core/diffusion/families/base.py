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

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ...mapfile import TransportMap
from ..noise import batch_noise
from ..presets import Preset

Index = Union[int, Tuple[int, ...], None]


class NameTranslationError(ValueError):
    """A module name has no counterpart in the other naming scheme."""


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


# -- name tables ---------------------------------------------------------------------------------


def _template_regex(template: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>\\d+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


class NameTable:
    """Leaf-name pairs ``(diffusers template, ComfyUI template)`` with ``{i}``-style block
    numbers, translated both ways by full match (``"transformer_blocks.{i}.norm2"`` <->
    ``"double_blocks.{i}.img_norm2"``). Names in neither column have no counterpart."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self.pairs = [(a, b, _template_regex(a), _template_regex(b)) for a, b in pairs]

    def to_comfy(self, name: str) -> Optional[str]:
        for a, b, ra, _ in self.pairs:
            m = ra.fullmatch(name)
            if m:
                return b.format(**m.groupdict())
        return None

    def from_comfy(self, name: str) -> Optional[str]:
        for a, b, _, rb in self.pairs:
            m = rb.fullmatch(name)
            if m:
                return a.format(**m.groupdict())
        return None


@dataclass(frozen=True)
class StreamRule:
    """A block with several outputs, or one output that a framework returns in pieces.

    ``streams`` maps a suffix to ``(diffusers index, ComfyUI index)``; the suffix ``""`` means
    the block itself (one canonical output)."""

    diffusers: str
    comfy: str
    streams: Mapping[str, Tuple[Index, Index]]

    def __post_init__(self):
        object.__setattr__(self, "_rd", _template_regex(self.diffusers))
        object.__setattr__(self, "_rc", _template_regex(self.comfy))


def split_prefix(name: str, table: Mapping[str, object]) -> Optional[Tuple[str, str]]:
    """Longest ``prefix`` in ``table`` with ``name == prefix`` or ``name`` starting with ``prefix.``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return head, ".".join(parts[n:])
    return None


# -- the LDM UNet layout (SD1.x, SD2.x, SDXL) ------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "dropout": "out_layers.2", "conv2": "out_layers.3",
           "conv_shortcut": "skip_connection"}
_EMBED = {"linear_1": "0", "act": "1", "linear_2": "2"}
# kind -> inner table (diffusers child -> ComfyUI child); None = identical names
_INNER = {"resnet": _RESNET, "embed": _EMBED, "down": {"conv": "op"}, "up": {"conv": "conv"},
          "attention": None, "leaf": {}}


class LdmUNet:
    """diffusers ``UNet2DConditionModel`` names <-> ComfyUI ``UNetModel`` names for the LDM layout.

    ``levels`` resolution levels with ``layers`` resnets per down level (``layers + 1`` per up
    level); attention on the down levels in ``down_attention`` and up levels in ``up_attention``.
    ComfyUI numbers blocks ``input_blocks.k.j`` / ``output_blocks.k.j`` where diffusers groups
    them per level (``L = layers``)::

        down_blocks.d.resnets.i       <-> input_blocks.(1+(L+1)d+i).0
        down_blocks.d.attentions.i    <-> input_blocks.(1+(L+1)d+i).1
        down_blocks.d.downsamplers.0  <-> input_blocks.((L+1)(d+1)).0     (.conv <-> .op)
        mid_block.resnets.0 / attentions.0 / resnets.1 <-> middle_block.0 / 1 / 2
        up_blocks.u.resnets.i         <-> output_blocks.((L+1)u+i).0
        up_blocks.u.attentions.i      <-> output_blocks.((L+1)u+i).1
        up_blocks.u.upsamplers.0      <-> output_blocks.((L+1)u+L).(2 with attention, else 1)
        conv_in <-> input_blocks.0.0;  conv_norm_out / conv_act / conv_out <-> out.0 / out.1 / out.2
        time_embedding.{linear_1,act,linear_2} <-> time_embed.{0,1,2}
        add_embedding.{linear_1,act,linear_2}  <-> label_emb.0.{0,1,2}   (SDXL)

    Inside a resnet: ``norm1<->in_layers.0``, ``conv1<->in_layers.2``, ``time_emb_proj<->emb_layers.1``,
    ``norm2<->out_layers.0``, ``dropout<->out_layers.2``, ``conv2<->out_layers.3``,
    ``conv_shortcut<->skip_connection``. Inside attention blocks (``Transformer2DModel`` <->
    ``SpatialTransformer``) the names are identical.
    """

    def __init__(self, levels: int, down_attention: Iterable[int], up_attention: Iterable[int], layers: int = 2):
        down_attention, up_attention = set(down_attention), set(up_attention)
        step = layers + 1
        rows = [("conv_in", "input_blocks.0.0", "leaf"),
                ("time_embedding", "time_embed", "embed"),
                ("add_embedding", "label_emb.0", "embed"),
                ("conv_norm_out", "out.0", "leaf"), ("conv_act", "out.1", "leaf"), ("conv_out", "out.2", "leaf"),
                ("mid_block.resnets.0", "middle_block.0", "resnet"),
                ("mid_block.attentions.0", "middle_block.1", "attention"),
                ("mid_block.resnets.1", "middle_block.2", "resnet")]
        for d in range(levels):
            for i in range(layers):
                rows.append((f"down_blocks.{d}.resnets.{i}", f"input_blocks.{1 + step * d + i}.0", "resnet"))
                if d in down_attention:
                    rows.append((f"down_blocks.{d}.attentions.{i}", f"input_blocks.{1 + step * d + i}.1", "attention"))
            if d < levels - 1:
                rows.append((f"down_blocks.{d}.downsamplers.0", f"input_blocks.{step * (d + 1)}.0", "down"))
        for u in range(levels):
            for i in range(step):
                rows.append((f"up_blocks.{u}.resnets.{i}", f"output_blocks.{step * u + i}.0", "resnet"))
                if u in up_attention:
                    rows.append((f"up_blocks.{u}.attentions.{i}", f"output_blocks.{step * u + i}.1", "attention"))
            if u < levels - 1:
                rows.append((f"up_blocks.{u}.upsamplers.0",
                             f"output_blocks.{step * u + layers}.{2 if u in up_attention else 1}", "up"))
        self.rows = rows
        self._d2c = {d: (c, k) for d, c, k in rows}
        self._c2d = {c: (d, k) for d, c, k in rows}

    @staticmethod
    def _inner(rest: str, kind: str, forward: bool, full: str) -> str:
        if not rest:
            return ""
        table = _INNER[kind]
        if table is None:
            return "." + rest
        if not forward:
            table = {v: k for k, v in table.items()}
        hit = split_prefix(rest, table)
        if hit is None:
            side = "ComfyUI" if forward else "diffusers"
            raise NameTranslationError(
                f"{full!r} has no {side} counterpart: below a {kind} block only {', '.join(sorted(table))} translate"
            )
        head, tail = hit
        return "." + table[head] + ("." + tail if tail else "")

    def to_comfy(self, local: str) -> str:
        """diffusers UNet name (no ``unet.`` prefix) -> ComfyUI ``UNetModel`` name (no root prefix)."""
        hit = split_prefix(local, self._d2c)
        if hit is None:
            raise NameTranslationError(
                f"diffusers UNet module {local!r} has no ComfyUI counterpart; translatable modules live under "
                "conv_in, time_embedding, add_embedding, down_blocks.D.{resnets,attentions,downsamplers}.I, "
                "mid_block.{resnets,attentions}.I, up_blocks.U.{resnets,attentions,upsamplers}.I, conv_norm_out, "
                "conv_act, conv_out"
            )
        head, rest = hit
        comfy, kind = self._d2c[head]
        return comfy + self._inner(rest, kind, True, local)

    def from_comfy(self, local: str) -> str:
        """ComfyUI ``UNetModel`` name (no root prefix) -> diffusers UNet name (no ``unet.`` prefix)."""
        hit = split_prefix(local, self._c2d)
        if hit is None:
            raise NameTranslationError(
                f"ComfyUI UNet module {local!r} has no diffusers counterpart; translatable modules are the blocks "
                "input_blocks.K.J, middle_block.K, output_blocks.K.J, time_embed, label_emb.0, out.K and their insides"
            )
        head, rest = hit
        diff, kind = self._c2d[head]
        return diff + self._inner(rest, kind, False, local)


# -- text encoders -------------------------------------------------------------------------------


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
