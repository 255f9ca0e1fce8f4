"""Batches with a different prompt per image, CFG on and off: each image of a steered batch equals
that image sampled alone (same noise), up to the float rounding of ComfyUI's batched kernels.

Per-image steering state that could leak across a batch: the cond/uncond row gate (the UNet
batch stacks [uncond images, cond images]), the reference's spatial-mean layout (a channel's
mean is taken per image) and the support band (tested per value).
"""

import pytest
import torch

import interplay as ip

pytestmark = pytest.mark.comfy

PROMPTS = [("a photo of a cat", "blurry"), ("a watercolor of a harbour", "dark"), ("a pencil sketch of a tree", "")]


@pytest.fixture(scope="module")
def mods(pack):
    return ip.pack_modules()


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_each_image_of_a_batch_equals_the_image_alone(mods, tiny, cfg):
    model, clip = tiny
    cc = mods.cc
    pos = [cc.encode(clip, p) for p, _ in PROMPTS]
    neg = [cc.encode(clip, n) for _, n in PROMPTS]
    batch_pos, batch_neg = cc.concat_conditioning(pos), cc.concat_conditioning(neg)
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(len(PROMPTS), 4, 8, 8, generator=g)
    latent = torch.zeros_like(noise)
    band = ip.synthetic_map(ip.unet_norms(model), method="linear", groupnorm_layout="spatial_mean")
    fold = ip.synthetic_map(ip.unet_norms(model))
    variants = {
        "unsteered": lambda: model,
        "hooks (band, spatial mean)": lambda: mods.apply.apply_to_model(model, band, 1.0),
        "hooks, steer negative": lambda: mods.apply.apply_to_model(model, band, 1.0, steer_negative=True),
        "fused": lambda: mods.apply.apply_to_model(model, fold, 1.0, mode=mods.apply.FUSED, steer_negative=cfg > 1),
    }
    state = ip.snapshot(model)
    alone, batched = {}, {}
    for name, make in variants.items():
        m = make()
        batched[name] = ip.sample(cc, m, clip, cfg=cfg, positive=batch_pos, negative=batch_neg, latent=latent, noise=noise)
        alone[name] = torch.cat([ip.sample(cc, m, clip, cfg=cfg, positive=pos[i], negative=neg[i], latent=latent[i:i + 1],
                                           noise=noise[i:i + 1]) for i in range(len(PROMPTS))])
    base = alone["unsteered"]
    assert ip.max_abs(base[0], base[1]) > 1.0, "the prompts give different images"
    for name in variants:
        for i in range(len(PROMPTS)):
            if name == "unsteered":
                assert ip.max_abs(batched[name][i], alone[name][i]) <= ip.rounding_limit(alone[name][i])
            else:
                ip.assert_rounding_close(batched[name][i], alone[name][i], base[i])
    if cfg > 1:  # steering the negative half changes the images; at cfg 1 there is none
        assert ip.max_abs(alone["hooks, steer negative"], alone["hooks (band, spatial mean)"]) > 1e-2
    else:
        assert torch.equal(alone["hooks, steer negative"], alone["hooks (band, spatial mean)"])
    ip.assert_clean(mods.cc, model, clip, state, ip.sample(cc, model, clip, cfg=cfg), cfg=cfg)
