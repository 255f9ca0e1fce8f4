"""Apply a transport map to a MODEL (UNet) or a CLIP (text encoders); both return patched clones.

MODEL: a ComfyUI DIFFUSION_MODEL wrapper on a clone attaches act_core steering hooks around
each UNet call and removes them in ``finally``; between calls (and for the input MODEL,
which shares the same modules) no hook exists. With cfg > 1 only the conditional rows
(``transformer_options["cond_or_uncond"] == 0``) are steered unless ``steer_negative`` is on.

Fused mode (``mode=FUSED``): every module whose fixed-λ map folds exactly
(``act_core.fold.fold_factors``: support "all", not a spatial-mean map with ω ≠ 1 on a 4-D
output) becomes a ComfyUI "diff" weight patch on the clone, ``Δw = (a − 1) ⊙ w``,
``Δb = (a − 1) ⊙ b + c``; ComfyUI adds it when it loads the clone and restores the weights when
it unloads it. Weights hold for the whole sampling and act on every batch row, so fused mode
needs the full window and steers both CFG halves; the modules that cannot fold keep the hooks
above, also on both halves, so the result equals hooks mode with ``steer_negative`` on. The
default everywhere (diffusers, hooks mode, fused mode) is to steer only the conditional rows:
fused mode therefore refuses, at the first UNet call that holds unconditional rows (cfg > 1),
unless ``steer_negative`` is on; at cfg 1 (distilled models) there are none.

CLIP: the clone's ``encode_token_weights`` is object-patched to run inside ``act_core.steer``;
ComfyUI applies the patch only while that clone is the loaded CLIP.
"""

from __future__ import annotations

from act_core import SteerHandle, steer
from act_core.fold import fold_delta
from act_core.mapfile import MapFileError

from . import comfy_compat as cc
from .comfy_compat import TransportMapType, io
from .masks import LayerMask, as_mask_batch
from .steering import (block_strengths, check_architecture, component_subset, local_name_map, rows_gate,
                       split_foldable, step_in_window)

CATEGORY = "steering/act"
STRENGTH = dict(default=1.0, min=-10.0, max=10.0, step=0.05)
HOOKS = "hooks"
FUSED = "fused (weight patches)"
MODES = (HOOKS, FUSED)
PERCENT = "percent of denoising"
STEPS = "fraction of steps"
WINDOWS = (PERCENT, STEPS)


def apply_to_model(model, tmap, strength=1.0, start_percent=0.0, end_percent=1.0, steer_negative=False, per_block="",
                   mode=HOOKS, window=PERCENT, mask=None):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(repr(m) for m in MODES)}")
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}: choose one of {', '.join(repr(w) for w in WINDOWS)}")
    check_architecture(tmap, cc.architecture(model))
    sub = component_subset(tmap, "unet", "'Apply transport map to CLIP'")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent ({start_percent}) and end_percent ({end_percent}) must satisfy 0 <= start <= end <= 1")
    fused = mode == FUSED
    if fused and (start_percent, end_percent) != (0.0, 1.0):
        raise ValueError(
            f"mode {FUSED!r} changes the weights for the whole sampling, so it cannot steer only from "
            f"start_percent {start_percent} to end_percent {end_percent}: set start_percent 0 and end_percent 1, "
            f"or choose mode {HOOKS!r} for a window"
        )
    if mask is not None:
        if fused:
            raise ValueError(f"a mask steers only part of the image, which weight patches cannot: choose mode {HOOKS!r} "
                             "with a mask, or disconnect the mask")
        mask = as_mask_batch(mask)
    local = local_name_map(sub, "diffusion_model")
    unet = model.model.diffusion_model
    try:
        sub.check_model(unet, name_map=local.__getitem__)
    except MapFileError as e:
        raise MapFileError(f"{e} (this map does not fit the connected model)") from None
    strengths = block_strengths(per_block, sub.maps, strength)

    diffs = {}
    hooked = sub
    if fused:
        folds, reasons = split_foldable(unet, sub, strengths, local)
        folds, reasons = _keep_coarse_weights_hooked(model, folds, reasons, local)
        for n, factors in folds.items():
            for attr, (scale, shift) in factors.items():
                key = f"diffusion_model.{local[n]}.{attr}"
                diffs[key] = fold_delta(cc.loaded_weight(model, key), scale, shift).float()
        hooked = sub.subset(list(reasons)) if reasons else None
        first = next(iter(reasons.items()), None)
        cc.log.info(
            "AcT fused mode: %d of %d UNet layers fused as weight patches, %d hooked, %d at strength 0%s%s",
            len(folds), len(sub), len(reasons), len(sub) - len(folds) - len(reasons),
            f" (hooked e.g. {first[0]}: {first[1]})" if first else "",
            "" if steer_negative else "; with cfg > 1 turn on 'steer negative' (weights act on both CFG halves)",
        )

    wrapper = None
    if hooked is not None:  # in fused mode the hooked rest acts on both halves, like the weights
        wrapper = _hook_wrapper(model, hooked, strengths, local, start_percent, end_percent,
                                steer_negative or fused, window, mask)
    if fused and not steer_negative and (diffs or hooked is not None):
        wrapper = _cond_only_guard(wrapper)
    out = model.clone() if wrapper is None else cc.add_unet_wrapper(model, wrapper)
    if diffs:
        cc.add_weight_diffs(out, diffs)
    return out


def _keep_coarse_weights_hooked(model, folds, reasons, local):
    """Layers whose weights are stored in float8 stay hooked (see ``comfy_compat.coarse_weight_dtype``)."""
    kept, reasons = {}, dict(reasons)
    for n, factors in folds.items():
        coarse = next(filter(None, (cc.coarse_weight_dtype(model, f"diffusion_model.{local[n]}.{a}") for a in factors)), None)
        if coarse is None:
            kept[n] = factors
        else:
            reasons[n] = (f"its weights are stored in {coarse}: a folded weight would be rounded to float8 "
                          "(hooks transport the activations, which ComfyUI computes in a wider dtype)")
    return kept, reasons


def _hook_wrapper(model, sub, strengths, local, start_percent, end_percent, steer_negative, window=PERCENT, mask=None):
    """DIFFUSION_MODEL wrapper: act_core hooks for ``sub`` around each UNet call inside the window
    (``PERCENT``: ComfyUI's percent of denoising, as ConditioningSetTimestepRange; ``STEPS``: the
    fraction of the sampler's steps, see :func:`step_in_window`)."""
    sigma_start = cc.percent_to_sigma(model, start_percent)
    sigma_end = cc.percent_to_sigma(model, end_percent)
    full = (start_percent, end_percent) == (0.0, 1.0)
    strengths = {n: strengths[n] for n in sub.maps}
    handles = {}  # one SteerHandle per UNet module, re-attached around every call
    compiled_part = cc.CompiledPartCheck([local[n] for n in sub.maps])

    def inside(transformer_options) -> bool:
        sigma = cc.current_sigma(transformer_options)
        if full or sigma is None:
            return True
        if window == STEPS:
            schedule = cc.sample_sigmas(transformer_options)
            if schedule is not None:
                return step_in_window(sigma, schedule, start_percent, end_percent)
        return sigma_end <= sigma <= sigma_start

    def wrapper(unet_module, call, transformer_options):
        if not inside(transformer_options):
            return call()
        _refuse_compiled_part(compiled_part(unet_module))
        handle = handles.get(id(unet_module))
        if handle is None or handle.model is not unet_module:
            handle = handles[id(unet_module)] = SteerHandle(unet_module, sub, strengths, name_map=local.__getitem__)
        handle.gate = None if steer_negative else rows_gate(lambda b: cc.cond_rows(transformer_options, b))
        if mask is not None:  # the mask resized to each layer's grid (nodes/masks.py)
            handle.mask = LayerMask(mask, lambda: cc.latent_hw(transformer_options), cc.cond_chunks(transformer_options))
        with handle.attach():
            return call()

    return wrapper


def _refuse_compiled_part(path):
    if path is not None:
        raise RuntimeError(
            f"the UNet part {path!r} is compiled with torch.compile (a node compiled this block) and holds steered "
            "layers: TorchDynamo ignores forward hooks added after it compiled (and keeps ones it saw), so steering "
            f"there would be silently lost or leak into other runs. Use mode {FUSED!r} with a map that folds "
            "completely (support 'all'), compile the whole model with TorchCompileModel instead (steered calls "
            "then run uncompiled), or remove the compile node."
        )


def _cond_only_guard(inner=None):
    """DIFFUSION_MODEL wrapper for fused mode without ``steer_negative``: weight patches cannot
    leave the unconditional rows alone, so a UNet call that holds them (cfg > 1) is refused with
    the fix, instead of silently steering the negative half that hooks mode would not."""

    def wrapper(unet_module, call, transformer_options):
        if cc.has_uncond_rows(transformer_options):
            raise ValueError(
                f"mode {FUSED!r} patches the weights, which steers the negative (unconditional) half too, but "
                "'steer negative' is off and this sampler runs cfg > 1: turn 'steer negative' on to steer both halves, "
                f"or choose mode {HOOKS!r} to steer only the positive half (cfg 1 models need neither)"
            )
        return inner(unet_module, call, transformer_options) if inner else call()

    return wrapper


def apply_to_clip(clip, tmap, strength=1.0):
    check_architecture(tmap, cc.clip_architecture(clip))
    sub = component_subset(tmap, "clip", "'Apply transport map to model'")
    local = local_name_map(sub, "")
    try:
        sub.check_model(clip.cond_stage_model, name_map=local.__getitem__)
    except MapFileError as e:
        raise MapFileError(f"{e} (this map does not fit the connected CLIP)") from None

    def around(cond_stage_model, call):
        with steer(cond_stage_model, sub, strength=float(strength), name_map=local.__getitem__):
            return call()

    return cc.patch_clip_encode(clip, around)


class ApplyToModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActApplyToModel",
            display_name="Apply transport map to model (AcT)",
            category=CATEGORY,
            description=(
                "Returns a steered copy of MODEL: while it samples, each mapped UNet layer's output x becomes "
                "(1-λ)x + λ(ωx+β). The input MODEL is never changed and no hook stays after sampling. With cfg > 1 "
                "only the positive (conditional) half is steered unless 'steer negative' is on. Mode 'fused (weight "
                "patches)' folds every layer whose map is affine per unit (support 'all'; no spatial-mean GroupNorm "
                "map with ω ≠ 1) into that layer's weight and bias as ComfyUI weight patches: no per-step cost, the "
                "whole schedule; weights act on both CFG halves, so with cfg > 1 it needs 'steer negative' on; the "
                "other layers keep hooks (the console log says how many of each)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to steer (a patched clone is returned)."),
                TransportMapType.Input("transport_map", tooltip="A fitted, loaded or combined map with UNet layers."),
                io.Float.Input("strength", **STRENGTH, tooltip="λ: 0 = off, 1 = full transport, >1 extrapolates, <0 reverses."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Start steering at this fraction of the schedule (0 = first step); see 'window'."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Stop steering after this fraction of the schedule (1 = last step); see 'window'."),
                io.Boolean.Input("steer_negative", default=False,
                                 tooltip="Also steer the negative (unconditional) half when cfg > 1."),
                io.String.Input("per_block", default="", optional=True,
                                tooltip="Optional per-block factors on λ, e.g. 'down=0, mid=1, up=1.5' or 'regex=factor'."),
                io.Combo.Input("mode", options=list(MODES), default=HOOKS, optional=True,
                               tooltip="hooks: steer layer outputs at every UNet call (any map, window, cond-only). "
                                       "fused (weight patches): fold the map into the weights that ComfyUI patches in "
                                       "when it loads the model (no per-step cost); needs start 0 and end 1, and with "
                                       "cfg > 1 'steer negative' on (weights act on both halves; cfg 1 models such as "
                                       "Lightning/Turbo have no negative half); layers "
                                       "that cannot fold exactly keep hooks, the console log says how many."),
                io.Combo.Input("window", options=list(WINDOWS), default=PERCENT, optional=True,
                               tooltip="How start/end are counted. percent of denoising: ComfyUI's convention (as "
                                       "ControlNet and timestep ranges), by noise level. fraction of steps: by the "
                                       "sampler's steps, a step is steered when its middle lies inside the window, "
                                       "e.g. 0 to 0.5 of a 4-step Lightning schedule = steps 1 and 2, exactly."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: steer only inside this mask (1 = steer, 0 = leave alone; any "
                                      "resolution, resized to each layer; one per image or one for the batch). "
                                      "Hooks mode only."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The steered model clone.")],
        )

    @classmethod
    def execute(cls, model, transport_map, strength, start_percent, end_percent, steer_negative, per_block="",
                mode=HOOKS, window=PERCENT, mask=None) -> io.NodeOutput:
        return io.NodeOutput(apply_to_model(model, transport_map, strength, start_percent, end_percent, steer_negative,
                                            per_block or "", mode or HOOKS, window or PERCENT, mask))


class ApplyToClip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActApplyToClip",
            display_name="Apply transport map to CLIP (AcT)",
            category=CATEGORY,
            description=(
                "Returns a steered copy of CLIP for maps fitted on text-encoder layers: prompts encoded with it are "
                "transported; the input CLIP keeps encoding exactly as before."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP to steer (a patched clone is returned)."),
                TransportMapType.Input("transport_map", tooltip="A map with text-encoder layers."),
                io.Float.Input("strength", **STRENGTH, tooltip="λ: 0 = off, 1 = full transport."),
            ],
            outputs=[io.Clip.Output(display_name="clip", tooltip="The steered CLIP clone.")],
        )

    @classmethod
    def execute(cls, clip, transport_map, strength) -> io.NodeOutput:
        return io.NodeOutput(apply_to_clip(clip, transport_map, strength))


NODES = [ApplyToModel, ApplyToClip]
