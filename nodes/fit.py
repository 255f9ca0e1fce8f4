"""Fit transport map node: collect activations with ComfyUI's own sampler, fit with act_core."""

from __future__ import annotations

import logging

import torch

from act_core import fit_map
from act_core.diffusion.families import generic
from act_core.transport import SUPPORT_CHOICES

from . import comfy_compat as cc
from .comfy_compat import PromptPairsType, TransportMapType, io
from .runner import ComfyRunner, check_batch_size
from .steering import Naming, check_clip

log = logging.getLogger("act_steering")

CATEGORY = "steering/act"
METHODS = {"Linear-AcT": "linear", "Mean-AcT": "mean", "Gaussian": "gaussian"}
#: layer choice -> a family-neutral role (steering.ROLES; each family's presets, or the generic
#: path's), or None for the custom pattern. The last two are the names earlier releases used.
LAYER_PRESETS = {
    "paper default": "default",
    "every normalisation": "norms",
    "every block output": "blocks",
    "attention outputs": "attention",
    "text encoder layers": "text",
    "T5 blocks": "t5",
    "custom pattern": None,
    "UNet norms": "norms",
    "UNet attention outputs": "attention",
}
SUPPORTS = ["method default"] + list(SUPPORT_CHOICES)
#: node option -> act_core procedure. "causal" is act_core's one-pass procedure: every source and
#: target prompt in ONE UNet batch (memory of all prompts at once); "causal (low memory)" re-runs the
#: model prefix once per layer in batches of batch_size (same estimates, ≈ layers/2 times the work).
PROCEDURES = {"simultaneous": "simultaneous", "causal": "causal", "causal (low memory)": "causal_reference"}
DEFAULT_BATCH_SIZE = 8


def select(naming: Naming, tree, layers: str, pattern: str):
    """``{name: output index}`` on ``tree`` for a layer choice, or comma/line-separated regexes
    (over the family's canonical names, or ComfyUI's names on the generic path)."""
    if layers not in LAYER_PRESETS:
        raise ValueError(f"unknown layers choice {layers!r}: choose one of {', '.join(LAYER_PRESETS)}")
    role = LAYER_PRESETS[layers]
    if role is not None:
        return {n: None for n in naming.layers(tree, role)}
    items = [p.strip() for p in pattern.replace("\n", ",").split(",") if p.strip()]
    if not items:
        example = ("'unet\\.mid_block\\..*norm.*' or 'unet_norms, text_encoder_mlp'" if naming.family is not None
                   else "'diffusion_model\\.blocks\\.[0-9]+'")
        raise ValueError(f"layers is 'custom pattern' but the pattern is empty: give regexes over the layer names or "
                         f"preset names, e.g. {example}")
    try:
        return naming.patterns(tree, items)
    except ValueError as e:
        raise ValueError(f"custom_pattern: {e}") from None


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(options)}")


def core_procedure(procedure: str, modules, naming: Naming) -> str:
    """act_core procedure for the node's ``procedure`` choice and the selected tree names.

    One-pass causal needs every prompt in one forward batch; text encoders are run one prompt
    at a time (ComfyUI encodes a single prompt per call), so with any text-encoder module
    selected "causal" runs act_core's ``causal_reference`` (the same estimates, layer by layer).
    """
    core = PROCEDURES[procedure]
    if core == "causal" and naming.generic:
        log.info("ActFitTransportMap: on the generic path 'causal' runs layer by layer ('causal (low memory)'): prompts "
                 "of different text lengths cannot share one batch of an unknown model")
        return "causal_reference"
    if core == "causal" and any(naming.component(n) != "model" for n in modules):
        log.info("ActFitTransportMap: text-encoder layers are fitted layer by layer ('causal (low memory)'); "
                 "one-pass causal needs every prompt in one batch, and ComfyUI encodes one prompt at a time")
        return "causal_reference"
    return core


def fit(model, clip, prompt_pairs, method, layers, custom_pattern, support, procedure, seed, width, height,
        batch_size=DEFAULT_BATCH_SIZE, guidance=3.5):
    """Fit and return a TransportMap named as :class:`~.steering.Naming` says (a family's
    canonical names, or ComfyUI's on the generic path); cancellable through ComfyUI's interrupt.

    Progress: ``simultaneous`` and ``causal (low memory)`` tick per prompt sampled (prompts x
    layer passes); one-pass ``causal`` ticks per fitted layer. A cancelled fit returns nothing.
    """
    naming = Naming.of_model(model)
    check_clip(naming, clip)
    _check_choice("method", method, METHODS)
    _check_choice("support", support, SUPPORTS)
    _check_choice("procedure", procedure, PROCEDURES)
    batch_size = check_batch_size(batch_size)
    src, tgt = list(prompt_pairs["source"]), list(prompt_pairs["target"])
    tree = naming.tree(model.model, clip.cond_stage_model)
    modules = select(naming, tree, layers, custom_pattern or "")
    core = core_procedure(procedure, modules, naming)
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

    runner = ComfyRunner(model, clip, seed, width, height, on_prompts=on_prompts, batch_size=batch_size, naming=naming,
                         guidance=guidance)
    names = {} if naming.family is not None else {"names": "comfyui",
                                                  "comfyui_model": generic.model_class(naming.architecture)}
    try:
        tmap = fit_map(
            runner, src, tgt, modules, method=METHODS[method], pooling="mean", procedure=core,
            support=None if support == "method default" else support, progress=progress,
            **prompt_pairs.get("meta", {}), **names, layers=layers if LAYER_PRESETS.get(layers) else (custom_pattern or ""),
            collection={"seed": int(seed), "width": int(width), "height": int(height), "noise": "prompt_noise",
                        "step": "first", "cfg": 1.0, "batch_size": len(src) + len(tgt) if one_pass else batch_size,
                        "guidance": runner.guidance, "fitted_in": f"ComfyUI {cc.comfy_version()}"},
        )
    except torch.OutOfMemoryError as e:
        fix = ("choose procedure 'causal (low memory)' (the same estimates, batch_size prompts at a time)" if one_pass
               else "lower batch_size")
        raise torch.OutOfMemoryError(
            f"Fit transport map ran out of memory with {len(src) + len(tgt)} prompts at {width}x{height} "
            f"({'all prompts in one batch' if one_pass else f'batch_size {batch_size}'}): {fix}, or use fewer prompts "
            f"or a smaller width/height. ({str(e).splitlines()[0][:300]})"
        ) from None
    return tmap


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
                "batch. Works on SD1.5, SD2.x, SDXL, SD3.5 and FLUX.1 checkpoints with canonical layer names (the map "
                "works in diffusers too), and on any other model ComfyUI loads with ComfyUI's own layer names (the "
                "generic path: such a map fits that model type only)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to fit on (Load Checkpoint, or Load Diffusion Model)."),
                io.Clip.Input("clip", tooltip="The model's text encoders (CLIP-L/G, T5 ...: encode the prompts; hooked for text-encoder layers)."),
                PromptPairsType.Input("prompt_pairs", tooltip="Source and target prompts (Prompt pairs node)."),
                io.Combo.Input("method", options=list(METHODS), default="Linear-AcT",
                               tooltip="Linear-AcT: per-unit least-squares transport (paper default). Mean-AcT: shift only. Gaussian: match mean and std."),
                io.Combo.Input("layers", options=list(LAYER_PRESETS), default="paper default",
                               tooltip="Which layers to steer. paper default: every UNet normalisation (SD1.5/SD2/SDXL), both "
                                       "outputs of every double-stream block and the first 15 single-stream blocks (FLUX), "
                                       "both streams of every joint block (SD3), every block output (other models). "
                                       "text encoder layers: CLIP-L/CLIP-G (OpenCLIP-H on SD2); T5 blocks: FLUX's and SD3's T5. "
                                       "(UNet norms / UNet attention outputs: the names of earlier versions.)"),
                io.String.Input("custom_pattern", default="", optional=True,
                                tooltip="For 'custom pattern': comma-separated full-match regexes over canonical names (e.g. unet\\.mid_block\\..*norm.*, "
                                        "transformer\\.transformer_blocks\\.[0-9]+\\.img) or preset names; on models without a family, "
                                        "over ComfyUI's own module names (diffusion_model\\.blocks\\.[0-9]+)."),
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
                io.Float.Input("guidance", default=3.5, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="FLUX.1-dev's embedded guidance during collection (as the FluxGuidance node); models "
                                       "without a guidance input (FLUX.1-schnell, SD, SDXL, SD3) ignore it. SD3's shift and "
                                       "the sampler settings come from the MODEL itself (e.g. ModelSamplingSD3 upstream)."),
            ],
            outputs=[TransportMapType.Output(display_name="transport_map", tooltip="The fitted map.")],
        )

    @classmethod
    def execute(cls, model, clip, prompt_pairs, method, layers, support, procedure, seed, width, height,
                batch_size=DEFAULT_BATCH_SIZE, custom_pattern="", guidance=3.5) -> io.NodeOutput:
        tmap = fit(model, clip, prompt_pairs, method, layers, custom_pattern, support, procedure, seed, width, height,
                   batch_size, 3.5 if guidance is None else guidance)
        return io.NodeOutput(tmap)


NODES = [FitTransportMap]
