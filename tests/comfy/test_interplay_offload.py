"""Partial loading (--lowvram / --novram): steering on layers ComfyUI keeps offloaded.

With too little VRAM ComfyUI loads part of the UNet and marks the rest "lowvram": those layers
cast their weights to the compute device at every call and apply weight patches (LoRAs, fused
mode's folds) on the fly (``LowVramPatch``). On a CPU the load device has no VRAM budget, so the
tests give every load the budget the flags would: ``--novram`` 0.1 byte (every layer offloaded),
``--lowvram`` a part of the model. Hooks still fire on offloaded layers, fused mode's patches are
applied by the offload path, the results equal a full load bit for bit, and nothing stays
patched (no weight function, no hook) afterwards.
"""

import logging

import pytest
import torch

import interplay as ip

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def mods(pack):
    return ip.pack_modules()


@pytest.fixture()
def vram(monkeypatch):
    """``vram["budget"] = bytes`` makes every model load partial, as ComfyUI does with that much VRAM
    free: it asks a model for the budget minus what it has loaded already (0.1 byte at least)."""
    import comfy.model_management as mm

    vram = {"budget": None}
    original = mm.LoadedModel.model_load

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        if vram["budget"] is not None:
            lowvram_model_memory = max(0.1, vram["budget"] - self.model_loaded_memory())
        return original(self, lowvram_model_memory, force_patch_weights)

    monkeypatch.setattr(mm.LoadedModel, "model_load", model_load)
    yield vram
    mm.unload_all_models()


def _lowvram_patches(model):
    """Weight patches the loaded UNet applies on the fly, at each call of an offloaded layer."""
    import comfy.model_patcher

    return sum(isinstance(f, comfy.model_patcher.LowVramPatch) for m in model.model.diffusion_model.modules()
               for f in (getattr(m, "weight_function", None) or []) + (getattr(m, "bias_function", None) or []))


def _offloaded(model):
    """UNet module names ComfyUI runs with weights cast at each call (the lowvram path)."""
    return {n for n, m in model.model.diffusion_model.named_modules() if getattr(m, "comfy_cast_weights", False)}


@pytest.mark.parametrize("flag", ["--novram", "--lowvram"])
def test_hooks_and_fused_mode_on_offloaded_layers(mods, tiny, vram, flag, caplog):
    model, clip = tiny
    size = model.model_size()
    budget = 0.1 if flag == "--novram" else size / 2
    tmap = ip.synthetic_map(ip.unet_norms(model))
    band = ip.synthetic_map(ip.unet_norms(model), method="linear")
    state = ip.snapshot(model)
    runs = {
        "plain": lambda: model,
        "hooks": lambda: mods.apply.apply_to_model(model, band, 1.0),
        "fused": lambda: mods.apply.apply_to_model(model, tmap, 1.0, mode=mods.apply.FUSED, steer_negative=True),
    }
    full = {k: ip.sample(mods.cc, make(), clip) for k, make in runs.items()}
    import comfy.model_management

    comfy.model_management.unload_all_models()  # from here on, as if ComfyUI had started with the flag
    vram["budget"] = budget
    steered_layers = {mods.steering.local_name_map(tmap, "diffusion_model")[n] for n in tmap.maps}
    for k, make in runs.items():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            m = make()
            out = ip.sample(mods.cc, m, clip)
        assert "loaded partially" in caplog.text
        offloaded = _offloaded(model)
        if flag == "--novram":
            assert steered_layers <= offloaded, "every steered layer runs offloaded"
        else:
            assert steered_layers & offloaded and offloaded != {n for n, _ in model.model.diffusion_model.named_modules()}
        patched = _lowvram_patches(model)
        if k == "fused":  # the folds reach the offloaded layers as lowvram weight patches
            keys = {key.rsplit(".", 1)[0][len("diffusion_model."):] for key in m.patches}
            assert patched == 2 * len(keys & offloaded) > 0, patched
        else:
            assert patched == 0, patched
        assert torch.equal(out, full[k]), f"{k} differs from a full load"
    assert ip.max_abs(full["hooks"], full["plain"]) > 1e-2 and ip.max_abs(full["fused"], full["plain"]) > 1e-2
    # still partially loaded: the input MODEL afterwards, offloaded and fully loaded
    assert torch.equal(ip.sample(mods.cc, model, clip), full["plain"])
    vram["budget"] = None
    ip.assert_clean(mods.cc, model, clip, state, full["plain"])
