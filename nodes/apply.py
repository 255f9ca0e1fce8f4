"""Apply a transport map to a MODEL (UNet) or a CLIP (text encoders); both return patched clones.

MODEL: a ComfyUI DIFFUSION_MODEL wrapper on a clone attaches act_core steering hooks around
each UNet call and removes them in ``finally``; between calls (and for the input MODEL,
which shares the same modules) no hook exists. With cfg > 1 only the conditional rows
(``transformer_options["cond_or_uncond"] == 0``) are steered unless ``steer_negative`` is on.

CLIP: the clone's ``encode_token_weights`` is object-patched to run inside ``act_core.steer``;
ComfyUI applies the patch only while that clone is the loaded CLIP.
"""

from __future__ import annotations

from act_core import SteerHandle, steer
from act_core.mapfile import MapFileError

from . import comfy_compat as cc
from .comfy_compat import TransportMapType, io
from .steering import block_strengths, check_architecture, component_subset, local_name_map, rows_gate

CATEGORY = "steering/act"
STRENGTH = dict(default=1.0, min=-10.0, max=10.0, step=0.05)


def apply_to_model(model, tmap, strength=1.0, start_percent=0.0, end_percent=1.0, steer_negative=False, per_block=""):
    check_architecture(tmap, cc.architecture(model))
    sub = component_subset(tmap, "unet", "'Apply transport map to CLIP'")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent ({start_percent}) and end_percent ({end_percent}) must satisfy 0 <= start <= end <= 1")
    local = local_name_map(sub, "diffusion_model")
    unet = model.model.diffusion_model
    try:
        sub.check_model(unet, name_map=local.__getitem__)
    except MapFileError as e:
        raise MapFileError(f"{e} (this map does not fit the connected model)") from None
    strengths = block_strengths(per_block, sub.maps, strength)
    sigma_start = cc.percent_to_sigma(model, start_percent)
    sigma_end = cc.percent_to_sigma(model, end_percent)

    handles = {}  # one SteerHandle per UNet module, re-attached around every call

    def wrapper(unet_module, call, transformer_options):
        sigma = cc.current_sigma(transformer_options)
        if sigma is not None and not (sigma_end <= sigma <= sigma_start):
            return call()
        handle = handles.get(id(unet_module))
        if handle is None or handle.model is not unet_module:
            handle = handles[id(unet_module)] = SteerHandle(unet_module, sub, strengths, name_map=local.__getitem__)
        handle.gate = None if steer_negative else rows_gate(lambda b: cc.cond_rows(transformer_options, b))
        with handle.attach():
            return call()

    return cc.add_unet_wrapper(model, wrapper)


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
                "only the positive (conditional) half is steered unless 'steer negative' is on."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to steer (a patched clone is returned)."),
                TransportMapType.Input("transport_map", tooltip="A fitted, loaded or combined map with UNet layers."),
                io.Float.Input("strength", **STRENGTH, tooltip="λ: 0 = off, 1 = full transport, >1 extrapolates, <0 reverses."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Start steering at this fraction of the schedule (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Stop steering after this fraction of the schedule (1 = last step)."),
                io.Boolean.Input("steer_negative", default=False,
                                 tooltip="Also steer the negative (unconditional) half when cfg > 1."),
                io.String.Input("per_block", default="", optional=True,
                                tooltip="Optional per-block factors on λ, e.g. 'down=0, mid=1, up=1.5' or 'regex=factor'."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The steered model clone.")],
        )

    @classmethod
    def execute(cls, model, transport_map, strength, start_percent, end_percent, steer_negative, per_block="") -> io.NodeOutput:
        return io.NodeOutput(apply_to_model(model, transport_map, strength, start_percent, end_percent, steer_negative, per_block or ""))


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
