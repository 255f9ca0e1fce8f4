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
# tiny checkpoint of that family. To add a family: a row here and a spec below.
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
    return "SDXL style control: fit a watercolor map on the UNet norms (paper default), sample with it", nodes, links


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
                                       "sampler_name": "euler", "scheduler": "normal", "columns": 4,
                                       "start_percent": 0.0, "end_percent": 1.0, "steer_negative": False, "per_block": "",
                                       "mode": "hooks", "window": "percent of denoising"})),
             (8, ("SaveImage", {"filename_prefix": "act_sweep"}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"), ((1, 1), 5, "clip"),
             ((1, 0), 7, "model"), ((3, 0), 7, "transport_map"), ((4, 0), 7, "positive"), ((5, 0), 7, "negative"),
             ((6, 0), 7, "latent_image"), ((1, 2), 7, "vae"), ((7, 0), 8, "images")]
    return "Strength sweep: the same seed at several strengths, as one labelled grid", nodes, links


def spec_sd15_style_control():
    nodes, links = _style_control("sd15", "watercolor", "a lighthouse on a cliff above the sea", "act_sd15_style")
    return ("SD1.5 (and SD2.x) style control: fit a watercolor map on the UNet norms, sample with it", nodes, links,
            "sd15")


def spec_sd3_style_control():
    nodes, links = _style_control("sd3", "watercolor", "a lighthouse on a cliff above the sea", "act_sd3_style")
    return ("SD3.5 style control: fit on both streams of every joint block, sample with it", nodes, links, "sd3")


def spec_flux_schnell_style_control():
    nodes, links = _style_control("flux", "watercolor", "a lighthouse on a cliff above the sea", "act_flux_style")
    return ("FLUX.1-schnell style control as in the paper: both outputs of every double-stream block and the first "
            "15 single-stream blocks, 4 steps, CFG 1", nodes, links, "flux")


def spec_flux_t5_style():
    nodes = [(1, _ckpt("flux")), (2, _pairs("style: anime")), (3, _fit("T5 blocks", "flux")),
             (4, ("ActApplyToClip", {"strength": 1.0}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"), ((3, 0), 4, "transport_map")]
    _sampling_tail(nodes, links, (1, 0), (4, 0), "a cat sleeping on a windowsill", 5, prefix="act_flux_t5_style", family="flux")
    return "FLUX.1-schnell text-encoder steering: fit on the T5-XXL blocks, apply to CLIP", nodes, links, "flux"


def spec_generic_style_control():
    nodes, links = _style_control("generic", "watercolor", "a lighthouse on a cliff above the sea", "act_generic_style")
    return ("Any other model (Wan, Chroma, Lumina, HiDream ...): the generic path fits every block output by ComfyUI's "
            "own layer names; such a map fits that model type only", nodes, links, "generic")


def spec_text_encoder_style():
    nodes = [(1, CKPT), (2, _pairs("style: anime")), (3, _fit("text encoder layers")),
             (4, ("ActApplyToClip", {"strength": 1.0}))]
    links = [((1, 0), 3, "model"), ((1, 1), 3, "clip"), ((2, 0), 3, "prompt_pairs"), ((1, 1), 4, "clip"), ((3, 0), 4, "transport_map")]
    _sampling_tail(nodes, links, (1, 0), (4, 0), "a cat sleeping on a windowsill", 5, prefix="act_clip_style")
    return "Text-encoder steering: fit on CLIP-L/CLIP-G layers, apply to CLIP", nodes, links


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
}


def build(title, nodes, links, object_info, family="sdxl"):
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
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]},
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
        workflow = build(title, nodes, links, object_info, *family)
        (out / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        print(out / f"{name}.json")


if __name__ == "__main__":
    main()
