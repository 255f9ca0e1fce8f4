"""Pack-side glue between ComfyUI module trees and act_core (no math; ComfyUI through comfy_compat only).

Names: a map names modules either by a family's canonical names (SD1.5, SD2.x, SDXL, SD3.5,
FLUX.1: ``act_core.diffusion.families``; one map file works in diffusers too) or, for any other
model ComfyUI loads, by ComfyUI's own names (the generic path:
``act_core.diffusion.families.generic``). :class:`Naming` is that choice for a connected model.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from act_core.diffusion import families
from act_core.diffusion.families import generic
from act_core.diffusion.families.base import Family, NameTranslationError
from act_core.diffusion.presets import resolve_modules
from act_core.fold import FoldError, fold_factors
from act_core.mapfile import MapFileError, TransportMap

from . import comfy_compat as cc

log = logging.getLogger("act_steering")

#: family-neutral layer choices (the Fit node's) -> a family's role (act_core.diffusion.families.base.Family.role)
ROLES = {"default": "the family's paper setting", "norms": "every normalisation", "blocks": "every block output",
         "attention": "attention outputs", "text": "text encoder layers", "t5": "T5 blocks"}


@dataclass(frozen=True)
class Naming:
    """How maps name the modules of a connected model: a family's canonical names, or ComfyUI's
    own (``family`` None: the generic path, ``architecture`` ``"comfyui:<model class>"``)."""

    architecture: str
    family: Optional[Family]
    title: str

    @staticmethod
    def of_model(model) -> "Naming":
        fam = families.for_comfy_model(cc.stock_model_class(model))
        if fam is not None:
            return Naming(fam.name, fam, fam.title)
        cls = cc.stock_model_class(model)
        return Naming(generic.architecture(cls), None, f"ComfyUI {cls}")

    @staticmethod
    def of_clip(clip) -> Optional["Naming"]:
        fam = families.for_comfy_clip(cc.stock_clip_class(clip))
        return Naming(fam.name, fam, fam.title) if fam is not None else None

    @property
    def generic(self) -> bool:
        return self.family is None

    def component(self, name: str) -> str:
        """``"model"`` (the denoiser, ComfyUI's MODEL) or ``"clip"`` (a text encoder)."""
        if self.family is None:
            return generic.component(name)
        return self.family.component(name)

    def tree(self, model=None, clip=None):
        """A view of ``MODEL.model`` / ``CLIP.cond_stage_model`` (nn.Modules) named as maps name them."""
        if self.family is None:
            return generic.tree(model, clip)
        return self.family.comfy_tree(model, clip)

    def localize(self, tmap: TransportMap, strip: str = "") -> Tuple[TransportMap, Dict[str, str]]:
        """(``tmap`` with the tuple indices ComfyUI reads, ``{map name: ComfyUI name}`` with the
        leading ``strip.`` removed): what steering ComfyUI's own module trees takes."""
        if self.family is None:
            local, names = tmap, {n: n for n in tmap.maps}
        else:
            try:
                local, names = self.family.comfy_map(tmap)
            except NameTranslationError as e:
                raise MapFileError(f"this map has a layer ComfyUI's {self.title} has no counterpart for: {e}") from None
        if strip:
            names = {n: (v[len(strip) + 1:] if v.startswith(strip + ".") else v) for n, v in names.items()}
        return local, names

    def layers(self, tree, role: str) -> List[str]:
        """The names of a family-neutral layer role on ``tree`` (a view from :meth:`tree`)."""
        names = [n for n, _ in tree.named_modules() if n]
        if self.family is None:
            fn = generic.PRESETS.get("blocks" if role == "default" else role)
            if fn is None:
                raise ValueError(f"{ROLES[role]!r} needs a model family; {self.title} has none in act-steering "
                                 "(the generic path offers every normalisation, every block output and text encoder "
                                 "layers, or a custom pattern over ComfyUI's module names)")
            chosen = fn(tree)
            if not chosen:
                raise ValueError(f"{self.title} has no {ROLES[role]} that the generic path can find; use a custom pattern "
                                 "over ComfyUI's module names")
            return chosen
        return list(resolve_modules(list(self.family.role(role)), names, self.family.presets))

    def patterns(self, tree, items: Sequence[str]) -> Dict[str, Optional[int]]:
        """``{name: output index}`` for full-match regexes (and, with a family, preset names)."""
        names = [n for n, _ in tree.named_modules() if n]
        presets = self.family.presets if self.family is not None else {}
        return resolve_modules(list(items), names, presets)


def check_architecture(tmap: TransportMap, naming: Optional[Naming] = None) -> None:
    """Clear errors for maps this pack cannot apply (an LLM map, another family's map, a generic
    map of another ComfyUI model type)."""
    arch = tmap.architecture
    fam = families.for_architecture(arch)
    if arch and fam is None and not generic.is_generic(arch):
        raise MapFileError(
            f"this map was fitted on a {arch!r} model, not a diffusion model these nodes steer "
            f"({', '.join(f.title for f in families.FAMILIES.values())}, or any model through the generic path). "
            "Fit a map on your checkpoint (Fit transport map node)."
        )
    if naming is None or not arch or arch == naming.architecture:
        return
    if generic.is_generic(arch):
        what = (f"with ComfyUI's own module names on a {generic.model_class(arch)!r} model (the generic path for "
                "models without a family module)")
    else:
        what = f"on {fam.title} (canonical {fam.title} layer names)"
    raise MapFileError(
        f"this map was fitted {what}, but the connected model is {naming.title}"
        + (" (generic path)" if naming.generic else "")
        + f". Fit a map on this model type, or connect a {generic.model_class(arch) if generic.is_generic(arch) else fam.title} model."
    )


def check_clip(naming: Naming, clip) -> None:
    """The CLIP must belong to the model's family (a generic model's CLIP is not checked)."""
    clip_naming = Naming.of_clip(clip)
    if naming.family is not None and clip_naming is not None and clip_naming.family is not naming.family:
        raise ValueError(f"the CLIP is {clip_naming.title}'s but the model is {naming.title}: connect the CLIP "
                         "output of the same checkpoint loader (or the text encoders of this model)")


def component_subset(tmap: TransportMap, naming: Naming, component: str, node_hint: str) -> TransportMap:
    """The part of ``tmap`` that lives in ``component`` ("model" or "clip"), or a clear error."""
    keep = []
    for n in tmap.maps:
        try:
            if naming.component(n) == component:
                keep.append(n)
        except NameTranslationError as e:
            raise MapFileError(f"map module {n!r} is not a {naming.title} module name ({e})") from None
    label = {"model": "diffusion-model", "clip": "text-encoder"}
    other = label["clip" if component == "model" else "model"]
    if not keep:
        raise MapFileError(f"this map has only {other} layers; connect it to {node_hint} instead")
    if len(keep) < len(tmap):
        log.warning("AcT: this map also has %d %s layers, not applied by this node; connect the same map to %s too",
                    len(tmap) - len(keep), other, node_hint)
    return tmap.subset(keep)


_ALIASES = {
    "unet": r"unet\..*", "down": r"unet\.down_blocks\..*", "mid": r"unet\.mid_block\..*",
    "up": r"unet\.up_blocks\..*", "text_encoder": r"text_encoder\..*", "text_encoder_2": r"text_encoder_2\..*",
    "transformer": r"transformer\..*", "double": r"transformer\.transformer_blocks\..*",
    "single": r"transformer\.single_transformer_blocks\..*",
}


def block_strengths(spec: str, modules: Iterable[str], strength: float) -> Dict[str, float]:
    """Per-module strengths from ``strength`` and a per-block spec.

    ``spec`` holds lines or comma-separated items ``key=factor``; ``key`` is ``down``, ``mid``,
    ``up``, ``unet`` (UNet families), ``transformer``, ``double``, ``single`` (FLUX: double- and
    single-stream blocks), ``text_encoder``, ``text_encoder_2`` or a full-match regex over the
    map's names. A module gets ``strength * factor`` of the *first* item that matches it, else
    ``strength``. Example: ``down=0, mid=1, up=1.5``.
    """
    modules = list(modules)
    out = {n: float(strength) for n in modules}
    items = [s.strip() for s in re.split(r"[,\n]", spec or "") if s.strip()]
    taken = set()
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"per-block strength item {item!r} must look like 'down=0.5' (key=factor)")
        try:
            factor = float(value)
        except ValueError:
            raise ValueError(f"per-block strength {item!r}: {value!r} is not a number") from None
        if not math.isfinite(factor):
            raise ValueError(f"per-block strength {item!r}: the factor must be a finite number")
        pattern = _ALIASES.get(key, key)
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"per-block key {key!r} is neither a block alias ({', '.join(_ALIASES)}) nor a valid regex: {e}") from None
        hits = [n for n in modules if rx.fullmatch(n)]
        if not hits:
            raise ValueError(
                f"per-block key {key!r} matches no module of this map; use {', '.join(_ALIASES)} (those the map has) "
                f"or a regex over names such as {modules[0]!r}"
            )
        for n in hits:
            if n not in taken:
                out[n] = float(strength) * factor
                taken.add(n)
    return out


def step_in_window(sigma: float, sample_sigmas, start: float, end: float) -> bool:
    """Whether the sampler step at noise level ``sigma`` lies inside ``[start, end]`` counted in
    *steps*: with ``N = len(sample_sigmas) - 1`` steps, step ``i`` (the one starting at
    ``sample_sigmas[i]``) is inside when its middle ``(i + 0.5)/N`` is.

    Exact on few-step models and forgiving of rounded inputs: ``0..0.5`` of a 4-step schedule
    is steps 1 and 2, ``0.67..1`` of a 3-step one is step 3, whatever the sigmas. A call
    between two sample sigmas (dpm_2's midpoint evaluation) counts for the step that starts
    above it; a call exactly at a sample sigma (Heun's corrector, evaluated at the next
    step's sigma) counts for the step that starts there.
    """
    sig = [float(v) for v in sample_sigmas]
    n = len(sig) - 1
    if n < 1:
        return True
    i = sum(1 for v in sig[:-1] if v >= float(sigma) * (1 - 1e-5)) - 1
    middle = (min(max(i, 0), n - 1) + 0.5) / n
    return start <= middle <= end


def split_foldable(root, tmap: TransportMap, strengths: Mapping[str, float], name_map: Mapping[str, str]):
    """Which modules of ``tmap`` fold exactly into their own weights at their own strength.

    Returns ``(folds, hooked)``: ``folds = {name: {attr: (scale, shift)}}`` (see
    ``act_core.fold.fold_factors``; modules at strength 0 are left out of both, they are the
    identity) and ``hooked = {name: reason}`` for modules that keep steering hooks (a band
    support, a spatial-mean map with ω ≠ 1 on a 4-D output, no bias for a non-zero offset).
    The support is each map's default support, the one the hooks use.
    """
    folds, hooked = {}, {}
    for n, t in tmap.maps.items():
        lam = float(strengths[n])
        if lam == 0.0:
            continue
        if tmap.output_index.get(n) is not None:
            hooked[n] = "the steered output is an element of a tuple, not the layer's affine output"
            continue
        module = root.get_submodule(name_map[n])
        try:
            factors = fold_factors(module, t, lam, None, tmap.layouts.get(n, "auto"))
        except FoldError as e:
            hooked[n] = str(e)
            continue
        missing = [a for a in factors if getattr(module, a, None) is None]
        if missing:  # a weight patch can only change parameters that exist
            hooked[n] = f"the layer has no {' or '.join(missing)} parameter to patch"
        else:
            folds[n] = factors
    return folds, hooked


def rows_gate(rows_fn):
    """act_core gate from ``rows_fn(batch) -> (B,) bool or None`` (None = steer every row).

    The decision is computed once per batch size and device (the gate lives for one UNet call,
    where every hooked module sees the same batch layout), not once per hooked module.
    """
    memo = {}

    def gate(name, x):
        key = (x.shape[0], x.device)
        if key not in memo:
            rows = rows_fn(x.shape[0])
            if rows is None or bool(rows.all()):
                memo[key] = True
            elif not bool(rows.any()):
                memo[key] = False
            else:
                memo[key] = rows.to(x.device)
        return memo[key]

    return gate


def local_name_map(tmap: TransportMap, strip: str) -> Mapping[str, str]:
    """``{map name: ComfyUI name with the leading ``strip.`` removed}`` for every module of
    ``tmap``, by the family its architecture names (SDXL when it records none; a generic map's
    names are ComfyUI's already)."""
    arch = tmap.architecture
    if generic.is_generic(arch):
        naming = Naming(arch, None, f"ComfyUI {generic.model_class(arch)}")
    else:
        fam = families.for_architecture(arch) or families.sdxl.FAMILY
        naming = Naming(fam.name, fam, fam.title)
    return naming.localize(tmap, strip)[1]
