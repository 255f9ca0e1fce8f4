#!/usr/bin/env python3
"""Write the pack's example workflows (workflows/*.json, ComfyUI UI format) from compact specs.

Widget values are laid out from a running server's node definitions, so the files match what
the frontend itself would save::

    python tools/make_workflows.py                  # starts the test ComfyUI (tools/comfyui_setup.py) once
    python tools/make_workflows.py object_info.json # or: node definitions saved from a server's /object_info
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

NEG = "blurry, low quality, watermark"

# -- per-family settings: the loader's file, the latent node, size and the sampler (one place) -----
# Every template records its family in extra.act_steering.family; the server tests swap in the
# tiny checkpoint of that family. To add a family: a row here, a spec and a note below.
FAMILIES = {
    "sdxl": dict(ckpt="sd_xl_base_1.0.safetensors", latent="EmptyLatentImage", size=1024, steps=25, cfg=7.0,
                 sampler="euler", scheduler="normal"),
    "sd15": dict(ckpt="v1-5-pruned-emaonly.safetensors", latent="EmptyLatentImage", size=512, steps=25, cfg=7.0,
                 sampler="euler", scheduler="normal"),
    "sd3": dict(ckpt="sd3.5_large_fp8_scaled.safetensors", latent="EmptySD3LatentImage", size=1024, steps=28, cfg=4.5,
                sampler="euler", scheduler="sgm_uniform"),
    # the paper's FLUX setting: schnell, 4 steps, no classifier-free guidance (cfg 1)
    "flux": dict(ckpt="flux1-schnell-fp8.safetensors", latent="EmptySD3LatentImage", size=1024, steps=4, cfg=1.0,
                 sampler="euler", scheduler="simple"),
    # any other model ComfyUI loads (the generic path): here a checkpoint of your choice
    "generic": dict(ckpt="your_model.safetensors", latent="EmptySD3LatentImage", size=1024, steps=20, cfg=4.0,
                    sampler="euler", scheduler="simple"),
}
CKPT = ("CheckpointLoaderSimple", {"ckpt_name": FAMILIES["sdxl"]["ckpt"]})


def _ckpt(family="sdxl"):
    return ("CheckpointLoaderSimple", {"ckpt_name": FAMILIES[family]["ckpt"]})


def _latent(family="sdxl"):
    f = FAMILIES[family]
    return (f["latent"], {"width": f["size"], "height": f["size"], "batch_size": 1})


def _ksampler(seed=42, family="sdxl"):
    f = FAMILIES[family]
    return ("KSampler", {"seed": seed, "steps": f["steps"], "cfg": f["cfg"], "sampler_name": f["sampler"],
                         "scheduler": f["scheduler"], "denoise": 1.0})


def _fit(layers="paper default", family="sdxl"):
    size = FAMILIES[family]["size"]
    return ("ActFitTransportMap", {"method": "Linear-AcT", "layers": layers, "custom_pattern": "", "support": "method default",
                                   "procedure": "simultaneous", "seed": 0, "width": size, "height": size, "batch_size": 8,
                                   "guidance": 3.5})


def _pairs(goal, count=32):
    return ("ActPromptPairs", {"goal": goal, "count": count, "seed": 0, "tags": "", "captions": "",
                               "source_prompts": "", "target_prompts": ""})


def _apply(strength=1.0):
    return ("ActApplyToModel", {"strength": strength, "start_percent": 0.0, "end_percent": 1.0, "steer_negative": False, "per_block": "",
                               "mode": "hooks", "window": "percent of denoising"})


def _sampling_tail(nodes, links, model_src, clip_src, positive_text, first_id, seed=42, prefix="act", family="sdxl"):
    """CLIP Text Encode x2 -> KSampler -> VAE Decode -> Save Image, fed by model_src / clip_src."""
    i = first_id
    nodes += [
        (i, ("CLIPTextEncode", {"text": positive_text})),
        (i + 1, ("CLIPTextEncode", {"text": NEG})),
        (i + 2, _latent(family)),
        (i + 3, _ksampler(seed, family)),
        (i + 4, ("VAEDecode", {})),
        (i + 5, ("SaveImage", {"filename_prefix": prefix})),
    ]
    links += [(clip_src, i, "clip"), (clip_src, i + 1, "clip"), (model_src, i + 3, "model"), ((i, 0), i + 3, "positive"),
              ((i + 1, 0), i + 3, "negative"), ((i + 2, 0), i + 3, "latent_image"), ((i + 3, 0), i + 4, "samples"),
              ((1, 2), i + 4, "vae"), ((i + 4, 0), i + 5, "images")]


def _style_control(family, style, prompt, prefix, layers="paper default"):
    """Load Checkpoint -> Prompt pairs -> Fit -> Apply to model -> sample: one family's first template."""
    nodes = [(1, _ckpt(family)), (2, _pairs(f"style: {style}")), (3, _fit(layers, family)), (4, _apply(1.0)),
             (5, ("ActMapInfo", {}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 0), 4, "model"),
             ((3, 0), 4, "transport_map"), ((3, 0), 5, "transport_map")]
    _sampling_tail(nodes, links, (4, 0), (1, 1), prompt, 6, prefix=prefix, family=family)
    return nodes, links


def spec_style_control():
    nodes, links = _style_control("sdxl", "watercolor", "a lighthouse on a cliff above the sea", "act_style")
    return "Style control: fit a watercolor map on UNet norms, sample with it", nodes, links


def spec_concept_negation():
    """Negation on SDXL base with CFG: the map is fitted on the text encoders' layers and applied to the
    CLIP. Pooled negation maps on UNet norms (the paper's layers) removed the other object as often as
    the named one on the miniature; text-encoder maps kept more of it (reports/miniworld/REPORT.md,
    the negation tables of both regimes)."""
    nodes = [(1, CKPT), (2, _pairs("negate: pink_elephant")), (3, _fit("text encoder layers")),
             (4, ("ActApplyToClip", {"strength": 1.0}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"),
             ((3, 0), 4, "transport_map")]
    _sampling_tail(nodes, links, (1, 0), (4, 0), "a city street at noon, with a pink elephant", 5, prefix="act_negation")
    return "Concept negation: remove a pink elephant that the prompt asks for (text-encoder map)", nodes, links


def spec_fit_then_save():
    nodes = [(1, CKPT), (2, _pairs("style: watercolor", 64)), (3, _fit()), (4, ("ActSaveMap", {"filename_prefix": "watercolor_sdxl"})),
             (5, ("ActMapInfo", {}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((3, 0), 4, "transport_map"), ((3, 0), 5, "transport_map")]
    return "Fit a map and save it to models/act_maps", nodes, links


def spec_load_and_apply():
    nodes = [(1, CKPT), (2, ("ActLoadMap", {"map_name": "watercolor_sdxl_00001_.safetensors"})), (3, _apply(0.8))]
    links = [((1, 0), 3, "model"), ((2, 0), 3, "transport_map")]
    _sampling_tail(nodes, links, (3, 0), (1, 1), "a bowl of fruit on a wooden table", 4, prefix="act_loaded")
    return "Load a saved map (models/act_maps) and sample with it", nodes, links


def spec_sweep():
    nodes = [(1, CKPT), (2, _pairs("style: pencil_sketch")), (3, _fit()),
             (4, ("CLIPTextEncode", {"text": "a portrait of an old fisherman"})), (5, ("CLIPTextEncode", {"text": NEG})),
             (6, _latent()),
             (7, ("ActStrengthSweep", {"strengths": "0, 0.5, 1, 1.5", "seed": 42, "steps": 25, "cfg": 7.0,
                                       "sampler_name": "euler", "scheduler": "normal", "columns": 4,
                                       "start_percent": 0.0, "end_percent": 1.0, "steer_negative": False, "per_block": "",
                                       "mode": "hooks", "window": "percent of denoising"})),
             (8, ("SaveImage", {"filename_prefix": "act_sweep"}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"), ((1, 1), 5, "clip"),
             ((1, 0), 7, "model"), ((3, 0), 7, "transport_map"), ((4, 0), 7, "positive"), ((5, 0), 7, "negative"),
             ((6, 0), 7, "latent_image"), ((1, 2), 7, "vae"), ((7, 0), 8, "images")]
    return "Strength sweep: the same seed at several strengths, as one labelled grid", nodes, links


def spec_text_encoder_style():
    nodes = [(1, CKPT), (2, _pairs("style: anime")), (3, _fit("text encoder layers")),
             (4, ("ActApplyToClip", {"strength": 1.0}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"), ((3, 0), 4, "transport_map")]
    _sampling_tail(nodes, links, (1, 0), (4, 0), "a cat sleeping on a windowsill", 5, prefix="act_clip_style")
    return "Text-encoder steering: fit on CLIP-L/CLIP-G layers, apply to CLIP", nodes, links


def spec_sd15_style_control():
    nodes, links = _style_control("sd15", "watercolor", "a lighthouse on a cliff above the sea", "act_sd15_style")
    return "SD1.5 style control: fit a watercolor map on the UNet norms, sample with it", nodes, links, "sd15"


def spec_sd3_style_control():
    nodes, links = _style_control("sd3", "watercolor", "a lighthouse on a cliff above the sea", "act_sd3_style")
    return "SD3.5 style control: fit on both streams of every joint block, sample with it", nodes, links, "sd3"


def spec_flux_schnell_style_control():
    nodes, links = _style_control("flux", "watercolor", "a lighthouse on a cliff above the sea", "act_flux_style")
    return "FLUX.1-schnell style control as in the paper (4 steps, CFG 1)", nodes, links, "flux"


def spec_flux_t5_style():
    nodes = [(1, _ckpt("flux")), (2, _pairs("style: anime")), (3, _fit("T5 blocks", "flux")),
             (4, ("ActApplyToClip", {"strength": 1.0}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"), ((3, 0), 4, "transport_map")]
    _sampling_tail(nodes, links, (1, 0), (4, 0), "a cat sleeping on a windowsill", 5, prefix="act_flux_t5_style", family="flux")
    return "FLUX.1-schnell text-encoder steering: fit on the T5-XXL blocks, apply to CLIP", nodes, links, "flux"


def spec_generic_style_control():
    nodes, links = _style_control("generic", "watercolor", "a lighthouse on a cliff above the sea", "act_generic_style")
    return "Any other model: the generic path (ComfyUI's own layer names)", nodes, links, "generic"


def spec_few_step():
    """A distilled few-step model (SDXL-Lightning 4-step, Turbo, the miniature's student): 4 steps, CFG 1, no
    negative prompt; steering from a map fitted at the first step (the paper's regime). Layers, method and
    strength follow reports/miniworld/REPORT.md (the 4-step student's tables)."""
    nodes = [(1, ("CheckpointLoaderSimple", {"ckpt_name": "sdxl_lightning_4step.safetensors"})),
             (2, _pairs(FEW_STEP["goal"], FEW_STEP["count"])),
             (3, ("ActFitTransportMap", {**_fit(FEW_STEP["layers_option"])[1], "method": FEW_STEP["method"],
                                         "support": FEW_STEP["support"]})),
             (4, ("ActApplyToClip", {"strength": FEW_STEP["strength"]})),
             (5, ("CLIPTextEncode", {"text": FEW_STEP["prompt"]})),
             (6, ("CLIPTextEncode", {"text": ""})),
             (7, _latent()),
             (8, ("KSampler", {"seed": 42, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                               "denoise": 1.0})),
             (9, ("VAEDecode", {})),
             (10, ("SaveImage", {"filename_prefix": "act_few_step"}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"),
             ((3, 0), 4, "transport_map"), ((4, 0), 5, "clip"), ((4, 0), 6, "clip"), ((1, 0), 8, "model"),
             ((5, 0), 8, "positive"), ((6, 0), 8, "negative"), ((7, 0), 8, "latent_image"), ((8, 0), 9, "samples"),
             ((1, 2), 9, "vae"), ((9, 0), 10, "images")]
    return FEW_STEP["title"], nodes, links, "sdxl"


#: the few-step template's settings (from reports/miniworld/REPORT.md, 4-step student)
FEW_STEP = {"title": "Few-step model (Lightning/Turbo), 4 steps, CFG 1: a style from text-encoder maps",
            "goal": "style: watercolor", "count": 64, "layers_option": "text encoder layers", "method": "Linear-AcT",
            "support": "method default", "strength": 1.0, "prompt": "a lighthouse on a cliff above the sea"}


def spec_masked_style():
    nodes = [(1, CKPT), (2, _pairs("style: watercolor")), (3, _fit()),
             (4, ("SolidMask", {"value": 0.0, "width": 1024, "height": 1024})),
             (5, ("SolidMask", {"value": 1.0, "width": 512, "height": 1024})),
             (6, ("MaskComposite", {"x": 0, "y": 0, "operation": "add"})),
             (7, _apply(1.0))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((4, 0), 6, "destination"),
             ((5, 0), 6, "source"), ((1, 0), 7, "model"), ((3, 0), 7, "transport_map"), ((6, 0), 7, "mask")]
    _sampling_tail(nodes, links, (7, 0), (1, 1), "a harbour town with boats, morning light", 8, prefix="act_masked")
    return "Masked style: watercolor on the left half of the image only", nodes, links


#: The note at the top left of every template: which model family and settings it expects, what
#: each group does and what to change first (Markdown, shown by the frontend's Markdown Note).
_SDXL_BASE = ("**Expects** an SDXL checkpoint (base 1.0 or a fine-tune with the same keys) in *Load Checkpoint*; "
              "KSampler at 25 steps, cfg 7, 1024×1024. For SDXL-Lightning/Turbo use their settings (4 or 1 steps, "
              "cfg 1): the map works the same.")
_GROUPS = ("**1 · Fit** runs each source and target prompt through the model once (first denoising step) and fits "
           "one transport per layer. **2 · Apply** steers a copy of the model with strength λ (0 = off, 1 = the "
           "full transport). **3 · Sample** is the usual text-to-image graph.")
NOTES = {
    "act_style_control": f"{_SDXL_BASE}\n\n{_GROUPS}\n\nUNet norms are the paper's layers and the ones masks "
                         "and fused mode need. For style alone, maps on the text encoders' layers "
                         "(*act_text_encoder_style*) did better in the project's measurements "
                         "(reports/miniworld/REPORT.md, style tables).\n\n**Change first:** the style in *Prompt "
                         "pairs* and your prompt in the first *CLIP Text Encode*; then λ in *Apply* (try 0.5–1.5).",
    "act_concept_negation": f"{_SDXL_BASE}\n\n{_GROUPS} The map is fitted on the text encoders' layers and "
                            "applied to the CLIP: UNet-norm negation maps removed the other objects too in the "
                            "project's measurements (reports/miniworld/REPORT.md, negation tables), and a negative "
                            "prompt remains a strong alternative with CFG.\n\n**Change first:** the concept in "
                            "*Prompt pairs* (negate: …), then λ in *Apply to CLIP*. The prompt names the concept on "
                            "purpose: λ = 0 draws it.",
    "act_fit_then_save": f"{_SDXL_BASE}\n\n**1 · Fit** a map from 64 prompt pairs and save it to "
                         "`models/act_maps` (*Save map* numbers the files, never overwrites). Run it once; "
                         "then use *Load and apply*.\n\n**Change first:** the goal in *Prompt pairs* and the file "
                         "name prefix.",
    "act_load_and_apply": f"{_SDXL_BASE}\n\n**2 · Apply** a map saved in `models/act_maps` (from *Fit then "
                          "save*, the CLI or diffusers: the same file) and **3 · Sample** with it.\n\n**Change "
                          "first:** the map in *Load map*, then λ.",
    "act_strength_sweep": f"{_SDXL_BASE}\n\n**1 · Fit** a map, then **3 · Sample** the same seed at several "
                          "strengths as one labelled grid (*Strength sweep* takes the *Apply* options).\n\n"
                          "**Change first:** the strengths list and the prompt.",
    "act_masked_style": f"{_SDXL_BASE}\n\n{_GROUPS} Here *Apply* gets a **mask**: only the white part (1) is "
                        "steered, the black part (0) is left as the model draws it; each layer sees the mask at its "
                        "own resolution. The two *Solid Mask* nodes and *Mask Composite* make a left-half mask.\n\n"
                        "**Change first:** replace the three mask nodes by your own mask (the MASK output of *Load "
                        "Image*, painted in the mask editor), at the image's size; then the style and λ. Masks need "
                        "mode `hooks`.",
    "act_text_encoder_style": f"{_SDXL_BASE}\n\n{_GROUPS} Here the map is fitted on the text encoders' layers "
                              "and applied to the CLIP (not the UNet), which moves style the way the prompt "
                              "would: the setting that did best for style on SDXL with CFG in the project's "
                              "measurements (reports/miniworld/REPORT.md, teacher style table).\n\n**Change first:** the style in *Prompt pairs*, then λ in *Apply to CLIP*.",
    "act_sd15_style_control": "**Expects** an SD1.5 checkpoint (or a fine-tune with the same keys; an SD2.x checkpoint "
                              "works the same) in *Load Checkpoint*; KSampler at 25 steps, cfg 7, 512×512.\n\n"
                              f"{_GROUPS}\n\n*paper default* fits every UNet normalisation, as the paper does for "
                              "SDXL.\n\n**Change first:** the style in *Prompt pairs* and your prompt; then λ in *Apply*.",
    "act_sd3_style_control": "**Expects** an SD3.5 (or SD3) checkpoint that holds its text encoders, e.g. "
                             "`sd3.5_large_fp8_scaled`; KSampler at 28 steps, cfg 4.5, *sgm_uniform*, 1024×1024 "
                             "(*EmptySD3LatentImage*).\n\n"
                             f"{_GROUPS}\n\n*paper default* fits both streams (image and text) of every joint "
                             "block. The shift comes with the model (add *ModelSamplingSD3* before the nodes to "
                             "change it; the fit does not depend on it).\n\n**Change first:** the style in "
                             "*Prompt pairs* and your prompt; then λ in *Apply*.",
    "act_flux_schnell_style_control": "**Expects** FLUX.1-schnell as one checkpoint (`flux1-schnell-fp8`, with CLIP-L, "
                                      "T5-XXL and the VAE inside) in *Load Checkpoint*; KSampler at **4 steps, cfg 1** "
                                      "(no classifier-free guidance), *simple*, 1024×1024: the paper's setting.\n\n"
                                      f"{_GROUPS}\n\n*paper default* fits both outputs of every double-stream block "
                                      "and the first 15 single-stream blocks (paper App. M.8). For FLUX.1-dev use "
                                      "its settings (20–28 steps, cfg 1, a *FluxGuidance* node); the Fit node's "
                                      "*guidance* is dev's embedded guidance during the fit.\n\n**Change first:** "
                                      "the style in *Prompt pairs* and your prompt; then λ in *Apply*.",
    "act_flux_t5_style": "**Expects** FLUX.1-schnell as one checkpoint (`flux1-schnell-fp8`); KSampler at 4 steps, "
                         "cfg 1.\n\n"
                         f"{_GROUPS} Here the map is fitted on the T5-XXL encoder's blocks and applied to the "
                         "CLIP (*Apply to CLIP* reaches T5 as well as CLIP-L).\n\n**Change first:** the style "
                         "in *Prompt pairs*, then λ in *Apply to CLIP*.",
    "act_generic_style_control": "**Expects** any model ComfyUI loads that has no family of its own in act-steering "
                                 "(Wan, Chroma, Lumina, HiDream, Qwen-Image ...; SD1.5, SDXL, SD3 and FLUX have their "
                                 "own templates): pick it in *Load Checkpoint* (or "
                                 "swap in *Load Diffusion Model* and its text-encoder loader) and use its usual "
                                 "KSampler settings and latent node.\n\n"
                                 f"{_GROUPS}\n\n*paper default* here fits every block output, named by ComfyUI's "
                                 "own module names (the generic path); such a map works on that model type only, "
                                 "and *Map info* says so.\n\n**Change first:** the checkpoint and the sampler "
                                 "settings, the style in *Prompt pairs*; then λ in *Apply*.",
    "act_few_step": "**Expects** a distilled few-step SDXL (SDXL-Lightning 4-step, SDXL-Turbo, or the project's "
                    "miniature student) in *Load Checkpoint*; KSampler at 4 steps, cfg 1, euler, scheduler simple, "
                    "an empty negative prompt (CFG is off). The paper's image results are in this regime.\n\n"
                    f"{_GROUPS} Here the map is fitted on the text encoders' layers and applied to the CLIP: on the "
                    "miniature's 4-step student this beat UNet-norm maps for style (reports/miniworld/REPORT.md, "
                    "student style table).\n\n**Change first:** the style in *Prompt pairs* and your prompt; "
                    "then λ in *Apply to CLIP* (0.5–1.5).",
}

SPECS = {
    "act_style_control": spec_style_control,
    "act_concept_negation": spec_concept_negation,
    "act_fit_then_save": spec_fit_then_save,
    "act_load_and_apply": spec_load_and_apply,
    "act_strength_sweep": spec_sweep,
    "act_text_encoder_style": spec_text_encoder_style,
    "act_sd15_style_control": spec_sd15_style_control,
    "act_sd3_style_control": spec_sd3_style_control,
    "act_flux_schnell_style_control": spec_flux_schnell_style_control,
    "act_flux_t5_style": spec_flux_t5_style,
    "act_generic_style_control": spec_generic_style_control,
    "act_masked_style": spec_masked_style,
    "act_few_step": spec_few_step,
}


#: Which group a node type is laid out in (left to right); types not listed go to "sample".
GROUP_OF = {
    "ActPromptPairs": "fit", "ActFitTransportMap": "fit", "ActSaveMap": "fit", "ActMapInfo": "fit",
    "ActLoadMap": "apply", "ActCombineMaps": "apply", "ActApplyToModel": "apply", "ActApplyToClip": "apply",
    "CheckpointLoaderSimple": "load",
    "SolidMask": "apply", "MaskComposite": "apply", "LoadImage": "apply",
}
GROUPS = {"load": None, "fit": "1 · Fit a transport map", "apply": "2 · Apply it", "sample": "3 · Sample"}
GROUP_COLORS = {"fit": "#3f789e", "apply": "#8a5e9e", "sample": "#5e8a4a"}
#: Layout in canvas pixels. The frontend draws a node's title bar above ``pos`` (LiteGraph's
#: NODE_TITLE_HEIGHT) and a group's title inside the top of its bounding box.
WIDTH, TITLE, GAP, PAD, GROUP_TITLE, COLUMN_HEIGHT = 400, 30, 36, 24, 46, 1050
NOTE_SIZE = (440, 330)


def node_height(ntype, specs, order, widgets, inputs, outputs) -> int:
    """A body height at least what the frontend computes for the node (checked in the browser test):
    20 px per slot row, 24 per widget, room for multiline text boxes and image previews."""
    multiline = sum(1 for n in order if len(specs[n]) > 1 and isinstance(specs[n][1], dict) and specs[n][1].get("multiline"))
    height = 26 + 20 * max(len(inputs), len(outputs)) + 24 * widgets + 96 * multiline
    if ntype in ("SaveImage", "PreviewImage", "ActStrengthSweep"):
        height += 240
    return height


def _layout(placed):
    """Positions for ``[(nid, group, height)]``: groups left to right (load, fit, apply, sample),
    nodes stacked top to bottom inside a group, a new column when one grows past COLUMN_HEIGHT.
    Returns ``{nid: (x, y)}`` and ``{group: [x, y, w, h]}`` bounding boxes (group titles inside)."""
    pos, boxes = {}, {}
    x = PAD + NOTE_SIZE[0] + 2 * GAP
    top = 60 + GROUP_TITLE + TITLE
    for group in GROUPS:
        members = [(nid, h) for nid, g, h in placed if g == group]
        if not members:
            continue
        x0, y, col_x, bottom = x, top, x, top
        for nid, h in members:
            if y > top and y + h > top + COLUMN_HEIGHT:
                col_x += WIDTH + GAP
                y = top
            pos[nid] = (col_x, y)
            y += h + TITLE + GAP
            bottom = max(bottom, y - GAP)
        right = col_x + WIDTH
        if GROUPS[group]:
            boxes[group] = [x0 - PAD, 60, right - x0 + 2 * PAD, bottom - 60 + PAD]
        x = right + 2 * PAD + GAP
    return pos, boxes


def build(title, nodes, links, object_info, note="", family="sdxl"):
    """One UI-format workflow: nodes with their widget values in the server's order, laid out in
    groups (fit / apply / sample) with a Markdown note at the top left."""
    by_id = {}
    ui_links = []
    placed = []
    for nid, (ntype, widgets) in nodes:
        info = object_info[ntype]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        values, inputs = [], []
        for name in order:
            spec = specs[name]
            t = spec[0]
            if isinstance(t, list) or t in WIDGETS:
                if name not in widgets:
                    raise KeyError(f"{ntype}: widget {name!r} has no value in the spec")
                values.append(widgets[name])
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if opts.get("control_after_generate") or (name in ("seed", "noise_seed") and t == "INT"):
                    values.append("fixed")
            else:
                inputs.append({"name": name, "type": t, "link": None})
        unknown = set(widgets) - set(order)
        if unknown:
            raise KeyError(f"{ntype}: unknown widgets {unknown}")
        outputs = [{"name": n, "type": t, "links": [], "slot_index": k}
                   for k, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
        height = node_height(ntype, specs, order, len(values), inputs, outputs)
        placed.append((nid, GROUP_OF.get(ntype, "sample"), height))
        by_id[nid] = {"id": nid, "type": ntype, "pos": [0, 0], "size": [WIDTH, height],
                      "flags": {}, "order": len(by_id), "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": ntype}, "widgets_values": values}
    pos, boxes = _layout(placed)
    for nid, (x, y) in pos.items():
        by_id[nid]["pos"] = [x, y]
    for k, (src, dst, name) in enumerate(links, start=1):
        (sid, slot) = src
        s, d = by_id[sid], by_id[dst]
        inp = next(i for i in d["inputs"] if i["name"] == name)
        inp["link"] = k
        s["outputs"][slot]["links"].append(k)
        ui_links.append([k, sid, slot, dst, d["inputs"].index(inp), s["outputs"][slot]["type"]])
    note_id = max(by_id) + 1
    text = f"## {title}\n\n{note.strip()}\n"
    by_id[note_id] = {"id": note_id, "type": "MarkdownNote", "pos": [PAD, 60 + TITLE], "size": list(NOTE_SIZE),
                      "flags": {}, "order": len(by_id), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"}
    groups = [{"title": GROUPS[g], "bounding": box, "color": GROUP_COLORS[g], "font_size": 24, "flags": {}}
              for g, box in boxes.items()]
    return {
        "last_node_id": note_id, "last_link_id": len(ui_links), "nodes": list(by_id.values()), "links": ui_links,
        "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [0, 0]},
                                                  "act_steering": {"title": title, "family": family}},
        "version": 0.4,
    }


def live_object_info() -> dict:
    """``/object_info`` of a real ComfyUI (the tests' one, --cpu on loopback) with this pack installed."""
    import tempfile

    sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests" / "comfy")]
    import comfy_harness
    import comfyui_setup

    if not comfyui_setup.ready():
        comfyui_setup.main([])
    with tempfile.TemporaryDirectory() as base:
        comfy_harness.install_pack(Path(base) / "custom_nodes")
        server = comfy_harness.ComfyServer(comfyui_setup.comfyui_dir(), Path(base)).start()
        try:
            return server.get("/object_info")
        finally:
            server.stop()


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) > 1:
        raise SystemExit(__doc__)
    object_info = json.loads(Path(argv[0]).read_text()) if argv else live_object_info()
    out = ROOT / "workflows"
    out.mkdir(exist_ok=True)
    for name, spec in SPECS.items():
        title, nodes, links, *family = spec()  # a spec may name its family (default SDXL)
        if name not in NOTES:
            raise KeyError(f"template {name!r} has no note: add what it expects and what to change first to NOTES")
        wf = build(title, nodes, links, object_info, NOTES[name], *family)
        (out / f"{name}.json").write_text(json.dumps(wf, indent=1) + "\n")
        print(out / f"{name}.json")


if __name__ == "__main__":
    main()
