"""Pack-side glue between ComfyUI module trees and act_core (no ComfyUI imports, no math).

Names: :func:`comfy_compat.model_tree` exposes ``model.<UNet names>`` and
``cond_stage_model.<CLIP names>``; maps store canonical names (``act_core.diffusion.families.sdxl``).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Dict, Iterable, Mapping, Optional

from act_core.diffusion.families import sdxl as act_names
from act_core.fold import FoldError, fold_factors
from act_core.mapfile import MapFileError, TransportMap

log = logging.getLogger("act_steering")

UNET_ROOT = "model"
CLIP_ROOT = "cond_stage_model"
SUPPORTED_ARCHITECTURES = ("sdxl",)


def tree_to_canonical(tree_name: str) -> str:
    root, _, rest = tree_name.partition(".")
    if root not in (UNET_ROOT, CLIP_ROOT) or not rest:
        raise act_names.NameTranslationError(f"{tree_name!r} is not below model. or cond_stage_model.")
    return act_names.from_comfy(rest)


def canonical_to_tree(canonical: str) -> str:
    root = UNET_ROOT if act_names.component(canonical) == "unet" else CLIP_ROOT
    return f"{root}.{act_names.to_comfy(canonical)}"


def canonical_index(tree_names: Iterable[str]) -> Dict[str, str]:
    """``{canonical: tree name}`` for every module of the tree that has a canonical name (tree order)."""
    out: Dict[str, str] = {}
    for n in tree_names:
        try:
            c = tree_to_canonical(n)
        except act_names.NameTranslationError:
            continue
        out.setdefault(c, n)
    return out


def check_architecture(tmap: TransportMap, model_architecture: Optional[str] = None) -> None:
    """Clear errors for maps this pack cannot apply (an LLM map, an SD1.5 model, ...)."""
    arch = tmap.architecture
    if arch and arch not in SUPPORTED_ARCHITECTURES:
        raise MapFileError(
            f"this map was fitted on a {arch!r} model; the ComfyUI nodes steer SDXL-family models "
            f"({', '.join(SUPPORTED_ARCHITECTURES)}). Fit a map on an SDXL checkpoint (Fit transport map node)."
        )
    if model_architecture and model_architecture not in SUPPORTED_ARCHITECTURES:
        raise MapFileError(
            f"the connected model is {model_architecture!r}; activation-transport maps here work on SDXL-family "
            "checkpoints (SDXL base, Turbo, Lightning, ...). Load an SDXL checkpoint."
        )
    if arch and model_architecture and arch != model_architecture:
        raise MapFileError(f"this map was fitted on {arch!r} but the model is {model_architecture!r}")


def component_subset(tmap: TransportMap, component: str, node_hint: str) -> TransportMap:
    """The part of ``tmap`` that lives in ``component`` ("unet" or "clip"), or a clear error."""
    keep = []
    for n in tmap.maps:
        try:
            if act_names.component(n) == component:
                keep.append(n)
        except act_names.NameTranslationError as e:
            raise MapFileError(f"map module {n!r} is not an SDXL module name ({e})") from None
    if not keep:
        other = "text-encoder" if component == "unet" else "UNet"
        raise MapFileError(f"this map has only {other} modules; connect it to {node_hint} instead")
    if len(keep) < len(tmap):
        other = "text-encoder" if component == "unet" else "UNet"
        log.warning("AcT: this map also has %d %s layers, not applied by this node; connect the same map to %s too",
                    len(tmap) - len(keep), other, node_hint)
    return tmap.subset(keep)


_ALIASES = {
    "unet": r"unet\..*", "down": r"unet\.down_blocks\..*", "mid": r"unet\.mid_block\..*",
    "up": r"unet\.up_blocks\..*", "text_encoder": r"text_encoder\..*", "text_encoder_2": r"text_encoder_2\..*",
}


def block_strengths(spec: str, modules: Iterable[str], strength: float) -> Dict[str, float]:
    """Per-module strengths from ``strength`` and a per-block spec.

    ``spec`` holds lines or comma-separated items ``key=factor``; ``key`` is ``down``, ``mid``,
    ``up``, ``unet``, ``text_encoder``, ``text_encoder_2`` or a full-match regex over canonical
    names. A module gets ``strength * factor`` of the *first* item that matches it, else
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
            raise ValueError(f"per-block key {key!r} is neither down/mid/up/unet/text_encoder(_2) nor a valid regex: {e}") from None
        hits = [n for n in modules if rx.fullmatch(n)]
        if not hits:
            raise ValueError(
                f"per-block key {key!r} matches no module of this map; use down, mid, up, unet, text_encoder, "
                f"text_encoder_2 or a regex over names such as {modules[0]!r}"
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
    """``{canonical: ComfyUI name with the leading ``strip.`` removed}`` for every module of ``tmap``."""
    out = {}
    for n in tmap.maps:
        local = act_names.to_comfy(n)
        out[n] = local[len(strip) + 1:] if strip and local.startswith(strip + ".") else local
    return out
