"""The node pack in a real ComfyUI 0.3.75 server (subprocess on 127.0.0.1, --cpu), driven over HTTP."""

import json
import shutil
import time
from pathlib import Path

import pytest

import comfy_harness as srv
import ui2api

pytestmark = pytest.mark.comfy

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
NODE_IDS = ["ActPromptPairs", "ActFitTransportMap", "ActApplyToModel", "ActApplyToClip", "ActSaveMap", "ActLoadMap",
            "ActCombineMaps", "ActMapInfo", "ActStrengthSweep"]
from conftest import TINY
SMALL = {"ckpt_name": TINY, "width": 64, "height": 64, "steps": 2, "count": 4}


def _workflow(name):
    return json.loads((ROOT / "workflows" / name).read_text())


def test_pack_loads_without_import_failure_and_lists_every_node(comfy_server, object_info):
    log = comfy_server.log()
    pack_lines = [l for l in log.splitlines() if "act-steering" in l]
    assert pack_lines, "the pack folder is not mentioned in the startup log"
    assert not any("IMPORT FAILED" in l for l in pack_lines), "\n".join(pack_lines)
    for node_id in NODE_IDS:
        info = object_info.get(node_id)
        assert info is not None, f"{node_id} missing from /object_info"
        assert info["category"] == "steering/act"
        assert info["python_module"].endswith("act-steering")
        assert info["display_name"].isascii() and info["description"]
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert object_info["ActFitTransportMap"]["output"] == ["TRANSPORT_MAP"]
    assert "Linear-AcT" in json.dumps(object_info["ActFitTransportMap"]["input"]["required"]["method"])


def test_every_seed_input_has_ksamplers_range(object_info):
    ks = object_info["KSampler"]["input"]["required"]["seed"][1]
    seeds = {node_id: spec[1] for node_id in NODE_IDS for group in ("required", "optional")
             for name, spec in object_info[node_id]["input"].get(group, {}).items() if name == "seed"}
    assert len(seeds) >= 3, seeds
    assert all((o["min"], o["max"]) == (ks["min"], ks["max"]) for o in seeds.values()), (ks, seeds)


def test_workflows_appear_in_the_template_browser(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates.get("act-steering", [])) == sorted(p.stem for p in WORKFLOWS)
    served = comfy_server.get("/api/workflow_templates/act-steering/act_style_control.json")
    assert served == _workflow("act_style_control.json")


# fit-then-save first: load-and-apply loads the map it writes
ORDER = ["act_fit_then_save.json"] + [p.name for p in WORKFLOWS if p.name != "act_fit_then_save.json"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_shipped_workflow_runs(comfy_server, object_info, name):
    ui = _workflow(name)
    prompt = ui2api.convert(ui, object_info, overrides=SMALL)
    entry = comfy_server.run(prompt, timeout=300, workflow=ui)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    outputs = entry["outputs"]
    saved = [img for out in outputs.values() for img in out.get("images", [])]
    types = {n["type"] for n in ui["nodes"]}
    if "SaveImage" in types:
        assert any(img["type"] == "output" for img in saved), f"{name}: no image written"
        for img in saved:
            assert (comfy_server.base / img["type"] / img.get("subfolder", "") / img["filename"]).is_file()
    if "ActSaveMap" in types:  # the Save node's counter: watercolor_sdxl_00001_.safetensors on the first run
        assert (comfy_server.base / "models" / "act_maps" / "watercolor_sdxl_00001_.safetensors").is_file()
    if "ActMapInfo" in types:
        texts = [t for out in outputs.values() for t in out.get("text", [])]
        assert any("recommended strength" in t for t in texts), outputs


def test_saved_map_is_listed_and_offered_by_the_loader(comfy_server):
    assert "watercolor_sdxl_00001_.safetensors" in comfy_server.get("/models/act_maps")
    info = comfy_server.get("/object_info/ActLoadMap")["ActLoadMap"]
    assert "watercolor_sdxl_00001_.safetensors" in json.dumps(info["input"]["required"]["map_name"])


def test_extra_model_paths_folder_is_honoured(comfy_server):
    src = comfy_server.base / "models" / "act_maps" / "watercolor_sdxl_00001_.safetensors"
    extra = comfy_server.base / "extra_maps"
    shutil.copy2(src, extra / "extra_watercolor.safetensors")
    (extra / "readme.txt").write_text("not a map")
    listed = comfy_server.get("/models/act_maps")
    assert "extra_watercolor.safetensors" in listed and "readme.txt" not in listed
    prompt = {
        "1": {"class_type": "ActLoadMap", "inputs": {"map_name": "extra_watercolor.safetensors"}},
        "2": {"class_type": "ActMapInfo", "inputs": {"transport_map": ["1", 0]}},
    }
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "watercolor" in entry["outputs"]["2"]["text"][0]


def test_path_traversal_in_map_name_is_refused(comfy_server):
    prompt = {
        "1": {"class_type": "ActLoadMap", "inputs": {"map_name": "../../checkpoints/tiny_sdxl.safetensors"}},
        "2": {"class_type": "ActMapInfo", "inputs": {"transport_map": ["1", 0]}},
    }
    r = comfy_server.post_prompt(prompt)
    assert r.get("http_error") == 400, r
    assert "invalid map file name" in json.dumps(r)


def test_interrupt_during_fit_ends_cleanly_and_writes_no_file(comfy_server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "2": {"class_type": "ActPromptPairs", "inputs": {"goal": "style: watercolor", "count": 400, "seed": 1}},
        "3": {"class_type": "ActFitTransportMap", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "prompt_pairs": ["2", 0], "method": "Linear-AcT",
            "layers": "custom pattern", "custom_pattern": r"unet\.mid_block\..*norm.*", "support": "method default",
            "procedure": "causal (low memory)", "seed": 0, "width": 64, "height": 64, "batch_size": 8}},
        "4": {"class_type": "ActSaveMap", "inputs": {"transport_map": ["3", 0], "filename_prefix": "interrupted_map"}},
    }
    client = "interrupt-test"
    ws = comfy_server.websocket(client)
    try:
        r = comfy_server.post_prompt(prompt, client_id=client)
        assert "prompt_id" in r, r
        # the fit node reports native progress (comfy.utils.ProgressBar); interrupt once it is under way
        progress = None
        deadline = time.time() + 120
        while time.time() < deadline:
            msg = ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "progress" and m["data"].get("node") == "3" and m["data"]["value"] >= 3:
                    progress = m["data"]
                    break
        assert progress is not None, "no progress message from the fit node"
        # (400 source + 400 target prompts) x 8 causal passes (the mid block has 8 norms)
        assert progress["max"] == 800 * 8
    finally:
        ws.close()
    t0 = time.time()
    comfy_server.interrupt()
    entry = comfy_server.wait(r["prompt_id"], timeout=120)
    took = time.time() - t0
    msgs = srv.messages(entry)
    assert "execution_interrupted" in msgs, msgs
    assert "execution_success" not in msgs
    interrupted = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_interrupted"][0]
    assert interrupted["node_type"] == "ActFitTransportMap", interrupted
    maps_dir = comfy_server.base / "models" / "act_maps"
    assert not list(maps_dir.glob("interrupted_map*")) and not list(maps_dir.glob(".*.tmp"))
    print(f"interrupt acknowledged after {took:.2f} s")
    # the server still works afterwards
    assert not comfy_server.queue_running()
