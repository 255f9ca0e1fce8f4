"""The promise of canonical names, for every family: the same tiny weights in diffusers and in
ComfyUI 0.3.75 (loaded by ComfyUI's own loaders); a map fitted in diffusers, saved and loaded by
the Load map node, or fitted by the Fit node and loaded in diffusers, is applied in each
framework through its own name translation (Apply to model / Apply to CLIP in ComfyUI), and the
two steered outputs agree up to float rounding.

Denoisers are compared on identical inputs (latent, timestep, text context, pooled vector,
guidance) through ComfyUI's ``apply_model`` (what a sampler step calls); text encoders on the
token ids ComfyUI's own tokenizers give.
"""

from pathlib import Path

import pytest
import torch

from act_core import count_hooks
from act_core.diffusion import pipeline as D
from act_core.hooks import steer
from act_core.mapfile import TransportMap

import tiny_families as TF
from diffusers_helpers import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd15_pipeline, tiny_sdxl_comfy_pipeline

pytestmark = pytest.mark.comfy

SIZE = dict(height=32, width=32)
BUILD = {"sd15": tiny_sd15_pipeline, "sd2": lambda: tiny_sd15_pipeline(sd2=True), "sdxl": tiny_sdxl_comfy_pipeline,
         "sd3": lambda: tiny_sd3_pipeline(t5=False), "flux": tiny_flux_pipeline, "flux-dev": lambda: tiny_flux_pipeline(dev=True)}
TEXT = {"sd15": ["text_encoder"], "sd2": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"],
        "sd3": ["text_encoder", "text_encoder_2"], "flux": ["text_encoder", "text_encoder_2"], "flux-dev": ["text_encoder_2"]}


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def both(tiny_pack):
    """{key: (diffusers pipeline, ComfyUI MODEL, ComfyUI CLIP)} holding the same weights."""
    out = {}
    for key, build in BUILD.items():
        pipe = build()
        model, clip = TF.comfy_from_diffusers(pipe)
        out[key] = (pipe, model, clip)
    return out


def _close(a, b, scale, tol=1e-4):
    """Equal up to float32 rounding of two implementations (different kernels and batching);
    every caller also checks that the steering effect is 100x larger than ``tol``."""
    return (a - b).abs().max().item() <= tol * max(1.0, scale)


def _run_capturing(call, capture):
    """Run ``call()`` and return (a copy of) ``capture``'s output."""
    out = {}

    def hook(module, args, output):
        out.setdefault("x", (output[0] if isinstance(output, tuple) else output).clone())

    h = capture.register_forward_hook(hook)
    try:
        with torch.no_grad():
            call()
    finally:
        h.remove()
    return out["x"]


def _encode_diffusers(encoder, ids, capture):
    return _run_capturing(lambda: encoder(input_ids=ids), capture)


# -- through the nodes: Load map / Fit / Apply to model / Apply to CLIP ----------------------------

TOKENS = {"clip_l": "l", "clip_g": "g", "clip_h": "h", "t5xxl": "t5xxl"}


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import apply, comfy_compat, files, fit, prompts

    return type("Mods", (), dict(apply=apply, cc=comfy_compat, files=files, fit=fit, prompts=prompts))


def _continuous(tmap):
    """The same maps with support "all": continuous in the activations. A band support (the
    Linear-AcT default, q_0_100) switches a unit's map on or off at the band's edges, so two
    implementations that differ by float rounding can land on different sides of an edge; the
    name translation is compared on the continuous maps."""
    from act_core.transport import UnitTransport

    out = TransportMap(meta={**tmap.meta, "default_support": "all"})
    for n, t in tmap.maps.items():
        out.add(n, UnitTransport(t.omega, t.beta, t.bands, t.flags, t.method, "all"), tmap.layouts[n], tmap.output_index[n])
    return out


def _steered_both(pipe, model, tmap, mods, inp):
    """(diffusers steered, ComfyUI steered through the Apply node) denoiser outputs on ``inp``."""
    fam = D.family_of(pipe)
    with steer(fam.module_tree(pipe), tmap, strength=1.0):
        d = TF.denoise_diffusers(pipe, model, inp)
    patched = mods.apply.apply_to_model(model, tmap, 1.0)
    return d, TF.denoise_comfy(patched, pipe, inp)


@pytest.mark.parametrize("key", list(BUILD))
def test_fit_in_diffusers_load_and_apply_in_comfyui_and_the_other_way(both, mods, key, comfy_env):
    pipe, model, clip = both[key]
    fam = D.family_of(pipe)
    inp = TF.inputs(pipe, seed=2)
    base_d, base_c = TF.denoise_diffusers(pipe, model, inp), TF.denoise_comfy(model, pipe, inp)
    scale = base_d.abs().max().item()
    # diffusers -> file -> ComfyUI's Load map -> Apply to model
    fitted = D.fit_style_map(pipe, "watercolor", n=4, batch_size=4, **SIZE)
    saved = Path(mods.files.save_map(fitted, f"from_diffusers_{key}"))
    loaded = mods.files.load_map(saved.name)
    banded = TF.denoise_comfy(mods.apply.apply_to_model(model, loaded, 1.0), pipe, inp)
    assert (banded - base_c).abs().max().item() > 1e-2  # the map as fitted steers ComfyUI
    d, c = _steered_both(pipe, model, _continuous(loaded), mods, inp)
    assert (d - base_d).abs().max().item() > 1e-2 and _close(d, c, scale), (d - c).abs().max()
    assert count_hooks(model.model) == 0 and torch.equal(TF.denoise_comfy(model, pipe, inp), base_c)
    # ComfyUI's Fit node -> file -> diffusers
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    with torch.inference_mode():
        from_comfy = mods.fit.fit(model, clip, pairs, "Linear-AcT", "paper default", "", "method default",
                                  "simultaneous", 0, 64, 64, 4)
    assert from_comfy.architecture == fam.name and from_comfy.modules == fitted.modules  # canonical names
    path = mods.files.save_map(from_comfy, f"from_comfyui_{key}")
    reloaded = TransportMap.load(path)
    d, c = _steered_both(pipe, model, _continuous(reloaded), mods, inp)
    assert (d - base_d).abs().max().item() > 1e-2 and _close(d, c, scale), (d - c).abs().max()


def _ids(clip, text, te):
    tokens = clip.tokenize(text)[TOKENS[te.comfy]]
    return torch.tensor([[t[0] for t in tokens[0]]])


@pytest.mark.parametrize("key", list(BUILD))
def test_text_encoder_maps_through_apply_to_clip(both, mods, key):
    """Apply to CLIP reaches every text encoder (CLIP-L/G/H and T5): the ComfyUI encoding of a
    prompt, steered by a diffusers-fitted map, equals transformers' on the same token ids."""
    pipe, _, clip = both[key]
    fam = D.family_of(pipe)
    layers = {"clip": r"{}\.encoder\.layers\.[01]", "t5": r"{}\.encoder\.block\.[01]"}
    text = "a lighthouse on a cliff"
    for canon in TEXT[key]:
        te = fam.text_encoders[canon]
        tmap = D.fit_style_map(pipe, "anime", n=4, layers=[layers[te.kind].format(canon)], batch_size=4, **SIZE)
        steered_clip = mods.apply.apply_to_clip(clip, tmap, 1.0)
        final = f"{canon}.final_layer_norm" if te.kind == "clip" else f"{canon}.encoder.final_layer_norm"
        c_final = clip.cond_stage_model.get_submodule(fam.to_comfy(final))
        ids = _ids(clip, text, te)
        base_c = _run_capturing(lambda: mods.cc.encode(clip, text), c_final)
        steered_c = _run_capturing(lambda: mods.cc.encode(steered_clip, text), c_final)
        d_final = fam.module(pipe, final)
        encoder = getattr(pipe, canon)
        base_d = _encode_diffusers(encoder, ids, d_final)
        with steer(fam.module_tree(pipe), tmap, strength=1.0):
            steered_d = _encode_diffusers(encoder, ids, d_final)
        scale = base_d.abs().max().item()
        assert _close(base_c, base_d, scale), (canon, (base_c - base_d).abs().max())
        assert (steered_d - base_d).abs().max().item() > 1e-2, canon
        assert _close(steered_c, steered_d, scale), (canon, (steered_c - steered_d).abs().max())
        assert torch.equal(_run_capturing(lambda: mods.cc.encode(clip, text), c_final), base_c)  # input CLIP untouched


def test_sd3_shift_and_flux_guidance_inputs(both, mods, comfy_env):
    """SD3's shift (ModelSamplingSD3) leaves the collection step at sigma 1, so the fit is the
    same; FLUX.1-dev's guidance input reaches the collection pass (schnell has none)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    args = ("Linear-AcT", "paper default", "", "method default", "simultaneous", 0, 64, 64, 4)
    _, sd3_model, sd3_clip = both["sd3"]
    shifted = ModelSamplingSD3().patch(sd3_model, 6.0)[0]
    with torch.inference_mode():
        a = mods.fit.fit(sd3_model, sd3_clip, pairs, *args)
        b = mods.fit.fit(shifted, sd3_clip, pairs, *args)
    assert all(torch.allclose(a[n].beta, b[n].beta, atol=1e-5) for n in a.maps)
    _, dev, dev_clip = both["flux-dev"]
    _, schnell, schnell_clip = both["flux"]
    with torch.inference_mode():
        g1 = mods.fit.fit(dev, dev_clip, pairs, *args, guidance=1.0)
        g4 = mods.fit.fit(dev, dev_clip, pairs, *args, guidance=4.0)
        s1 = mods.fit.fit(schnell, schnell_clip, pairs, *args, guidance=1.0)
        s4 = mods.fit.fit(schnell, schnell_clip, pairs, *args, guidance=4.0)
    assert g1.meta["collection"]["guidance"] == 1.0 and s1.meta["collection"]["guidance"] is None
    assert any(not torch.allclose(g1[n].beta, g4[n].beta, atol=1e-5) for n in g1.maps)
    assert all(torch.equal(s1[n].beta, s4[n].beta) for n in s1.maps)


def test_maps_of_another_family_are_refused_by_the_nodes(both, mods):
    from act_core.mapfile import MapFileError

    flux_map = D.fit_style_map(both["flux"][0], "anime", n=4, batch_size=4, **SIZE)
    for key in ("sd3", "sdxl", "sd15"):
        with pytest.raises(MapFileError, match=r"fitted on FLUX\.1 .* but the connected model is"):
            mods.apply.apply_to_model(both[key][1], flux_map, 1.0)
    t5 = D.fit_style_map(both["flux"][0], "anime", n=4, layers="t5_blocks", batch_size=4, **SIZE)
    with pytest.raises(MapFileError, match="only text-encoder layers"):
        mods.apply.apply_to_model(both["flux"][1], t5, 1.0)
    with pytest.raises(MapFileError, match=r"fitted on FLUX\.1"):
        mods.apply.apply_to_clip(both["sd3"][2], t5, 1.0)
    with pytest.raises(ValueError, match="CLIP is SD3.5's but the model is FLUX.1"):
        mods.fit.fit(both["flux"][1], both["sd3"][2], mods.prompts.build_pairs("style: anime", 2, 0), "Linear-AcT",
                     "paper default", "", "method default", "simultaneous", 0, 64, 64)
    with pytest.raises(ValueError, match="SDXL has no 't5' layers"):
        mods.fit.fit(both["sdxl"][1], both["sdxl"][2], mods.prompts.build_pairs("style: anime", 2, 0), "Linear-AcT",
                     "T5 blocks", "", "method default", "simultaneous", 0, 64, 64)


@pytest.mark.parametrize("key", ["sd3", "flux"])
def test_strength_sweep_and_info_on_transformer_families(both, mods, key, pack, tiny_pack):
    """The Strength sweep node on SD3 and FLUX (16-channel latents, flow models): λ = 0 is
    KSampler's image bit for bit, λ = 1 differs; the Info node names the family."""
    import comfy.sd
    import comfy.taesd.taesd

    from act_steering_pack.nodes import info, sweep

    pipe, model, clip = both[key]
    cc = mods.cc
    taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    tiny_pack.init_weights(taesd, 3)  # ComfyUI's layers skip initialisation
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    tmap = D.fit_style_map(pipe, "anime", n=4, batch_size=4, **SIZE)
    pos, neg = cc.encode(clip, "a cat"), cc.encode(clip, "")
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    with torch.inference_mode():
        out = sweep.StrengthSweep.execute(model, tmap, pos, neg, latent, vae, "0, 1", 5, 2, 1.0, "euler", "simple", 2)
        plain = cc.decode(vae, cc.sample(model, pos, neg, latent["samples"], 5, 2, 1.0, "euler", "simple"))
    _, imgs = out.result
    assert torch.equal(imgs[0:1], plain) and not torch.equal(imgs[1:2], plain)
    assert f"architecture: {D.family_of(pipe).title}" in info.describe(tmap)


def test_fused_mode_on_flux_equals_hooks(both, mods):
    """Fused mode (weight patches) on FLUX: the attention output projections fold into their
    weights, the stream outputs and the affine-free LayerNorms keep hooks; the result equals
    hooks mode (both steer both CFG halves here)."""
    import comfy.model_management

    pipe, model, _ = both["flux"]
    tmap = _continuous(D.fit_style_map(pipe, "anime", n=4, layers=["transformer_attention_outputs", "transformer_norms",
                                                                   "transformer_paper"], batch_size=4, **SIZE))
    inp = TF.inputs(pipe)
    base = TF.denoise_comfy(model, pipe, inp)
    hooked = TF.denoise_comfy(mods.apply.apply_to_model(model, tmap, 1.0, steer_negative=True), pipe, inp)
    fused_model = mods.apply.apply_to_model(model, tmap, 1.0, steer_negative=True, mode=mods.apply.FUSED)
    assert len(fused_model.patches) == 2 * 2  # to_out.0 and to_add_out of the one double block: weight + bias
    comfy.model_management.load_models_gpu([fused_model])
    fused = TF.denoise_comfy(fused_model, pipe, inp)
    assert (hooked - base).abs().max() > 1e-2 and (fused - hooked).abs().max() < 1e-4 * max(1.0, hooked.abs().max().item())
    comfy.model_management.load_models_gpu([model])
    assert torch.equal(TF.denoise_comfy(model, pipe, inp), base)


def test_sd3_denoiser_file_loads_in_diffusers(both, tmp_path):
    """An original-layout file that holds only the denoiser (as SD3.5's and FLUX.1's releases),
    here written from ComfyUI's MMDiT, loads in diffusers with a local folder for the rest and
    equals the pipeline's own transformer. (diffusers' FLUX converter assumes the real widths,
    so the tiny FLUX cannot take this path.)"""
    from safetensors.torch import save_file

    pipe, model, _ = both["sd3"]
    pipe.save_pretrained(tmp_path / "sd3")
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    save_file(sd, str(tmp_path / "sd3_transformer.safetensors"))
    single = D.load_pipeline(tmp_path / "sd3_transformer.safetensors", config=tmp_path / "sd3", device="cpu")
    assert single.act_defaults["family"] == "sd3"
    a, b = pipe.transformer.state_dict(), single.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sd3_with_torch_compile_is_refused_with_the_fix(both, mods):
    """SD3's MMDiT runs no DIFFUSION_MODEL wrappers in 0.3.75, so its steering wraps apply_model,
    outside which a TorchCompileModel graph would run: refused in either node order, nothing compiled."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    pipe, model, _ = both["sd3"]
    tmap = D.fit_style_map(pipe, "anime", n=4, batch_size=4, **SIZE)
    inp = TF.inputs(pipe)
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    steered_then_compiled = mods.apply.apply_to_model(model, tmap, 1.0)
    set_torch_compile_wrapper(steered_then_compiled, backend="eager")
    for m in (mods.apply.apply_to_model(compiled, tmap, 1.0), steered_then_compiled):
        with pytest.raises(RuntimeError, match="MMDITWrapper is compiled with torch.compile.*fused"):
            TF.denoise_comfy(m, pipe, inp)
    assert count_hooks(model.model) == 0
