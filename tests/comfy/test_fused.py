"""Apply node, fused mode: maps folded into ComfyUI weight patches agree with the hooked path.

Fused mode keeps no hook for a module whose fixed-λ map folds exactly into its weight and bias
(support "all"; per-pixel/token layouts, or ω = 1); every other module keeps hooks. Weight
patches act on both CFG halves, so at cfg > 1 fused mode needs steer_negative (it refuses
otherwise) and is compared with hooks mode + steer_negative.
"""

import logging

import pytest
import torch

from act_core import TransportMap, count_hooks
from act_core.diffusion.families.sdxl import to_comfy
from act_core.transport import UnitTransport

pytestmark = pytest.mark.comfy

STEPS, SIZE = 3, 64


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import apply, comfy_compat, fit, prompts

    return type("Mods", (), dict(apply=apply, cc=comfy_compat, fit=fit, prompts=prompts))


@pytest.fixture(scope="module")
def fitted(mods, tiny_pack):
    """The 'UNet norms' Linear-AcT map as the Fit node makes it (spatial-mean GroupNorms, band support)."""
    model, clip = tiny_pack.build(seed=0)
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    return mods.fit.fit(model, clip, pairs, "Linear-AcT", "UNet norms", "", "method default", "simultaneous", 0, SIZE, SIZE)


def _variant(tmap, support="all", per_pixel=True):
    """The same units with another default support, and per-pixel layouts for 4-D outputs when asked."""
    out = TransportMap(meta={**tmap.meta, "default_support": support})
    for n, t in tmap.maps.items():
        layout = tmap.layouts[n]
        if per_pixel and layout == "spatial_mean":
            layout = "per_pixel"
        out.add(n, UnitTransport(t.omega, t.beta, t.bands, t.flags, t.method, support), layout, tmap.output_index[n])
    return out


def _sample(mods, model, clip, cfg=5.0):
    cc = mods.cc
    pos, neg = cc.encode(clip, "a photo of a cat"), cc.encode(clip, "blurry")
    with torch.inference_mode():
        return cc.sample(model, pos, neg, cc.empty_latent(model, SIZE, SIZE), 7, STEPS, cfg)


def _apply(mods, model, tmap, strength=1.0, **kw):
    return mods.apply.apply_to_model(model, tmap, strength, **kw)


def _hooked(m):
    import comfy.patcher_extension

    return bool(m.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL))


def _close(a, b, ref):
    """a ≈ b at float32 rounding level (a few ulp of the largest value; measured: 1-2 ulp), while
    the steering effect ``b − ref`` is orders of magnitude larger."""
    err = (a - b).abs().max().item()
    effect = (b - ref).abs().max().item()
    assert effect > 1e-2, effect
    assert err < 2e-6 * max(1.0, b.abs().max().item()), (err, effect)
    return err


def test_fused_equals_hooks_and_the_input_model_is_untouched(mods, tiny, fitted):
    model, clip = tiny
    tmap = _variant(fitted)
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    base = _sample(mods, model, clip)
    fused_model = _apply(mods, model, tmap, mode=mods.apply.FUSED, steer_negative=True)
    assert len(fused_model.patches) == 2 * len(tmap), "every norm's weight and bias is patched"
    assert not _hooked(fused_model), "nothing is hooked when every module folds"
    fused = _sample(mods, fused_model, clip)
    assert count_hooks(model.model) == 0
    hooked = _sample(mods, _apply(mods, model, tmap, steer_negative=True), clip)
    _close(fused, hooked, base)
    # the input MODEL: bit-identical samples and weights after the fused clone ran
    assert torch.equal(_sample(mods, model, clip), base)
    assert all(torch.equal(v, state[k]) for k, v in model.model.state_dict().items())
    # the clone re-patches when it is loaded again
    assert torch.equal(_sample(mods, fused_model, clip), fused)
    # per-block strengths: each module folds at its own λ
    pb = "down=0, mid=0.5, up=1.5"
    _close(_sample(mods, _apply(mods, model, tmap, per_block=pb, mode=mods.apply.FUSED, steer_negative=True), clip),
           _sample(mods, _apply(mods, model, tmap, per_block=pb, steer_negative=True), clip), base)


def test_fused_at_cfg_1_equals_default_hooks(mods, tiny, fitted):
    model, clip = tiny
    tmap = _variant(fitted)
    base = _sample(mods, model, clip, cfg=1.0)
    fused = _sample(mods, _apply(mods, model, tmap, 0.7, mode=mods.apply.FUSED), clip, cfg=1.0)
    _close(fused, _sample(mods, _apply(mods, model, tmap, 0.7), clip, cfg=1.0), base)


def test_a_new_fused_patch_is_based_on_the_original_weights(mods, tiny, fitted):
    """A fused clone stays loaded (its weights written into the shared modules) after sampling;
    a second fused Apply on the input MODEL must still fold into the original weights."""
    model, clip = tiny
    tmap = _variant(fitted)
    original = {k: v.clone() for k, v in model.model.state_dict().items()}
    base = _sample(mods, model, clip)
    first = _apply(mods, model, tmap, 1.0, mode=mods.apply.FUSED, steer_negative=True)
    _sample(mods, first, clip)
    now = model.model.state_dict()
    assert any(not torch.equal(now[k], original[k]) for k in first.patches), "the test needs the patched weights in place"
    half = _sample(mods, _apply(mods, model, tmap, 0.5, mode=mods.apply.FUSED, steer_negative=True), clip)
    _close(half, _sample(mods, _apply(mods, model, tmap, 0.5, steer_negative=True), clip), base)


def test_mixed_spatial_mean_groupnorms_stay_hooked(mods, tiny, fitted, caplog):
    model, clip = tiny
    tmap = _variant(fitted, per_pixel=False)  # the Fit node's layouts: GroupNorm maps are spatial-mean
    # spatial-mean maps with ω = 1 (per-channel GroupNorms, whose spatial mean is always 0) fold as a shift
    spatial = [n for n in tmap.maps if tmap.layouts[n] == "spatial_mean" and not torch.all(tmap[n].omega == 1)]
    assert 0 < len(spatial) < len(tmap)
    base = _sample(mods, model, clip)
    with caplog.at_level(logging.INFO, logger="act_steering"):
        mixed_model = _apply(mods, model, tmap, mode=mods.apply.FUSED, steer_negative=True)
    n_fused = len(tmap) - len(spatial)
    assert f"{n_fused} of {len(tmap)} UNet layers fused as weight patches, {len(spatial)} hooked" in caplog.text
    assert len(mixed_model.patches) == 2 * n_fused and _hooked(mixed_model)
    hooked_keys = {f"{to_comfy(n)}.{p}" for n in spatial for p in ("weight", "bias")}
    assert len(hooked_keys) == 2 * len(spatial) and not hooked_keys & set(mixed_model.patches)
    mixed = _sample(mods, mixed_model, clip)
    assert count_hooks(model.model) == 0
    _close(mixed, _sample(mods, _apply(mods, model, tmap, steer_negative=True), clip), base)


def test_band_support_keeps_hooks(mods, tiny, fitted):
    model, clip = tiny
    assert fitted.default_support != "all"  # Linear-AcT's default band q_0_100
    base = _sample(mods, model, clip)
    band_model = _apply(mods, model, fitted, mode=mods.apply.FUSED, steer_negative=True)
    assert not band_model.patches, "a band support never folds"
    out = _sample(mods, band_model, clip)
    assert not torch.equal(out, base)
    # all modules hooked on both halves: exactly hooks mode with steer_negative
    assert torch.equal(out, _sample(mods, _apply(mods, model, fitted, steer_negative=True), clip))


def test_fused_refuses_a_window_and_strength_zero_is_unsteered(mods, tiny, fitted):
    model, clip = tiny
    tmap = _variant(fitted)
    with pytest.raises(ValueError, match="set start_percent 0 and end_percent 1, or choose mode 'hooks'"):
        _apply(mods, model, tmap, start_percent=0.0, end_percent=0.5, mode=mods.apply.FUSED)
    with pytest.raises(ValueError, match="unknown mode"):
        _apply(mods, model, tmap, mode="fast")
    base = _sample(mods, model, clip)
    off = _apply(mods, model, tmap, 0.0, mode=mods.apply.FUSED)
    assert not off.patches and not _hooked(off)
    assert torch.equal(_sample(mods, off, clip), base)
    # a per-block factor of 0 leaves those modules unpatched
    down_off = _apply(mods, model, tmap, per_block="down=0", mode=mods.apply.FUSED)
    assert down_off.patches and not any(k.startswith("diffusion_model.input_blocks.") for k in down_off.patches)


def test_fused_folds_into_the_weights_as_the_input_model_patches_them(mods, tiny, fitted):
    """A MODEL that already carries weight patches (a LoRA that touches norms): T(w + Δ), not T(w) + Δ."""
    model, clip = tiny
    tmap = _variant(fitted)
    g = torch.Generator().manual_seed(1)
    sd = model.model.state_dict()
    keys = [f"{to_comfy(n)}.{p}" for n in list(tmap.maps)[-6:] for p in ("weight", "bias")]
    lora = model.clone()
    assert sorted(lora.add_patches({k: (torch.randn(sd[k].shape, generator=g) * 0.3,) for k in keys})) == sorted(keys)
    base = _sample(mods, lora, clip)
    fused = _sample(mods, _apply(mods, lora, tmap, mode=mods.apply.FUSED, steer_negative=True), clip)
    _close(fused, _sample(mods, _apply(mods, lora, tmap, steer_negative=True), clip), base)


def test_fused_mode_through_the_server(comfy_server, object_info):
    """The shipped style workflow with mode 'fused (weight patches)' and support 'all' queued on a real server."""
    import json
    from pathlib import Path

    import ui2api
    from conftest import TINY

    assert "fused (weight patches)" in json.dumps(object_info["ActApplyToModel"]["input"]["optional"]["mode"])
    ui = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "act_style_control.json").read_text())
    overrides = {"ckpt_name": TINY, "width": 64, "height": 64, "steps": 2, "count": 4, "support": "all",
                 "mode": "fused (weight patches)", "steer_negative": True}
    prompt = ui2api.convert(ui, object_info, overrides=overrides)
    assert [n["inputs"]["mode"] for n in prompt.values() if n["class_type"] == "ActApplyToModel"] == ["fused (weight patches)"]
    entry = comfy_server.run(prompt, timeout=300, workflow=ui)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    line = [l for l in comfy_server.log().splitlines() if "AcT fused mode:" in l][-1]
    fused, total = (int(x) for x in line.split("AcT fused mode: ")[1].split(" UNet layers")[0].split(" of "))
    assert 0 < fused < total, line  # LayerNorms fused, spatial-mean GroupNorms hooked


def test_fused_without_steer_negative_refuses_cfg_and_runs_at_cfg_1(mods, tiny, fitted):
    """The default is to steer only the positive half; weights cannot, so fused mode says so at cfg > 1
    instead of silently steering the negative half (which would change the image against hooks mode)."""
    model, clip = tiny
    tmap = _variant(fitted)
    fused = _apply(mods, model, tmap, mode=mods.apply.FUSED)
    with pytest.raises(ValueError, match="turn 'steer negative' on"):
        _sample(mods, fused, clip, cfg=5.0)
    assert count_hooks(model.model) == 0
    base = _sample(mods, model, clip, cfg=1.0)
    _close(_sample(mods, fused, clip, cfg=1.0), _sample(mods, _apply(mods, model, tmap), clip, cfg=1.0), base)
