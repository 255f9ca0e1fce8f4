"""Reliability through a real ComfyUI server (issue 6): isolation of queued workflows and of a
steered and an unsteered branch in one graph, /interrupt during steered sampling, and hostile
map files in ``models/act_maps``. Results are compared as PNG pixels with separate runs.
"""

import json
import time

import numpy as np
import pytest

import comfy_harness as srv
from conftest import TINY

pytestmark = pytest.mark.comfy

MID = r"unet\.mid_block\..*norm.*"


@pytest.fixture(scope="module")
def server_maps(comfy_server, pack, tiny_pack):
    """Two different maps fitted in this process on the same tiny SDXL the server's checkpoint holds."""
    from act_steering_pack.nodes import fit, prompts

    model, clip = tiny_pack.build(seed=0)
    folder = comfy_server.base / "models" / "act_maps"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, goal in (("rel_a", "style: watercolor"), ("rel_b", "negate: pink_elephant")):
        pairs = prompts.build_pairs(goal, 2, 0)
        tmap = fit.fit(model, clip, pairs, "Linear-AcT", "UNet norms", "", "method default", "simultaneous", 0, 64, 64,
                       batch_size=2)
        tmap.save(folder / f"{name}.safetensors")
        names.append(f"{name}.safetensors")
    return names


def _graph(branches, steps=3, seed=5):
    """Checkpoint -> (optional map -> apply) -> KSampler -> VAE decode -> SaveImage, one branch per
    ``(map name or None, strength, prefix)``; returns (prompt, {prefix: SaveImage node id}, {prefix: KSampler id})."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    saves, samplers = {}, {}
    for i, (map_name, strength, prefix) in enumerate(branches):
        b = 10 * (i + 1)
        model = ["1", 0]
        if map_name:
            g[str(b)] = {"class_type": "ActLoadMap", "inputs": {"map_name": map_name}}
            g[str(b + 1)] = {"class_type": "ActApplyToModel", "inputs": {
                "model": ["1", 0], "transport_map": [str(b), 0], "strength": strength, "start_percent": 0.0,
                "end_percent": 1.0, "steer_negative": False, "per_block": ""}}
            model = [str(b + 1), 0]
        g[str(b + 2)] = {"class_type": "KSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
        g[str(b + 3)] = {"class_type": "VAEDecode", "inputs": {"samples": [str(b + 2), 0], "vae": ["1", 2]}}
        g[str(b + 4)] = {"class_type": "SaveImage", "inputs": {"images": [str(b + 3), 0], "filename_prefix": prefix}}
        saves[prefix], samplers[prefix] = str(b + 4), str(b + 2)
    return g, saves, samplers


def _pixels(server, entry, save_id):
    from PIL import Image

    img = entry["outputs"][save_id]["images"][0]
    with Image.open(server.base / img["type"] / img.get("subfolder", "") / img["filename"]) as im:
        return np.asarray(im.convert("RGB")).copy()


def _cached(entry):
    return {n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1].get("nodes", [])}


def _ok(entry):
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    return entry


def _run_one(server, branch, fresh=True):
    prompt, saves, samplers = _graph([branch])
    entry = _ok(server.run(prompt))
    prefix = branch[2]
    if fresh:
        assert samplers[prefix] not in _cached(entry), "the sampler result came from ComfyUI's cache, not a new run"
    return _pixels(server, entry, saves[prefix])


def test_queued_workflows_and_mixed_graph_each_get_their_own_result(comfy_server, server_maps):
    map_a, map_b = server_maps
    # 1) separate runs of each (ComfyUI's cache keeps only the last prompt's nodes, and every
    #    sampler below is checked to have run anew rather than come from that cache)
    plain = _run_one(comfy_server, (None, 0.0, "rel_plain"))
    sep_a = _run_one(comfy_server, (map_a, 1.0, "rel_a"))
    sep_b = _run_one(comfy_server, (map_b, 1.0, "rel_b"))
    # 2) two workflows with different maps on the same checkpoint, queued back to back
    queued = {}
    ids = []
    for map_name, prefix in ((map_a, "rel_qa"), (map_b, "rel_qb")):
        prompt, saves, samplers = _graph([(map_name, 1.0, prefix)])
        r = comfy_server.post_prompt(prompt)
        assert "prompt_id" in r, r
        ids.append((r["prompt_id"], prefix, saves[prefix], samplers[prefix]))
    for pid, prefix, save_id, sampler_id in ids:
        entry = _ok(comfy_server.wait(pid))
        assert sampler_id not in _cached(entry)
        queued[prefix] = _pixels(comfy_server, entry, save_id)
    # 3) a steered and an unsteered branch in one graph
    prompt, saves, samplers = _graph([(None, 0.0, "rel_mix_plain"), (map_a, 1.0, "rel_mix_a")])
    entry = _ok(comfy_server.run(prompt))
    assert not set(samplers.values()) & _cached(entry)
    mixed = {p: _pixels(comfy_server, entry, s) for p, s in saves.items()}
    assert not np.array_equal(sep_a, plain) and not np.array_equal(sep_b, plain) and not np.array_equal(sep_a, sep_b)
    assert np.array_equal(queued["rel_qa"], sep_a) and np.array_equal(queued["rel_qb"], sep_b)
    assert np.array_equal(mixed["rel_mix_plain"], plain), "the unsteered branch was steered by its neighbour"
    assert np.array_equal(mixed["rel_mix_a"], sep_a)


def test_interrupt_during_steered_sampling_then_plain_and_steered_runs_are_unchanged(comfy_server, server_maps):
    map_a, _ = server_maps
    plain = _run_one(comfy_server, (None, 0.0, "rel_int_plain0"), fresh=False)
    prompt, _, samplers = _graph([(map_a, 1.0, "rel_int_long")], steps=400)
    client = "rel-interrupt"
    ws = comfy_server.websocket(client)
    try:
        r = comfy_server.post_prompt(prompt, client_id=client)
        assert "prompt_id" in r, r
        seen = False
        deadline = time.time() + 120
        while time.time() < deadline and not seen:
            msg = ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                seen = m["type"] == "progress" and m["data"].get("node") == samplers["rel_int_long"] and m["data"]["value"] >= 2
        assert seen, "no progress from the steered KSampler"
    finally:
        ws.close()
    comfy_server.interrupt()
    entry = comfy_server.wait(r["prompt_id"], timeout=120)
    msgs = srv.messages(entry)
    assert "execution_interrupted" in msgs and "execution_success" not in msgs, msgs
    # no hook survived the interrupted steered run: the plain model reproduces its pixels exactly
    assert np.array_equal(_run_one(comfy_server, (None, 0.0, "rel_int_plain1")), plain)
    steered = _run_one(comfy_server, (map_a, 1.0, "rel_int_a"))
    assert not np.array_equal(steered, plain)
    assert not comfy_server.queue_running()


def test_hostile_map_files_fail_clearly_and_the_server_keeps_working(comfy_server, server_maps):
    folder = comfy_server.base / "models" / "act_maps"
    good = (folder / server_maps[0]).read_bytes()
    hostile = {
        "rel_truncated.safetensors": good[: len(good) // 2],
        "rel_garbage.safetensors": b"\xff" * 64,
        "rel_pickle.safetensors": b"\x80\x04\x95" + b"cos\nsystem\n(S'touch /tmp/pwned'\ntR." + b"\x00" * 32,
        "rel_huge_header.safetensors": (2**62).to_bytes(8, "little") + b"{}",
    }
    for name, data in hostile.items():
        (folder / name).write_bytes(data)
    for name in hostile:
        prompt = {"1": {"class_type": "ActLoadMap", "inputs": {"map_name": name}},
                  "2": {"class_type": "ActMapInfo", "inputs": {"transport_map": ["1", 0]}}}
        entry = comfy_server.run(prompt)
        assert entry["status"]["status_str"] == "error", (name, entry["status"])
        err = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
        assert err["node_type"] == "ActLoadMap" and err["exception_type"].endswith("MapFileError"), err
        assert name in err["exception_message"], err["exception_message"]
    for name in hostile:
        (folder / name).unlink()
    # still answering and still sampling correctly
    assert comfy_server.proc.poll() is None
    assert comfy_server.get("/system_stats")
    _run_one(comfy_server, (server_maps[1], 0.5, "rel_after_hostile"))
