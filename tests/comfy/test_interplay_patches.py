"""Steering next to ComfyUI's other model patches: FreeU (V1, V2), Perturbed-Attention Guidance,
Self-Attention Guidance, ModelSamplingDiscrete (LCM / x0, the Lightning / Turbo settings),
TorchCompileModel and the hooks API (hook LoRAs with keyframes on the conditioning).

For each: steering applies (≠ the patch alone), the other patch still applies (≠ steering alone),
the order of the two nodes does not matter, and afterwards nothing is left: no hook, the input
MODEL samples bit for bit as before and its weights are unchanged.
"""

import importlib

import pytest
import torch

import interplay as ip

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def mods(pack):
    return ip.pack_modules()


def _extra(name):
    return importlib.import_module(f"comfy_extras.{name}")


def _run(module, node, **inputs):
    """The first output of a ComfyUI node (V3: ``execute``; V1, as in older ComfyUI: its FUNCTION)."""
    cls = getattr(_extra(module), node)
    if hasattr(cls, "execute"):
        return cls.execute(**inputs).result[0]
    return getattr(cls(), cls.FUNCTION)(**inputs)[0]


PATCHES = {
    "FreeU": lambda m: _run("nodes_freelunch", "FreeU", model=m, b1=1.1, b2=1.2, s1=0.9, s2=0.2),
    "FreeU_V2": lambda m: _run("nodes_freelunch", "FreeU_V2", model=m, b1=1.3, b2=1.4, s1=0.9, s2=0.2),
    "PerturbedAttentionGuidance": lambda m: _run("nodes_pag", "PerturbedAttentionGuidance", model=m, scale=3.0),
    "SelfAttentionGuidance": lambda m: _run("nodes_sag", "SelfAttentionGuidance", model=m, scale=0.5, blur_sigma=2.0),
}


def _check_composition(mods, model, clip, patch, steer, cfg=5.0, **kw):
    kw.setdefault("steps", 2)
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip, cfg=cfg, **kw)
    steered = ip.sample(mods.cc, steer(patch(model)), clip, cfg=cfg, **kw)
    assert torch.equal(steered, ip.sample(mods.cc, patch(steer(model)), clip, cfg=cfg, **kw)), "the node order matters"
    only_patch = ip.sample(mods.cc, patch(model), clip, cfg=cfg, **kw)
    only_steer = ip.sample(mods.cc, steer(model), clip, cfg=cfg, **kw)
    assert ip.max_abs(only_patch, base) > 1e-3, "the other patch has no effect on the tiny model"
    assert ip.max_abs(steered, only_patch) > 1e-2, "steering was lost next to the other patch"
    assert ip.max_abs(steered, only_steer) > 1e-3, "the other patch was lost next to steering"
    ip.assert_clean(mods.cc, model, clip, state, base, cfg=cfg, **kw)
    return steered


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_guidance_and_block_patches_compose_with_hooks_mode(mods, tiny, name):
    model, clip = tiny
    tmap = ip.synthetic_map(ip.unet_norms(model), method="linear")  # band support: every layer hooked
    _check_composition(mods, model, clip, PATCHES[name], lambda m: mods.apply.apply_to_model(m, tmap, 1.0))


@pytest.mark.parametrize("name", ["PerturbedAttentionGuidance"])
def test_guidance_and_block_patches_compose_with_fused_mode(mods, tiny, name):
    model, clip = tiny
    tmap = ip.synthetic_map(ip.unet_norms(model))  # folds completely: weight patches only
    fused = lambda m: mods.apply.apply_to_model(m, tmap, 1.0, mode=mods.apply.FUSED, steer_negative=True)  # noqa: E731
    out = _check_composition(mods, model, clip, PATCHES[name], fused)
    hooked = ip.sample(mods.cc, PATCHES[name](mods.apply.apply_to_model(model, tmap, 1.0, steer_negative=True)), clip,
                       steps=2)
    ip.assert_rounding_close(out, hooked, ip.sample(mods.cc, PATCHES[name](model), clip, steps=2))


@pytest.mark.parametrize("sampling, sampler", [("lcm", "lcm"), ("x0", "euler")])
def test_model_sampling_discrete_for_distilled_models(mods, tiny, sampling, sampler):
    """Lightning / Turbo / LCM graphs: ModelSamplingDiscrete swaps the model's sampling object (an
    object patch); cfg 1, few steps. Hooks and fused mode both follow it, in either order."""
    model, clip = tiny
    msd = lambda m: _run("nodes_model_advanced", "ModelSamplingDiscrete", model=m, sampling=sampling, zsnr=False)  # noqa: E731
    tmap = ip.synthetic_map(ip.unet_norms(model))
    kw = dict(cfg=1.0, steps=2, sampler_name=sampler)
    _check_composition(mods, model, clip, msd, lambda m: mods.apply.apply_to_model(m, tmap, 1.0), **kw)
    fused = ip.sample(mods.cc, msd(mods.apply.apply_to_model(model, tmap, 1.0, mode=mods.apply.FUSED)), clip, **kw)
    hooked = ip.sample(mods.cc, msd(mods.apply.apply_to_model(model, tmap, 1.0)), clip, **kw)
    ip.assert_rounding_close(fused, hooked, ip.sample(mods.cc, msd(model), clip, **kw))
    # the window is read from the sampling object the MODEL has when Apply runs
    windowed = mods.apply.apply_to_model(msd(model), tmap, 1.0, 0.0, 0.5)
    assert ip.max_abs(ip.sample(mods.cc, windowed, clip, **kw), hooked) > 1e-3


def test_torch_compile_model_keeps_steering_exact_and_never_traces_a_hook(mods, tiny):
    """TorchCompileModel, with a recording TorchDynamo backend (the node's own code path; no
    C++ build). TorchDynamo does not guard on forward hooks, so a graph traced with steering
    hooks attached would keep them for the input MODEL and one traced without would ignore them.
    The steered UNet call therefore runs outside the compiled graph: no traced graph holds a
    steered layer, and the result equals uncompiled steering bit for bit, in either node order.
    (Compiling the unsteered tiny UNet takes about a minute on a CPU, so that half is measured
    once, not in the suite: see docs/comfyui.md.)"""
    model, clip = tiny
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    compile_ = lambda m: _run("nodes_torch_compile", "TorchCompileModel", model=m, backend=recording)  # noqa: E731
    tmap = ip.synthetic_map(ip.unet_norms(model), method="linear")
    state = ip.snapshot(model)
    kw = dict(cfg=1.0, steps=2)
    base = ip.sample(mods.cc, model, clip, **kw)
    steered = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0), clip, **kw)
    assert ip.max_abs(steered, base) > 1e-2
    compiled = compile_(mods.apply.apply_to_model(model, tmap, 1.0))
    assert mods.cc.torch_compiled(compiled)
    assert torch.equal(ip.sample(mods.cc, compiled, clip, **kw), steered)
    assert torch.equal(ip.sample(mods.cc, mods.apply.apply_to_model(compile_(model), tmap, 1.0), clip, **kw), steered)
    assert not any("norm" in g for g in graphs), "TorchDynamo traced steered layers"
    ip.assert_clean(mods.cc, model, clip, state, base, **kw)


def test_a_compiled_block_holding_steered_layers_is_refused(mods, tiny):
    """Nodes that compile single blocks (an object patch with a torch.compile'd module): hooks inside
    would be ignored by the compiled graph, so hooks mode refuses with the fix, and leaves nothing."""
    model, clip = tiny
    tmap = ip.synthetic_map(ip.unet_norms(model), method="linear")
    block = model.clone()
    block.add_object_patch("diffusion_model.middle_block", torch.compile(model.model.diffusion_model.middle_block,
                                                                         backend="eager"))
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip, cfg=1.0)
    with pytest.raises(RuntimeError, match="'middle_block' is compiled with torch.compile.*fused"):
        ip.sample(mods.cc, mods.apply.apply_to_model(block, tmap, 1.0), clip, cfg=1.0)
    # a map on layers outside the compiled block passes the check (checked while the block is loaded)
    down = tmap.subset([n for n in tmap.maps if n.startswith("unet.down_blocks.")])
    check = mods.cc.CompiledPartCheck([mods.steering.local_name_map(down, "diffusion_model")[n] for n in down.maps])
    import comfy.model_management

    comfy.model_management.load_models_gpu([block])
    try:
        assert check(model.model.diffusion_model) is None
        assert mods.cc.CompiledPartCheck(["middle_block.1.norm"])(model.model.diffusion_model) == "middle_block"
    finally:
        comfy.model_management.unload_all_models()
    ip.assert_clean(mods.cc, model, clip, state, base, cfg=1.0)


# -- the hooks API: hook LoRAs scheduled with keyframes on the conditioning ----------------------

@pytest.fixture(scope="module")
def hook_lora(comfy_env, tiny_pack, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("hook_loras")
    model, clip = tiny_pack.build(seed=0)
    ip.save_lora(folder / "act_hook_lora.safetensors", ip.tiny_lora(model, clip, seed=2))
    folder_paths.add_model_folder_path("loras", str(folder))
    return "act_hook_lora.safetensors"


def _hooked_clip(clip, lora_name, keyframes=((1.0, 0.0),)):
    """CreateHookLora -> CreateHookKeyframe(s) -> SetHookKeyframes -> SetClipHooks, as in a graph."""
    h = _extra("nodes_hooks")
    hooks = h.CreateHookLora().create_hook(lora_name, 1.0, 1.0)[0]
    kf = None
    for strength, start in keyframes:
        kf = h.CreateHookKeyframe().create_hook_keyframe(strength, start, kf)[0]
    hooks = h.SetHookKeyframes().set_hook_keyframes(hooks, kf)[0]
    return h.SetClipHooks().apply_hooks(clip, schedule_clip=False, apply_to_conds=True, hooks=hooks)[0]


def test_hook_lora_keyframes_compose_with_steering(mods, tiny, hook_lora):
    import nodes

    model, clip = tiny
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip)
    tmap = ip.synthetic_map(ip.unet_norms(model), method="linear")
    hooked_clip = _hooked_clip(clip, hook_lora)
    conds = dict(positive=mods.cc.encode(hooked_clip, ip.POSITIVE), negative=mods.cc.encode(hooked_clip, ip.NEGATIVE))
    assert "hooks" in conds["positive"][0][1], "the conditioning carries no hooks"
    steered = mods.apply.apply_to_model(model, tmap, 1.0)
    out = ip.sample(mods.cc, steered, clip, **conds)
    # a hook LoRA at strength 1 from the start acts as LoraLoader does, next to the steering
    lora_model, lora_clip = nodes.LoraLoader().load_lora(model, clip, hook_lora, 1.0, 1.0)
    loaded = ip.sample(mods.cc, mods.apply.apply_to_model(lora_model, tmap, 1.0), lora_clip)
    ip.assert_rounding_close(out, loaded, ip.sample(mods.cc, steered, clip))
    only_hooks = ip.sample(mods.cc, model, clip, **conds)
    assert ip.max_abs(out, only_hooks) > 1e-2
    # keyframes: the LoRA off after half of the schedule
    half_clip = _hooked_clip(clip, hook_lora, keyframes=((1.0, 0.0), (0.0, 0.5)))
    half = ip.sample(mods.cc, steered, clip, positive=mods.cc.encode(half_clip, ip.POSITIVE),
                     negative=mods.cc.encode(half_clip, ip.NEGATIVE))
    assert ip.max_abs(half, out) > 1e-3 and ip.max_abs(half, ip.sample(mods.cc, steered, clip)) > 1e-3
    # fused mode: the hook LoRA's weights go on top of the folded ones (disjoint layers here)
    fold = ip.synthetic_map(ip.unet_norms(model))
    fused = ip.sample(mods.cc, mods.apply.apply_to_model(model, fold, 1.0, mode=mods.apply.FUSED, steer_negative=True),
                      clip, **conds)
    hooks_mode = ip.sample(mods.cc, mods.apply.apply_to_model(model, fold, 1.0, steer_negative=True), clip, **conds)
    ip.assert_rounding_close(fused, hooks_mode, only_hooks)
    assert not model.hook_patches and not model.hook_backup
    ip.assert_clean(mods.cc, model, clip, state, base)


def test_model_as_lora_hook_with_keyframes_composes_with_steering(mods, tiny, tiny_pack, tmp_path):
    """Create Hook Model as LoRA (another checkpoint's weights as a hook), scheduled by keyframes."""
    import folder_paths

    model, clip = tiny
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    tiny_pack.save_tiny_checkpoint(folder / "act_other.safetensors", seed=5)
    folder_paths.add_model_folder_path("checkpoints", str(folder))
    h = _extra("nodes_hooks")
    hooks = h.CreateHookModelAsLora().create_hook("act_other.safetensors", 0.5, 0.5)[0]
    kf = h.CreateHookKeyframe().create_hook_keyframe(1.0, 0.0)[0]
    kf = h.CreateHookKeyframe().create_hook_keyframe(0.0, 0.6, kf)[0]
    hooks = h.SetHookKeyframes().set_hook_keyframes(hooks, kf)[0]
    hooked_clip = h.SetClipHooks().apply_hooks(clip, schedule_clip=False, apply_to_conds=True, hooks=hooks)[0]
    conds = dict(positive=mods.cc.encode(hooked_clip, ip.POSITIVE), negative=mods.cc.encode(hooked_clip, ip.NEGATIVE))
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip)
    tmap = ip.synthetic_map(ip.unet_norms(model), method="linear")
    steered = mods.apply.apply_to_model(model, tmap, 1.0)
    both = ip.sample(mods.cc, steered, clip, **conds)
    only_hook = ip.sample(mods.cc, model, clip, **conds)
    assert ip.max_abs(only_hook, base) > 1e-2, "the model-as-LoRA hook has no effect"
    assert ip.max_abs(both, only_hook) > 1e-2 and ip.max_abs(both, ip.sample(mods.cc, steered, clip)) > 1e-2
    fused = mods.apply.apply_to_model(model, ip.synthetic_map(ip.unet_norms(model)), 1.0, mode=mods.apply.FUSED,
                                      steer_negative=True)
    assert ip.max_abs(ip.sample(mods.cc, fused, clip, **conds), only_hook) > 1e-2
    assert not model.hook_patches and not model.hook_backup
    ip.assert_clean(mods.cc, model, clip, state, base)
