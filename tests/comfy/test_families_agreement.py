"""The promise of canonical names, for every family: the same tiny weights in diffusers and in
ComfyUI 0.3.75 (loaded by ComfyUI's own loaders), the same map applied in each framework
through its own name translation, and the two steered outputs agree (float rounding).

Denoisers are compared on identical inputs (latent, timestep, text context, pooled vector,
guidance) in each framework's calling convention; text encoders on identical token ids.
"""

import pytest
import torch

from act_core import count_hooks
from act_core.diffusion import families
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


def _close(a, b, scale):
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, scale)  # float32, different kernels and batching


def steer_comfy_denoiser(model, tmap, strength):
    """Steer ComfyUI's denoiser with a canonical map through the family's ComfyUI translation."""
    fam = families.for_architecture(tmap.architecture)
    local, names = fam.comfy_map(tmap)
    return steer(model.model, local, strength=strength, name_map=names.__getitem__)


@pytest.mark.parametrize("key", list(BUILD))
def test_a_diffusers_map_steers_comfyui_identically(both, key):
    pipe, model, _ = both[key]
    fam = D.family_of(pipe)
    inp = TF.inputs(pipe, seed=1, batch=2)
    base_d, base_c = TF.denoise_diffusers(pipe, inp), TF.denoise_comfy(model, pipe, inp)
    scale = base_d.abs().max().item()
    assert _close(base_d, base_c, scale), (base_d - base_c).abs().max()
    tmap = TransportMap.load(D.fit_style_map(pipe, "watercolor", n=4, batch_size=4, **SIZE).save(
        __import__("tempfile").mkdtemp() + "/m.safetensors"))
    assert tmap.architecture == fam.name
    tree = fam.module_tree(pipe)
    with steer(tree, tmap, strength=1.0):
        steered_d = TF.denoise_diffusers(pipe, inp)
    with steer_comfy_denoiser(model, tmap, 1.0):
        steered_c = TF.denoise_comfy(model, pipe, inp)
    effect = (steered_d - base_d).abs().max().item()
    assert effect > 1e-2, "the map must change the output (well beyond the tolerance) for the comparison to mean anything"
    assert _close(steered_d, steered_c, scale), ((steered_d - steered_c).abs().max(), effect)
    # removal leaves both exactly as they were
    assert count_hooks(model.model) == 0
    assert torch.equal(TF.denoise_comfy(model, pipe, inp), base_c) and torch.equal(TF.denoise_diffusers(pipe, inp), base_d)


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


def _encode_comfy(transformer, ids, capture):
    return _run_capturing(lambda: transformer(ids, None), capture)


@pytest.mark.parametrize("key", list(BUILD))
def test_text_encoder_maps_steer_comfyui_identically(both, key):
    """CLIP-L, OpenCLIP-G/H and T5 layers: a map fitted in diffusers moves ComfyUI's encoder
    exactly as it moves transformers' (the final norm's output, same token ids)."""
    pipe, _, clip = both[key]
    fam = D.family_of(pipe)
    layers = {"clip": r"{}\.encoder\.layers\.[01]", "t5": r"{}\.encoder\.block\.0"}
    for canon in TEXT[key]:
        te = fam.text_encoders[canon]
        tmap = D.fit_style_map(pipe, "anime", n=4, layers=[layers[te.kind].format(canon)], batch_size=4, **SIZE)
        assert tmap.modules and all(n.startswith(canon + ".") for n in tmap.modules)
        encoder, comfy_enc = getattr(pipe, canon), getattr(clip.cond_stage_model, te.comfy)
        length = 77 if te.kind == "clip" else 12  # ComfyUI's CLIP takes its full 77 positions
        ids = torch.randint(2, 1000, (2, length), generator=torch.Generator().manual_seed(3))
        final = f"{canon}.final_layer_norm" if te.kind == "clip" else f"{canon}.encoder.final_layer_norm"
        d_final = fam.module(pipe, final)
        c_final = clip.cond_stage_model.get_submodule(fam.to_comfy(final))
        base_d, base_c = _encode_diffusers(encoder, ids, d_final), _encode_comfy(comfy_enc.transformer, ids, c_final)
        scale = base_d.abs().max().item()
        assert _close(base_d, base_c, scale), (canon, (base_d - base_c).abs().max())
        with steer(fam.module_tree(pipe), tmap, strength=1.0):
            steered_d = _encode_diffusers(encoder, ids, d_final)
        local, names = fam.comfy_map(tmap)
        with steer(clip.cond_stage_model, local, strength=1.0, name_map=names.__getitem__):
            steered_c = _encode_comfy(comfy_enc.transformer, ids, c_final)
        effect = (steered_d - base_d).abs().max().item()
        assert effect > 1e-2, canon
        assert _close(steered_d, steered_c, scale), (canon, (steered_d - steered_c).abs().max(), effect)
        assert torch.equal(_encode_comfy(comfy_enc.transformer, ids, c_final), base_c)
