"""The optional MASK input of Apply to model, and img2img / inpainting (denoise < 1) windows.

A layer's output becomes lerp(x, T(x), m) with the mask resized to the layer's grid: feature maps
(N, C, h, w) directly, an attention block's tokens (N, h·w, C) row by row on the level's grid
(the latent halved as SDXL's downsamplers halve it). Checked on the layers themselves: the
masked output equals the steered one inside and the unsteered one outside, bit for bit.
"""

import pytest
import torch

import interplay as ip
from act_core import count_hooks

pytestmark = pytest.mark.comfy

H, W = 64, 128  # pixels: a non-square latent (8 x 16) tells rows from columns
TOKEN_LAYER = "input_blocks.4.1.transformer_blocks.0.norm1"  # level 1 (4 x 8 tokens); attn1 reads its output
GROUP_LAYER = "input_blocks.1.0.in_layers.0"  # level 0 (8 x 16); in_layers.1 (SiLU) reads its output


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import masks

    m = ip.pack_modules()
    m.masks = masks
    return m


def test_grids_tokens_and_batches(mods):
    mk = mods.masks
    assert mk.levels((8, 16))[:4] == [(8, 16), (4, 8), (2, 4), (1, 2)]
    assert mk.levels((9, 13))[:3] == [(9, 13), (5, 7), (3, 4)]  # ceil, as a stride-2 conv with padding 1
    assert mk.token_grid(32, (8, 16)) == (4, 8) and mk.token_grid(35, (9, 13)) == (5, 7) and mk.token_grid(33, (8, 16)) is None
    mask = torch.zeros(2, 8, 16)
    mask[0, :, :4] = 1.0  # image 0: the left quarter; image 1: nothing
    lm = mk.LayerMask(mk.as_mask_batch(mask), lambda: (8, 16), chunks=2)
    tokens = lm("t", torch.zeros(4, 32, 5))  # [uncond 0, uncond 1, cond 0, cond 1] x (4 x 8 tokens)
    assert tokens.shape == (4, 32, 1)
    grid = tokens[..., 0].reshape(4, 4, 8)
    assert torch.equal(grid[0], grid[2]) and torch.equal(grid[1], grid[3]) and not grid[1].any()
    assert grid[0][:, :2].eq(1).all() and not grid[0][:, 2:].any()  # row-major: columns 0-1 of 8
    fm = lm("f", torch.zeros(4, 3, 8, 16))
    assert fm.shape == (4, 1, 8, 16) and torch.equal(fm[2, 0], mask[0])
    one = mk.LayerMask(mk.as_mask_batch(mask[:1]), lambda: (8, 16), chunks=2)("f", torch.zeros(4, 3, 8, 16))
    assert one.shape == (1, 1, 8, 16)  # a mask of batch 1 broadcasts
    with pytest.raises(ValueError, match="cannot be placed on layer 'emb'"):
        lm("emb", torch.zeros(4, 64))
    with pytest.raises(ValueError, match="cannot be placed"):
        lm("odd", torch.zeros(4, 33, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mk.as_mask_batch(torch.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="shape"):
        mk.as_mask_batch(torch.zeros(1, 2, 4, 4))


def _first_input(mods, model, clip, consumer, cfg):
    captured = []
    h = model.model.diffusion_model.get_submodule(consumer).register_forward_pre_hook(
        lambda mod, args: None if captured else captured.append(args[0].detach().clone()))
    try:
        ip.sample(mods.cc, model, clip, cfg=cfg, steps=1, latent=torch.zeros(1, 4, H // 8, W // 8))
    finally:
        h.remove()
    return captured[0]


@pytest.mark.parametrize("layer, consumer, layout", [
    (TOKEN_LAYER, TOKEN_LAYER.replace("norm1", "attn1"), "tokens"),
    (GROUP_LAYER, "input_blocks.1.0.in_layers.1", "per_pixel"),
    (GROUP_LAYER, "input_blocks.1.0.in_layers.1", "spatial_mean"),
])
@pytest.mark.parametrize("region", ["left", "top"])
def test_the_masked_layer_is_steered_inside_and_untouched_outside(mods, tiny, layer, consumer, layout, region):
    from act_core.diffusion.families.sdxl import from_comfy

    model, clip = tiny
    name = from_comfy(f"diffusion_model.{layer}")
    module = model.model.diffusion_model.get_submodule(layer)
    tmap = ip.synthetic_map({name: module}, groupnorm_layout=layout)
    mask = torch.zeros(1, H, W)
    if region == "left":
        mask[:, :, : W // 2] = 1.0
    else:
        mask[:, : H // 2, :] = 1.0
    cfg = 5.0  # cond-only steering and the mask together: the uncond rows stay unsteered
    plain = _first_input(mods, model, clip, consumer, cfg)
    full = _first_input(mods, mods.apply.apply_to_model(model, tmap, 1.0), clip, consumer, cfg)
    masked = _first_input(mods, mods.apply.apply_to_model(model, tmap, 1.0, mask=mask), clip, consumer, cfg)
    if plain.ndim == 3:  # tokens of the 4 x 8 grid
        grid = mask[:, ::16, ::16]  # the mask on the level-1 grid (exact: aligned halves)
        inside = grid.flatten(1)[..., None].bool().expand_as(plain[:1])
    else:
        inside = mask[:, None, ::8, ::8].bool().expand_as(plain[:1])
    cond = torch.zeros(plain.shape[0], dtype=torch.bool)
    cond[plain.shape[0] // 2:] = True  # cond_or_uncond [1, 0]: the positive half last
    assert not torch.equal(full, plain)
    for row in range(plain.shape[0]):
        want = torch.where(inside[0], full[row], plain[row]) if cond[row] else plain[row]
        assert torch.equal(masked[row], want), f"row {row}"
    assert count_hooks(model.model) == 0


def test_whole_sampling_with_masks_and_a_mask_per_image(mods, tiny):
    model, clip = tiny
    tmap = ip.synthetic_map(ip.unet_norms(model), method="linear")
    latent = torch.zeros(2, 4, H // 8, W // 8)
    kw = dict(cfg=5.0, latent=latent)
    state = ip.snapshot(model)
    base = ip.sample(mods.cc, model, clip, **kw)
    full = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0), clip, **kw)
    ones = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0, mask=torch.ones(1, H, W)), clip, **kw)
    zeros = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0, mask=torch.zeros(H, W)), clip, **kw)
    assert torch.equal(ones, full) and torch.equal(zeros, base)
    per_image = torch.stack([torch.ones(H, W), torch.zeros(H, W)])  # steer image 0 only
    out = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0, mask=per_image), clip, **kw)
    assert torch.equal(out[0], full[0]) and torch.equal(out[1], base[1])
    left = torch.zeros(1, H, W)
    left[..., : W // 2] = 1.0
    half = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0, mask=left), clip, **kw)
    # most of the change lies on the masked side (convolutions carry a little across the edge)
    change = (half - base).abs().mean(dim=(0, 1))
    assert change[:, : W // 16].mean() > 5 * change[:, W // 16:].mean()
    with pytest.raises(ValueError, match="choose mode 'hooks' with a mask"):
        mods.apply.apply_to_model(model, tmap, 1.0, mode=mods.apply.FUSED, steer_negative=True, mask=left)
    ip.assert_clean(mods.cc, model, clip, state, base, **kw)


# -- img2img and inpainting: denoise < 1 --------------------------------------------------------

def _steered_calls(mods, model, clip, monkeypatch, tmap, start, end, window, **kw):
    import act_core.hooks

    calls = []
    attach = act_core.hooks.SteerHandle.attach
    monkeypatch.setattr(act_core.hooks.SteerHandle, "attach", lambda self: calls.append(1) or attach(self))
    out = ip.sample(mods.cc, mods.apply.apply_to_model(model, tmap, 1.0, start, end, window=window), clip, **kw)
    monkeypatch.undo()
    return len(calls), out


@pytest.mark.parametrize("inpaint", [False, True])
def test_denoise_below_one_follows_the_documented_windows(mods, tiny, monkeypatch, inpaint):
    """img2img (denoise 0.5) runs the last 4 steps of an 8-step schedule. 'percent of denoising' keeps
    its meaning on the whole schedule (noise levels): a window is steered where those 4 steps' noise
    levels fall in it. 'fraction of steps' counts the 4 steps that run. Inpainting (a noise mask)
    follows the same rule, and outside the inpainting mask the latent stays the input's, steered or not."""
    import comfy.samplers

    model, clip = tiny
    tmap = ip.synthetic_map(ip.unet_norms(model))
    g = torch.Generator().manual_seed(3)
    source = torch.randn(1, 4, 8, 8, generator=g)  # an encoded image
    kw = dict(cfg=1.0, steps=4, denoise=0.5, latent=source)
    if inpaint:
        noise_mask = torch.zeros(1, 1, 8, 8)
        noise_mask[..., :, 4:] = 1.0  # repaint the right half
        kw["noise_mask"] = noise_mask
    sigmas = comfy.samplers.KSampler(model, steps=4, device="cpu", sampler="euler", scheduler="normal", denoise=0.5).sigmas
    ms = model.get_model_object("model_sampling")

    def expected(start, end):  # the rule docs/comfyui.md states for 'percent of denoising'
        hi, lo = float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))
        return sum(1 for s in sigmas[:-1].tolist() if lo <= s <= hi)

    base = ip.sample(mods.cc, model, clip, **kw)
    runs = {}
    for start, end in ((0.0, 0.5), (0.5, 1.0), (0.0, 1.0)):
        runs[start, end, "percent"] = _steered_calls(mods, model, clip, monkeypatch, tmap, start, end, "percent of denoising", **kw)
        assert runs[start, end, "percent"][0] == expected(start, end), (start, end, sigmas)
        runs[start, end, "steps"] = _steered_calls(mods, model, clip, monkeypatch, tmap, start, end, "fraction of steps", **kw)
    assert runs[0.5, 1.0, "percent"][0] == 4 and runs[0.0, 1.0, "percent"][0] == 4  # every step lies below 50 % noise
    assert runs[0.0, 0.5, "percent"][0] == 0  # the run starts below 50 % noise (docs/comfyui.md)
    assert runs[0.0, 0.5, "steps"][0] == runs[0.5, 1.0, "steps"][0] == 2 and runs[0.0, 1.0, "steps"][0] == 4
    steered = runs[0.0, 1.0, "percent"][1]
    assert ip.max_abs(steered, base) > 1e-2
    if inpaint:
        keep = noise_mask.expand_as(source) == 0
        assert torch.equal(steered[keep], base[keep])  # the unsteered inpainting's (ComfyUI's latent scaling rounds)
        torch.testing.assert_close(steered[keep], source[keep], rtol=1e-6, atol=1e-6)
        assert ip.max_abs(steered[~keep], base[~keep]) > 1e-2
