"""Low-precision weights: float16, bfloat16 and float8 UNets (the diffusion model loader's
``weight_dtype``, ``--fp16-unet`` / ``--bf16-unet``, half-precision checkpoints).

ComfyUI stores the weights in that dtype and computes either in it (a GPU that supports it) or
in a wider "manual cast" dtype (float32 on a CPU). Steering transports the activations in their
own dtype (float16: saturating at ±65504, the coefficients in float32 when they would overflow);
fused mode folds into float16 / bfloat16 weights at their precision and keeps float8 layers hooked.
"""

import logging

import pytest
import torch

import interplay as ip

pytestmark = pytest.mark.comfy

UNET = "act_tiny_unet.safetensors"
LAYER = "middle_block.1.transformer_blocks.0.norm1"  # a LayerNorm; its output is attn1's input
CASES = {  # name: (weight dtype, computes natively in it)
    "float16 (manual cast to float32)": (torch.float16, False),
    "float16 (computes in float16)": (torch.float16, True),
    "bfloat16 (computes in bfloat16)": (torch.bfloat16, True),
    "fp8_e4m3fn": (torch.float8_e4m3fn, False),
    "fp8_e5m2": (torch.float8_e5m2, False),
}


@pytest.fixture(scope="module")
def mods(pack):
    return ip.pack_modules()


@pytest.fixture(scope="module")
def unet_file(comfy_env, tiny_pack, tmp_path_factory):
    """The tiny UNet as a diffusion-model file (what UNETLoader / 'Load Diffusion Model' reads)."""
    import folder_paths
    import safetensors.torch

    folder = tmp_path_factory.mktemp("diffusion_models")
    model, _ = tiny_pack.build(seed=0)
    sd = {k[len("diffusion_model."):]: v.contiguous() for k, v in model.model.state_dict().items()
          if k.startswith("diffusion_model.")}
    safetensors.torch.save_file(sd, str(folder / UNET))
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    return UNET


def _load(name, dtype, native, monkeypatch):
    """float8 through the UNETLoader node's weight_dtype; float16/bfloat16 as --fp16-unet/--bf16-unet
    load them; ``native``: ComfyUI computes in the weight dtype (as on a GPU that supports it)."""
    import comfy.model_management
    import comfy.sd
    import folder_paths
    import nodes

    if native:
        monkeypatch.setattr(comfy.model_management, "unet_manual_cast", lambda *a, **k: None)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        model = nodes.UNETLoader().load_unet(name, str(dtype).replace("torch.float8", "fp8"))[0]
    else:
        model = comfy.sd.load_diffusion_model(folder_paths.get_full_path_or_raise("diffusion_models", name),
                                              model_options={"dtype": dtype})
    monkeypatch.undo()
    return model


class _First:
    """The first input a module receives while attached (a forward pre-hook)."""

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.value is None:
            self.value = args[0].detach().clone()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _layer_output(mods, model, clip, tmap=None):
    """``LAYER``'s output at the first UNet call, unsteered or steered with ``tmap``."""
    attn1 = model.model.diffusion_model.get_submodule(LAYER.replace("norm1", "attn1"))
    m = model if tmap is None else mods.apply.apply_to_model(model, tmap, 1.0)
    with _First(attn1) as first:
        ip.sample(mods.cc, m, clip, cfg=1.0, steps=1)
    return first.value


@pytest.mark.parametrize("case", list(CASES))
def test_steering_on_low_precision_weights(mods, tiny, unet_file, monkeypatch, case, caplog):
    dtype, native = CASES[case]
    _, clip = tiny
    model = _load(unet_file, dtype, native, monkeypatch)
    unet = model.model.diffusion_model
    assert unet.get_submodule(LAYER).weight.dtype == dtype
    compute = dtype if native else torch.float32
    norms = ip.unet_norms(model)
    one = ip.synthetic_map({n: m for n, m in norms.items() if n.endswith("mid_block.attentions.0.transformer_blocks.0.norm1")})
    assert len(one) == 1
    # the transport runs in the activations' dtype, to its rounding: T(x) = a x + c on the layer's output
    x = _layer_output(mods, model, clip)
    y = _layer_output(mods, model, clip, one)
    assert x.dtype == y.dtype == compute
    a, c = one[next(iter(one.maps))].coefficients(1.0, torch.float64, torch.device("cpu"))
    expected = x.double() * a + c
    ulp = torch.finfo(compute).eps * expected.abs().clamp_min(1.0)
    assert ((y.double() - expected).abs() <= 2 * ulp).all()
    if compute == torch.float16:  # an offset past float16's range saturates instead of becoming inf
        huge = ip.synthetic_map({n: norms[n] for n in one.maps}, shift=1e6)
        assert _layer_output(mods, model, clip, huge).abs().max().item() == 65504.0
    # whole sampling: hooks and fused mode
    tmap = ip.synthetic_map(norms)
    state = ip.snapshot(model)
    kw = dict(cfg=1.0, steps=2)
    base = ip.sample(mods.cc, model, clip, **kw)
    hooked = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0), clip, **kw)
    assert torch.isfinite(hooked).all() and ip.max_abs(hooked, base) > 1.0
    with caplog.at_level(logging.INFO, logger="act_steering"):
        fused_model = mods.apply.apply_to_model(model, tmap, 1.0, mode=mods.apply.FUSED)
    fused = ip.sample(mods.cc, fused_model, clip, **kw)
    if dtype.itemsize == 1:  # float8: every layer stays hooked, so fused mode is hooks mode
        assert not fused_model.patches
        assert f"0 of {len(tmap)} UNet layers fused as weight patches, {len(tmap)} hooked" in caplog.text
        assert "stored in float8" in caplog.text
        assert torch.equal(fused, hooked)
    else:  # folded at the weights' own precision
        assert len(fused_model.patches) == 2 * len(tmap)
        assert ip.max_abs(fused, hooked) < torch.finfo(dtype).eps * hooked.abs().max().item()
    ip.assert_clean(mods.cc, model, clip, state, base, **kw)


def test_a_half_precision_checkpoint(mods, comfy_env, tiny_pack, tmp_path):
    """A float16 checkpoint through CheckpointLoaderSimple's loader (on a CPU ComfyUI computes it in float32)."""
    import comfy.sd

    model, clip = tiny_pack.build(seed=0)
    for p in list(model.model.parameters()) + list(clip.cond_stage_model.parameters()):
        p.data = p.data.half()
    path = tmp_path / "tiny_fp16.safetensors"
    comfy.sd.save_checkpoint(str(path), model, clip=clip)
    loaded, lclip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False)
    assert loaded.model.diffusion_model.out[0].weight.dtype == torch.float32  # CPU: loaded as float32
    tmap = ip.synthetic_map(ip.unet_norms(loaded))
    base = ip.sample(mods.cc, loaded, lclip, cfg=1.0)
    hooked = ip.sample(mods.cc, mods.apply.apply_to_model(loaded, tmap, 1.0), lclip, cfg=1.0)
    fused = ip.sample(mods.cc, mods.apply.apply_to_model(loaded, tmap, 1.0, mode=mods.apply.FUSED), lclip, cfg=1.0)
    ip.assert_rounding_close(fused, hooked, base)
