"""Fit transport map node: collect activations with ComfyUI's own sampler, fit with act_core."""

from __future__ import annotations

from act_core import fit_map
from act_core.mapfile import TransportMap
from act_core.presets import resolve_modules
from act_core.transport import SUPPORT_CHOICES

from . import comfy_compat as cc
from .comfy_compat import PromptPairsType, TransportMapType, io
from .runner import ComfyRunner
from .steering import canonical_index, check_architecture, tree_to_canonical

CATEGORY = "steering/act"
METHODS = {"Linear-AcT": "linear", "Mean-AcT": "mean", "Gaussian": "gaussian"}
LAYER_PRESETS = {
    "UNet norms": "unet_norms",
    "text encoder layers": "text_encoder_layers",
    "UNet attention outputs": "unet_attention_outputs",
    "custom pattern": None,
}
SUPPORTS = ["method default"] + list(SUPPORT_CHOICES)
# act_core's one-pass "causal" needs every prompt in one batch; ComfyUI samples one prompt at a
# time, so the node runs the reference causal procedure (one prefix pass per layer, same estimates).
PROCEDURES = {"simultaneous": "simultaneous", "causal": "causal_reference"}


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
        chosen = resolve_modules(items, list(index))
    except ValueError as e:
        if preset is not None:
            raise
        raise ValueError(f"custom_pattern: {e}") from None
    return {index[c]: k for c, k in chosen.items()}


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(options)}")


def fit(model, clip, prompt_pairs, method, layers, custom_pattern, support, procedure, seed, width, height, steps):
    """Fit and return a TransportMap with canonical names; cancellable through ComfyUI's interrupt."""
    check_architecture(TransportMap(), cc.architecture(model))
    _check_choice("method", method, METHODS)
    _check_choice("support", support, SUPPORTS)
    _check_choice("procedure", procedure, PROCEDURES)
    src, tgt = list(prompt_pairs["source"]), list(prompt_pairs["target"])
    procedure = PROCEDURES[procedure]
    tree = cc.model_tree(model, clip)
    modules = select(tree, layers, custom_pattern or "")
    passes = 1 if procedure == "simultaneous" else len(modules)
    total = (len(src) + len(tgt)) * passes
    bar = cc.progress_bar(total)
    done = [0]

    def on_prompt():
        done[0] += 1
        bar.update_absolute(min(done[0], total), total)

    def progress(step, steps_total, message):
        cc.check_interrupted()  # raising here cancels fit_map; nothing has been written

    runner = ComfyRunner(model, clip, seed, width, height, steps, on_prompt=on_prompt)
    tmap = fit_map(
        runner, src, tgt, modules, method=METHODS[method], pooling="mean", procedure=procedure,
        support=None if support == "method default" else support, progress=progress,
        **prompt_pairs.get("meta", {}), layers=layers if LAYER_PRESETS.get(layers) else (custom_pattern or ""),
        collection={"seed": int(seed), "width": int(width), "height": int(height), "steps": int(steps),
                    "step": "first", "cfg": 1.0, "fitted_in": f"ComfyUI {cc.comfy_version()}"},
    )
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
                "transport per layer (Linear-AcT by default). Cancel works at any prompt. Outputs a TRANSPORT_MAP "
                "with canonical layer names (usable in diffusers too)."
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
                               tooltip="simultaneous: one pass, all layers at once. causal: layer by layer with upstream maps applied (better, one pass per layer)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Noise seed for the collection pass (the same noise for every prompt)."),
                io.Int.Input("width", default=1024, min=64, max=4096, step=64, tooltip="Width of the collection latent in pixels."),
                io.Int.Input("height", default=1024, min=64, max=4096, step=64, tooltip="Height of the collection latent in pixels."),
                io.Int.Input("steps", default=20, min=1, max=200,
                             tooltip="Scheduler steps; activations are taken at the first step, so this sets that step's noise level."),
            ],
            outputs=[TransportMapType.Output(display_name="transport_map", tooltip="The fitted map.")],
        )

    @classmethod
    def execute(cls, model, clip, prompt_pairs, method, layers, support, procedure, seed, width, height, steps,
                custom_pattern="") -> io.NodeOutput:
        tmap = fit(model, clip, prompt_pairs, method, layers, custom_pattern, support, procedure, seed, width, height, steps)
        return io.NodeOutput(tmap)


NODES = [FitTransportMap]
