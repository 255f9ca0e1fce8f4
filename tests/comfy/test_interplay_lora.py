"""LoRAs before and after the Apply nodes, in hooks and fused modes (ComfyUI's own LoraLoader nodes).

Order semantics (docs/comfyui.md, "Compatibility"):
- hooks mode transports a layer's output whatever weights produced it, so a LoRA before or after
  Apply to model gives the same model (bit for bit);
- fused mode folds the map into the weights as the input MODEL loads them: a LoRA before Apply is
  transported with the layer, ``w' = a·(w + Δ)``; a LoRA after Apply adds its patch on top,
  ``w' = a·w + Δ``. The two differ only on layers both touch (LoRAs usually patch linears, maps
  usually norms; a LoRA with trained norms, LyCORIS ``w_norm``/``b_norm``, touches both);
- Apply to CLIP hooks the text encoders' outputs: a CLIP LoRA before or after it, the same encoding.
"""

import json
import logging

import pytest
import torch

import interplay as ip

pytestmark = pytest.mark.comfy

LORA = "act_tiny_lora.safetensors"
NORM_LORA = "act_tiny_norm_lora.safetensors"
#: transformer-block LayerNorms the norm LoRA patches (ComfyUI names below diffusion_model.): norm1 and norm2
#: of every block (the tiny SDXL has 11)
BLOCKS = ["input_blocks.4.1", "input_blocks.5.1", "input_blocks.7.1", "input_blocks.8.1", "middle_block.1"] + [
    f"output_blocks.{i}.1" for i in range(6)]
LORA_NORMS = tuple(f"{b}.transformer_blocks.0.norm{k}" for b in BLOCKS for k in (1, 2))


@pytest.fixture(scope="module")
def mods(pack):
    return ip.pack_modules()


@pytest.fixture(scope="module")
def loras(comfy_env, tiny_pack, tmp_path_factory):
    """Two LoRA files in a ``loras`` folder ComfyUI knows: linears + CLIP, and the same plus trained norms."""
    import folder_paths

    folder = tmp_path_factory.mktemp("loras")
    model, clip = tiny_pack.build(seed=0)
    ip.save_lora(folder / LORA, ip.tiny_lora(model, clip, seed=1))
    ip.save_lora(folder / NORM_LORA, ip.tiny_lora(model, clip, seed=1, norms=LORA_NORMS))
    folder_paths.add_model_folder_path("loras", str(folder))
    return folder


def _lora(model, clip, name, strength=1.0):
    import nodes

    return nodes.LoraLoader().load_lora(model, clip, name, strength, strength)


def _lora_model_only(model, name, strength=1.0):
    import nodes

    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]


def test_the_tiny_lora_loads_completely(mods, tiny, loras, caplog):
    model, clip = tiny
    with caplog.at_level(logging.WARNING):
        m, c = _lora(model, clip, NORM_LORA)
    assert "lora key not loaded" not in caplog.text
    blocks = sum(1 for n, _ in model.model.diffusion_model.named_modules() if n.endswith("transformer_blocks.0"))
    assert blocks == len(BLOCKS)
    assert len(m.patches) == len(ip.UNET_LINEARS) * blocks + 2 * len(LORA_NORMS)
    assert len(c.patcher.patches) == 2 * 3 * 3
    base = ip.sample(mods.cc, model, clip)
    assert ip.max_abs(ip.sample(mods.cc, m, c), base) > 1e-2, "the LoRA has no visible effect"


@pytest.mark.parametrize("loader, method", [("LoraLoader", "linear"), ("LoraLoaderModelOnly", "gaussian")])
def test_hooks_mode_gives_the_same_model_before_and_after_a_lora(mods, tiny, loras, loader, method):
    model, clip = tiny
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip)
    tmap = ip.synthetic_map(ip.unet_norms(model), method=method)
    if loader == "LoraLoader":
        lora = lambda m: _lora(m, clip, NORM_LORA)[0]  # noqa: E731
    else:
        lora = lambda m: _lora_model_only(m, NORM_LORA)  # noqa: E731
    before = ip.sample(mods.cc, mods.apply.apply_to_model(lora(model), tmap, 1.0), clip)
    after = ip.sample(mods.cc, lora(mods.apply.apply_to_model(model, tmap, 1.0)), clip)
    assert torch.equal(before, after)
    only_lora = ip.sample(mods.cc, lora(model), clip)
    only_map = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0), clip)
    assert ip.max_abs(before, only_lora) > 1e-2 and ip.max_abs(before, only_map) > 1e-2
    ip.assert_clean(mods.cc, model, clip, state, base)


def _loaded(model, name):
    """(weight, bias) of UNet module ``name`` while ComfyUI has ``model`` loaded (its patches written in)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    m = model.model.diffusion_model.get_submodule(name)
    return m.weight.detach().clone(), m.bias.detach().clone()


def _fold(tmap, name, strength=1.0):
    """``(a, c)`` of the per-unit map on ComfyUI module ``name``: T(y) = a·y + c."""
    from act_core.diffusion.families.sdxl import from_comfy

    return tmap[from_comfy(f"diffusion_model.{name}")].coefficients(strength, torch.float32, torch.device("cpu"))


def test_fused_mode_folds_a_lora_before_it_and_adds_a_lora_after_it(mods, tiny, loras):
    model, clip = tiny
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip)
    tmap = ip.synthetic_map(ip.unet_norms(model))  # support 'all', per-unit layouts: every norm folds
    fused = dict(mode=mods.apply.FUSED, steer_negative=True)
    lora_model = _lora(model, clip, NORM_LORA)[0]
    before = mods.apply.apply_to_model(lora_model, tmap, 1.0, **fused)
    after = _lora(mods.apply.apply_to_model(model, tmap, 1.0, **fused), clip, NORM_LORA)[0]
    for name in LORA_NORMS[::7]:
        a, c = _fold(tmap, name)
        w, b = state[f"diffusion_model.{name}.weight"], state[f"diffusion_model.{name}.bias"]
        dw, db = (lora_model.patches[f"diffusion_model.{name}.{p}"][0][1][1][0] for p in ("weight", "bias"))
        wb, bb = _loaded(before, name)
        torch.testing.assert_close(wb, a * (w + dw), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bb, a * (b + db) + c, rtol=1e-6, atol=1e-6)
        wa, ba = _loaded(after, name)
        torch.testing.assert_close(wa, a * w + dw, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ba, a * b + c + db, rtol=1e-6, atol=1e-6)
    # sampled: LoRA-before fused equals hooks on the LoRA'd model (to float32 rounding) ...
    fb = ip.sample(mods.cc, before, clip)
    hb = ip.sample(mods.cc, mods.apply.apply_to_model(lora_model, tmap, 1.0, steer_negative=True), clip)
    ip.assert_rounding_close(fb, hb, ip.sample(mods.cc, lora_model, clip))
    # ... and the order shows where the LoRA and the map share layers
    assert ip.max_abs(ip.sample(mods.cc, after, clip), fb) > 1e-3
    ip.assert_clean(mods.cc, model, clip, state, base)


def test_fused_mode_commutes_with_a_lora_on_other_layers(mods, tiny, loras):
    """A LoRA on linears only (the usual case) and a map on norms: the same weight patches in either order."""
    model, clip = tiny
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip, cfg=1.0)
    tmap = ip.synthetic_map(ip.unet_norms(model))
    before = mods.apply.apply_to_model(_lora_model_only(model, LORA), tmap, 1.0, mode=mods.apply.FUSED)
    after = _lora_model_only(mods.apply.apply_to_model(model, tmap, 1.0, mode=mods.apply.FUSED), LORA)
    assert set(before.patches) == set(after.patches)
    out = ip.sample(mods.cc, before, clip, cfg=1.0)
    assert torch.equal(out, ip.sample(mods.cc, after, clip, cfg=1.0))
    assert ip.max_abs(out, base) > 1e-2
    ip.assert_clean(mods.cc, model, clip, state, base, cfg=1.0)


def test_clip_lora_before_and_after_apply_to_clip(mods, tiny, loras):
    model, clip = tiny
    tmap = ip.clip_layer_map(clip)
    enc = lambda c: mods.cc.encode(c, ip.POSITIVE)[0]  # noqa: E731
    plain = enc(clip)
    before_c = mods.apply.apply_to_clip(_lora(model, clip, LORA)[1], tmap, 1.0)
    after_c = _lora(model, mods.apply.apply_to_clip(clip, tmap, 1.0), LORA)[1]
    before, after = enc(before_c), enc(after_c)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1]["pooled_output"], after[1]["pooled_output"])
    only_lora, only_map = enc(_lora(model, clip, LORA)[1]), enc(mods.apply.apply_to_clip(clip, tmap, 1.0))
    assert ip.max_abs(before[0], only_lora[0]) > 1e-3 and ip.max_abs(before[0], only_map[0]) > 1e-3
    again = enc(clip)
    assert torch.equal(again[0], plain[0]) and torch.equal(again[1]["pooled_output"], plain[1]["pooled_output"])
    from act_core import count_hooks

    assert count_hooks(clip.cond_stage_model) == 0


# -- the same graphs queued on a real server ----------------------------------------------------

def _graph(lora_first: bool, mode: str, prefix: str, first_id: int):
    """Checkpoint -> [LoraLoader -> Apply | Apply -> LoraLoader] -> KSampler -> SaveLatent; the CLIP goes
    through LoraLoader and Apply to CLIP in the same order."""
    i = first_id
    ids = {k: str(i + n) for n, k in enumerate(["lora", "apply", "aclip", "pos", "neg", "ks", "save"])}
    g = {}
    apply = {"class_type": "ActApplyToModel", "inputs": {
        "transport_map": ["1", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "steer_negative": True,
        "per_block": "", "mode": mode, "window": "percent of denoising"}}
    aclip = {"class_type": "ActApplyToClip", "inputs": {"transport_map": ["2", 0], "strength": 1.0}}
    lora = {"class_type": "LoraLoader", "inputs": {"lora_name": NORM_LORA, "strength_model": 1.0, "strength_clip": 1.0}}
    if lora_first:
        lora["inputs"].update(model=["0", 0], clip=["0", 1])
        apply["inputs"]["model"] = [ids["lora"], 0]
        aclip["inputs"]["clip"] = [ids["lora"], 1]
        model_out, clip_out = [ids["apply"], 0], [ids["aclip"], 0]
    else:
        apply["inputs"]["model"] = ["0", 0]
        aclip["inputs"]["clip"] = ["0", 1]
        lora["inputs"].update(model=[ids["apply"], 0], clip=[ids["aclip"], 0])
        model_out, clip_out = [ids["lora"], 0], [ids["lora"], 1]
    g[ids["lora"]], g[ids["apply"]], g[ids["aclip"]] = lora, apply, aclip
    g[ids["pos"]] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_out, "text": ip.POSITIVE}}
    g[ids["neg"]] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_out, "text": ip.NEGATIVE}}
    g[ids["ks"]] = {"class_type": "KSampler", "inputs": {
        "model": model_out, "positive": [ids["pos"], 0], "negative": [ids["neg"], 0], "latent_image": ["3", 0],
        "seed": 5, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g[ids["save"]] = {"class_type": "SaveLatent", "inputs": {"samples": [ids["ks"], 0], "filename_prefix": prefix}}
    return g


def test_lora_before_and_after_apply_through_the_server(comfy_server, tiny_pack):
    import safetensors.torch

    from conftest import TINY

    base = comfy_server.base
    model, clip = tiny_pack.build(seed=0)
    (base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    ip.save_lora(base / "models" / "loras" / NORM_LORA, ip.tiny_lora(model, clip, seed=1, norms=LORA_NORMS))
    (base / "models" / "act_maps").mkdir(parents=True, exist_ok=True)
    ip.synthetic_map(ip.unet_norms(model)).save(base / "models" / "act_maps" / "interplay_unet.safetensors")
    ip.clip_layer_map(clip).save(base / "models" / "act_maps" / "interplay_clip.safetensors")
    prompt = {
        "0": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY}},
        "1": {"class_type": "ActLoadMap", "inputs": {"map_name": "interplay_unet.safetensors"}},
        "2": {"class_type": "ActLoadMap", "inputs": {"map_name": "interplay_clip.safetensors"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    runs = {("hooks", True): "lora_hooks_before", ("hooks", False): "lora_hooks_after",
            ("fused (weight patches)", True): "lora_fused_before", ("fused (weight patches)", False): "lora_fused_after"}
    for k, ((mode, first), prefix) in enumerate(runs.items()):
        prompt.update(_graph(first, mode, prefix, 10 * (k + 1)))
    prompt.update(_graph(True, "hooks", "lora_only", 60))
    prompt["61"]["inputs"]["strength"] = prompt["62"]["inputs"]["strength"] = 0.0
    runs[None] = "lora_only"
    entry = comfy_server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    assert "lora key not loaded" not in comfy_server.log()
    out = {}
    for prefix in runs.values():
        files = sorted((base / "output").glob(f"{prefix}_*.latent"))
        out[prefix] = safetensors.torch.load_file(str(files[-1]))["latent_tensor"]
    assert torch.equal(out["lora_hooks_before"], out["lora_hooks_after"])
    ip.assert_rounding_close(out["lora_fused_before"], out["lora_hooks_before"], out["lora_only"])
    assert ip.max_abs(out["lora_fused_after"], out["lora_fused_before"]) > 10 * ip.rounding_limit(out["lora_fused_before"])
