"""Fit transport map node: collect activations with ComfyUI's own sampler, fit with act_core."""

from __future__ import annotations

import logging

import torch

from act_core import fit_map
from act_core.mapfile import TransportMap
from act_core.diffusion.families.sdxl import PRESETS
from act_core.diffusion.presets import resolve_modules
from act_core.transport import SUPPORT_CHOICES

from . import comfy_compat as cc
from .comfy_compat import PromptPairsType, TransportMapType, io
from .runner import ComfyRunner, check_batch_size
from .steering import UNET_ROOT, canonical_index, check_architecture, tree_to_canonical

log = logging.getLogger("act_steering")

CATEGORY = "steering/act"
METHODS = {"Linear-AcT": "linear", "Mean-AcT": "mean", "Gaussian": "gaussian"}
LAYER_PRESETS = {
    "UNet norms": "unet_norms",
    "text encoder layers": "text_encoder_layers",
    "UNet attention outputs": "unet_attention_outputs",
    "custom pattern": None,
}
SUPPORTS = ["method default"] + list(SUPPORT_CHOICES)
#: node option -> act_core procedure. "causal" is act_core's one-pass procedure: every source and
#: target prompt in ONE UNet batch (memory of all prompts at once); "causal (low memory)" re-runs the
#: model prefix once per layer in batches of batch_size (same estimates, ≈ layers/2 times the work).
PROCEDURES = {"simultaneous": "simultaneous", "causal": "causal", "causal (low memory)": "causal_reference"}
DEFAULT_BATCH_SIZE = 8


def select(tree, layers: str, pattern: str):
    """``{tree name: output index}`` for a preset or comma/line-separated canonical regexes."""
    index = canonical_index(n for n, _ in tree.named_modules() if n)
    preset = LAYER_PRESETS.get(layers)
    if layers not in LAYER_PRESETS:
        raise ValueError(f"unknown layers choice {layers!r}: choose one of {', '.join(LAYER_PRESETS)}")
    if preset is None:
        items = [p.strip() for p in pattern.replace("\n", ",").split(",") if p.strip()]
        if not items:
            raise ValueError("layers is 'custom pattern' but the pattern is empty: give canonical regexes or preset "
                             "names, e.g. 'unet\\.mid_block\\..*norm.*' or 'unet_norms, text_encoder_mlp'")
    else:
        items = [preset]
    try:
        chosen = resolve_modules(items, list(index), PRESETS)
    except ValueError as e:
        if preset is not None:
            raise
        raise ValueError(f"custom_pattern: {e}") from None
    return {index[c]: k for c, k in chosen.items()}


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(options)}")


def core_procedure(procedure: str, modules) -> str:
    """act_core procedure for the node's ``procedure`` choice and the selected tree names.

    One-pass causal needs every prompt in one forward batch; text encoders are run one prompt
    at a time (ComfyUI encodes a single prompt per call), so with any text-encoder module
    selected "causal" runs act_core's ``causal_reference`` (the same estimates, layer by layer).
    """
    core = PROCEDURES[procedure]
    if core == "causal" and any(not n.startswith(UNET_ROOT + ".") for n in modules):
        log.info("ActFitTransportMap: text-encoder layers are fitted layer by layer ('causal (low memory)'); "
                 "one-pass causal needs every prompt in one batch, and ComfyUI encodes one prompt at a time")
        return "causal_reference"
    return core


def fit(model, clip, prompt_pairs, method, layers, custom_pattern, support, procedure, seed, width, height,
        batch_size=DEFAULT_BATCH_SIZE):
    """Fit and return a TransportMap with canonical names; cancellable through ComfyUI's interrupt.

    Progress: ``simultaneous`` and ``causal (low memory)`` tick per prompt sampled (prompts x
    layer passes); one-pass ``causal`` ticks per fitted layer. A cancelled fit returns nothing.
    """
    check_architecture(TransportMap(), cc.architecture(model))
    if cc.clip_architecture(clip) != cc.architecture(model):
        raise ValueError(f"the CLIP is {cc.clip_architecture(clip)!r} but the model is {cc.architecture(model)!r}: "
                         "connect the CLIP output of the same SDXL checkpoint loader")
    _check_choice("method", method, METHODS)
    _check_choice("support", support, SUPPORTS)
    _check_choice("procedure", procedure, PROCEDURES)
    batch_size = check_batch_size(batch_size)
    src, tgt = list(prompt_pairs["source"]), list(prompt_pairs["target"])
    tree = cc.model_tree(model, clip)
    modules = select(tree, layers, custom_pattern or "")
    core = core_procedure(procedure, modules)
    one_pass = core == "causal"
    total = len(modules) if one_pass else (len(src) + len(tgt)) * (1 if core == "simultaneous" else len(modules))
    bar = cc.progress_bar(total)
    done = [0]

    def on_prompts(n):
        if not one_pass:
            done[0] += n
            bar.update_absolute(min(done[0], total), total)

    def progress(step, steps_total, message):
        cc.check_interrupted()  # raising here cancels fit_map; nothing has been returned or written
        if one_pass:  # act_core ticks (layers fitted, layers) from inside the one forward pass
            bar.update_absolute(min(step, total), total)

    runner = ComfyRunner(model, clip, seed, width, height, on_prompts=on_prompts, batch_size=batch_size)
    try:
        tmap = fit_map(
            runner, src, tgt, modules, method=METHODS[method], pooling="mean", procedure=core,
            support=None if support == "method default" else support, progress=progress,
            **prompt_pairs.get("meta", {}), layers=layers if LAYER_PRESETS.get(layers) else (custom_pattern or ""),
            collection={"seed": int(seed), "width": int(width), "height": int(height), "noise": "prompt_noise",
                        "step": "first", "cfg": 1.0, "batch_size": len(src) + len(tgt) if one_pass else batch_size,
                        "fitted_in": f"ComfyUI {cc.comfy_version()}"},
        )
    except torch.OutOfMemoryError as e:
        fix = ("choose procedure 'causal (low memory)' (the same estimates, batch_size prompts at a time)" if one_pass
               else "lower batch_size")
        raise torch.OutOfMemoryError(
            f"Fit transport map ran out of memory with {len(src) + len(tgt)} prompts at {width}x{height} "
            f"({'all prompts in one batch' if one_pass else f'batch_size {batch_size}'}): {fix}, or use fewer prompts "
            f"or a smaller width/height. ({str(e).splitlines()[0][:300]})"
        ) from None
    return tmap.renamed(tree_to_canonical)


class FitTransportMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActFitTransportMap",
            display_name="Fit transport map (AcT)",
            category=CATEGORY,
            description=(
                "Runs every source and target prompt through the model with ComfyUI's own sampler, records the chosen "
                "layers at the first denoising step (stopping after the last one), and fits one per-unit affine "
                "transport per layer (Linear-AcT by default). Prompts are sampled batch_size at a time; Cancel works at any "
                "batch. Outputs a TRANSPORT_MAP with canonical layer names (usable in diffusers too)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SDXL-family model to fit on (from Load Checkpoint)."),
                io.Clip.Input("clip", tooltip="The model's CLIP (encodes the prompts; hooked for text-encoder layers)."),
                PromptPairsType.Input("prompt_pairs", tooltip="Source and target prompts (Prompt pairs node)."),
                io.Combo.Input("method", options=list(METHODS), default="Linear-AcT",
                               tooltip="Linear-AcT: per-unit least-squares transport (paper default). Mean-AcT: shift only. Gaussian: match mean and std."),
                io.Combo.Input("layers", options=list(LAYER_PRESETS), default="UNet norms",
                               tooltip="Which layers to steer. UNet norms is the paper's choice; text encoder layers steer CLIP-L and CLIP-G."),
                io.String.Input("custom_pattern", default="", optional=True,
                                tooltip="For 'custom pattern': comma-separated full-match regexes over canonical names (e.g. unet\\.mid_block\\..*norm.*) or preset names."),
                io.Combo.Input("support", options=SUPPORTS, default="method default",
                               tooltip="Quantile band of the source inside which values are transported (q_0_100 = the observed range; all = everywhere)."),
                io.Combo.Input("procedure", options=list(PROCEDURES), default="simultaneous",
                               tooltip="simultaneous (default): every layer fitted on the unsteered model (one pass per batch of prompts). "
                                       "causal: each layer fitted with the layers before it already steered (usually better); one "
                                       "forward pass with ALL source and target prompts in a single batch, so memory is about that of "
                                       "sampling all prompts at once (batch_size is not used). causal (low memory): the same result, "
                                       "layer by layer in batches of batch_size (about layers/2 times slower). Text-encoder layers "
                                       "always use the low-memory way. The default is simultaneous because causal needs all prompts in "
                                       "memory at once and gave the same effect on the project's miniature SDXL."),
                io.Int.Input("seed", default=0, min=0, max=cc.MAX_SEED,
                             tooltip="Noise seed for the collection pass (each prompt gets its own noise from it)."),
                io.Int.Input("width", default=1024, min=64, max=4096, step=64, tooltip="Width of the collection latent in pixels."),
                io.Int.Input("height", default=1024, min=64, max=4096, step=64, tooltip="Height of the collection latent in pixels."),
                io.Int.Input("batch_size", default=DEFAULT_BATCH_SIZE, min=1, max=4096,
                             tooltip="Prompts sampled together per UNet pass (simultaneous and causal (low memory)). Faster when "
                                     "larger; memory grows with it (like an Empty Latent batch of this size). Lower it if you run "
                                     "out of memory; the map is the same for every value (up to float rounding)."),
            ],
            outputs=[TransportMapType.Output(display_name="transport_map", tooltip="The fitted map.")],
        )

    @classmethod
    def execute(cls, model, clip, prompt_pairs, method, layers, support, procedure, seed, width, height,
                batch_size=DEFAULT_BATCH_SIZE, custom_pattern="") -> io.NodeOutput:
        tmap = fit(model, clip, prompt_pairs, method, layers, custom_pattern, support, procedure, seed, width, height,
                   batch_size)
        return io.NodeOutput(tmap)


NODES = [FitTransportMap]
