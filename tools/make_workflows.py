#!/usr/bin/env python3
"""Write the pack's example workflows (workflows/*.json, ComfyUI UI format) from compact specs.

Widget values are laid out from a running server's node definitions, so the files match what
the frontend itself would save::

    curl -s http://127.0.0.1:8188/object_info > /tmp/object_info.json
    python tools/make_workflows.py /tmp/object_info.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

CKPT = ("CheckpointLoaderSimple", {"ckpt_name": "sd_xl_base_1.0.safetensors"})
NEG = "blurry, low quality, watermark"


def _latent(w=1024, h=1024):
    return ("EmptyLatentImage", {"width": w, "height": h, "batch_size": 1})


def _ksampler(seed=42):
    return ("KSampler", {"seed": seed, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0})


def _fit(layers="UNet norms"):
    return ("ActFitTransportMap", {"method": "Linear-AcT", "layers": layers, "custom_pattern": "", "support": "method default",
                                   "procedure": "simultaneous", "seed": 0, "width": 1024, "height": 1024, "steps": 20,
                                   "batch_size": 8})


def _pairs(goal, count=32):
    return ("ActPromptPairs", {"goal": goal, "count": count, "seed": 0, "tags": "", "captions": "",
                               "source_prompts": "", "target_prompts": ""})


def _apply(strength=1.0):
    return ("ActApplyToModel", {"strength": strength, "start_percent": 0.0, "end_percent": 1.0, "steer_negative": False, "per_block": "",
                               "mode": "hooks", "window": "percent of denoising"})


def _sampling_tail(nodes, links, model_src, clip_src, positive_text, first_id, seed=42, prefix="act"):
    """CLIP Text Encode x2 -> KSampler -> VAE Decode -> Save Image, fed by model_src / clip_src."""
    i = first_id
    nodes += [
        (i, ("CLIPTextEncode", {"text": positive_text})),
        (i + 1, ("CLIPTextEncode", {"text": NEG})),
        (i + 2, _latent()),
        (i + 3, _ksampler(seed)),
        (i + 4, ("VAEDecode", {})),
        (i + 5, ("SaveImage", {"filename_prefix": prefix})),
    ]
    links += [(clip_src, i, "clip"), (clip_src, i + 1, "clip"), (model_src, i + 3, "model"), ((i, 0), i + 3, "positive"),
              ((i + 1, 0), i + 3, "negative"), ((i + 2, 0), i + 3, "latent_image"), ((i + 3, 0), i + 4, "samples"),
              ((1, 2), i + 4, "vae"), ((i + 4, 0), i + 5, "images")]


def spec_style_control():
    nodes = [(1, CKPT), (2, _pairs("style: watercolor")), (3, _fit()), (4, _apply(1.0)), (5, ("ActMapInfo", {}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 0), 4, "model"),
             ((3, 0), 4, "transport_map"), ((3, 0), 5, "transport_map")]
    _sampling_tail(nodes, links, (4, 0), (1, 1), "a lighthouse on a cliff above the sea", 6, prefix="act_style")
    return "Style control: fit a watercolor map on UNet norms, sample with it", nodes, links


def spec_concept_negation():
    nodes = [(1, CKPT), (2, _pairs("negate: pink_elephant")), (3, _fit()), (4, _apply(1.0))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 0), 4, "model"), ((3, 0), 4, "transport_map")]
    _sampling_tail(nodes, links, (4, 0), (1, 1), "a city street at noon, with a pink elephant", 5, prefix="act_negation")
    return "Concept negation: remove a pink elephant that the prompt asks for", nodes, links


def spec_fit_then_save():
    nodes = [(1, CKPT), (2, _pairs("style: watercolor", 64)), (3, _fit()), (4, ("ActSaveMap", {"name": "watercolor_sdxl"})),
             (5, ("ActMapInfo", {}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((3, 0), 4, "transport_map"), ((3, 0), 5, "transport_map")]
    return "Fit a map and save it to models/act_maps", nodes, links


def spec_load_and_apply():
    nodes = [(1, CKPT), (2, ("ActLoadMap", {"map_name": "watercolor_sdxl.safetensors"})), (3, _apply(0.8))]
    links = [((1, 0), 3, "model"), ((2, 0), 3, "transport_map")]
    _sampling_tail(nodes, links, (3, 0), (1, 1), "a bowl of fruit on a wooden table", 4, prefix="act_loaded")
    return "Load a saved map (models/act_maps) and sample with it", nodes, links


def spec_sweep():
    nodes = [(1, CKPT), (2, _pairs("style: pencil_sketch")), (3, _fit()),
             (4, ("CLIPTextEncode", {"text": "a portrait of an old fisherman"})), (5, ("CLIPTextEncode", {"text": NEG})),
             (6, _latent()),
             (7, ("ActStrengthSweep", {"strengths": "0, 0.5, 1, 1.5", "seed": 42, "steps": 25, "cfg": 7.0,
                                       "sampler_name": "euler", "scheduler": "normal", "columns": 4})),
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


def spec_few_step():
    """A distilled few-step model (SDXL-Lightning 4-step, Turbo, the miniature's student): 4 steps, CFG 1, no
    negative prompt; steering from a map fitted at the first step (the paper's regime). Layers, method and
    strength follow reports/miniworld/REPORT.md (the 4-step student's tables)."""
    nodes = [(1, ("CheckpointLoaderSimple", {"ckpt_name": "sdxl_lightning_4step.safetensors"})),
             (2, _pairs(FEW_STEP["goal"], FEW_STEP["count"])),
             (3, ("ActFitTransportMap", {**_fit(FEW_STEP["layers_option"])[1], "method": FEW_STEP["method"],
                                         "support": FEW_STEP["support"], "steps": 4})),
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
    return FEW_STEP["title"], nodes, links


#: the few-step template's settings (from reports/miniworld/REPORT.md, 4-step student)
FEW_STEP = {"title": "Few-step model (Lightning/Turbo), 4 steps, CFG 1: a style from text-encoder maps",
            "goal": "style: watercolor", "count": 64, "layers_option": "text encoder layers", "method": "Linear-AcT",
            "support": "method default", "strength": 1.0, "prompt": "a lighthouse on a cliff above the sea"}


SPECS = {
    "act_style_control": spec_style_control,
    "act_concept_negation": spec_concept_negation,
    "act_fit_then_save": spec_fit_then_save,
    "act_load_and_apply": spec_load_and_apply,
    "act_strength_sweep": spec_sweep,
    "act_text_encoder_style": spec_text_encoder_style,
    "act_few_step": spec_few_step,
}


def build(title, nodes, links, object_info):
    by_id = {}
    ui_links = []
    column_y = [60]
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
        multiline = sum(1 for n in order if len(specs[n]) > 1 and isinstance(specs[n][1], dict) and specs[n][1].get("multiline"))
        height = 60 + 24 * (len(values) + len(inputs) + len(outputs)) + 110 * multiline
        if ntype in ("SaveImage", "PreviewImage", "ActStrengthSweep"):
            height += 220
        if column_y[-1] + height > 1400:
            column_y.append(60)
        x, y = 60 + 440 * (len(column_y) - 1), column_y[-1]
        column_y[-1] += height + 40
        by_id[nid] = {"id": nid, "type": ntype, "pos": [x, y], "size": [400, height],
                      "flags": {}, "order": len(by_id), "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": ntype}, "widgets_values": values}
    for k, (src, dst, name) in enumerate(links, start=1):
        (sid, slot) = src
        s, d = by_id[sid], by_id[dst]
        inp = next(i for i in d["inputs"] if i["name"] == name)
        inp["link"] = k
        s["outputs"][slot]["links"].append(k)
        ui_links.append([k, sid, slot, dst, d["inputs"].index(inp), s["outputs"][slot]["type"]])
    return {
        "last_node_id": max(by_id), "last_link_id": len(ui_links), "nodes": list(by_id.values()), "links": ui_links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "act_steering": {"title": title}},
        "version": 0.4,
    }


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) != 1:
        raise SystemExit(__doc__)
    object_info = json.loads(Path(argv[0]).read_text())
    out = ROOT / "workflows"
    out.mkdir(exist_ok=True)
    for name, spec in SPECS.items():
        title, nodes, links = spec()
        (out / f"{name}.json").write_text(json.dumps(build(title, nodes, links, object_info), indent=1) + "\n")
        print(out / f"{name}.json")


if __name__ == "__main__":
    main()
