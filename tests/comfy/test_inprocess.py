"""The node pack inside a real ComfyUI 0.3.75 (in-process) on a tiny SDXL built from ComfyUI classes."""

import pytest
import torch

from act_core import TransportMap, count_hooks
from act_core.mapfile import MapFileError

pytestmark = pytest.mark.comfy

STEPS, SIZE = 3, 64


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import apply, combine, comfy_compat, files, fit, info, prompts, sweep

    return type("Mods", (), dict(apply=apply, combine=combine, cc=comfy_compat, files=files, fit=fit,
                                 info=info, prompts=prompts, sweep=sweep))


def _fit(mods, model, clip, layers="UNet norms", procedure="simultaneous", goal="style: watercolor", count=4, pattern="",
         batch_size=4):
    pairs = mods.prompts.build_pairs(goal, count, 0)
    return mods.fit.fit(model, clip, pairs, "Linear-AcT", layers, pattern, "method default", procedure, 0, SIZE, SIZE,
                        batch_size)


def _sample(mods, model, clip, cfg=5.0, text="a photo of a cat"):
    cc = mods.cc
    pos, neg = cc.encode(clip, text), cc.encode(clip, "blurry")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return cc.sample(model, pos, neg, cc.empty_latent(model, SIZE, SIZE), 7, STEPS, cfg)


def test_fit_apply_sample_and_nothing_leaks(mods, tiny):
    model, clip = tiny
    unet = model.model
    tmap = _fit(mods, model, clip)
    assert tmap.architecture == "sdxl" and len(tmap) > 40
    assert all(n.startswith("unet.") and "norm" in n for n in tmap.maps)
    assert "unet.mid_block.resnets.0.norm1" in tmap and tmap.layouts["unet.mid_block.resnets.0.norm1"] == "spatial_mean"
    assert tmap.meta["style"] == "watercolor" and tmap.meta["prompts"]["source_count"] == 4
    assert count_hooks(unet) == 0

    base = _sample(mods, model, clip)
    steered_model = mods.apply.apply_to_model(model, tmap, 1.0)
    assert steered_model is not model
    steered = _sample(mods, steered_model, clip)
    assert not torch.equal(steered, base)
    assert (steered - base).abs().max() > 1e-4
    assert count_hooks(unet) == 0, "hooks must exist only while sampling"
    assert torch.equal(_sample(mods, model, clip), base), "the input MODEL must reproduce its unsteered output"
    # strength 0 is exactly the unsteered model
    assert torch.equal(_sample(mods, mods.apply.apply_to_model(model, tmap, 0.0), clip), base)


def test_only_the_conditional_half_is_steered_by_default(mods, tiny):
    model, clip = tiny
    tmap = _fit(mods, model, clip)
    base = _sample(mods, model, clip)
    cond_only = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0), clip)
    both = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0, steer_negative=True), clip)
    assert not torch.equal(cond_only, base) and not torch.equal(both, base)
    assert not torch.equal(cond_only, both)
    # cfg = 1: ComfyUI runs only the conditional batch, so the switch makes no difference
    b1 = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0), clip, cfg=1.0)
    b2 = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0, steer_negative=True), clip, cfg=1.0)
    assert torch.equal(b1, b2)


def test_cond_rows_follow_cond_or_uncond(mods):
    rows = mods.cc.cond_rows({"cond_or_uncond": [1, 0]}, 4)
    assert rows.tolist() == [False, False, True, True]
    assert mods.cc.cond_rows({"cond_or_uncond": [0]}, 2).tolist() == [True, True]
    assert mods.cc.cond_rows({}, 2) is None


def test_schedule_window_and_per_block(mods, tiny):
    model, clip = tiny
    tmap = _fit(mods, model, clip)
    base = _sample(mods, model, clip)
    # a window that contains no step (sigma exactly 0 never occurs before the end) steers nothing
    none = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0, start_percent=1.0, end_percent=1.0), clip)
    assert torch.equal(none, base)
    first_half = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0, 0.0, 0.5), clip)
    full = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0), clip)
    assert not torch.equal(first_half, base) and not torch.equal(first_half, full)
    # per-block factors of 0 everywhere == off; only 'down' differs from full
    off = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0, per_block="unet=0"), clip)
    assert torch.equal(off, base)
    down_only = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0, per_block="mid=0, up=0"), clip)
    assert not torch.equal(down_only, base) and not torch.equal(down_only, full)
    with pytest.raises(ValueError, match="matches no module"):
        mods.apply.apply_to_model(model, tmap, 1.0, per_block="text_encoder=2")
    with pytest.raises(ValueError, match="start"):
        mods.apply.apply_to_model(model, tmap, 1.0, 0.8, 0.2)


def test_step_fraction_window_steers_exactly_the_chosen_steps(mods, tiny, monkeypatch):
    from act_steering_pack.nodes.steering import step_in_window
    import act_core.hooks

    sig = torch.tensor([14.6, 6.0, 2.3, 0.7, 0.0])  # a 4-step (Lightning-like) schedule
    steps = lambda lo, hi: [step_in_window(float(s), sig, lo, hi) for s in sig[:-1]]  # noqa: E731
    assert steps(0.0, 0.5) == [True, True, False, False]
    assert steps(0.5, 1.0) == [False, False, True, True]
    assert steps(0.25, 0.6) == [False, True, False, False]  # middles 0.125, 0.375, 0.625, 0.875
    assert steps(0.0, 1.0) == [True] * 4 and steps(1.0, 1.0) == [False] * 4 and steps(0.0, 0.0) == [False] * 4
    assert step_in_window(4.0, sig, 0.25, 0.5)  # a 2nd-order sampler's extra call counts for step 2

    model, clip = tiny
    tmap = _fit(mods, model, clip)
    steered_calls = []
    attach = act_core.hooks.SteerHandle.attach
    monkeypatch.setattr(act_core.hooks.SteerHandle, "attach", lambda self: steered_calls.append(1) or attach(self))
    runs = {}
    for window, lo, hi in (("fraction of steps", 0.0, 0.67), ("fraction of steps", 0.67, 1.0), ("fraction of steps", 0.0, 1.0)):
        steered_calls.clear()
        m = mods.apply.apply_to_model(model, tmap, 1.0, lo, hi, window=window)
        runs[(lo, hi)] = _sample(mods, m, clip, cfg=1.0)
        runs[(lo, hi, "calls")] = len(steered_calls)
    assert STEPS == 3  # one UNet call per euler step at cfg 1
    assert (runs[(0.0, 0.67, "calls")], runs[(0.67, 1.0, "calls")], runs[(0.0, 1.0, "calls")]) == (2, 1, 3)
    base = _sample(mods, model, clip, cfg=1.0)
    assert not torch.equal(runs[(0.0, 0.67)], base) and not torch.equal(runs[(0.0, 0.67)], runs[(0.0, 1.0)])
    with pytest.raises(ValueError, match="unknown window"):
        mods.apply.apply_to_model(model, tmap, 1.0, window="seconds")


def test_clip_map_steers_only_the_patched_clip(mods, tiny):
    model, clip = tiny
    cm = clip.cond_stage_model
    tmap = _fit(mods, model, clip, layers="text encoder layers")
    assert all(n.startswith("text_encoder") for n in tmap.maps)
    assert {"text_encoder.encoder.layers.0", "text_encoder_2.encoder.layers.2"} <= set(tmap.maps)
    enc = lambda c: mods.cc.encode(c, "a photo of a cat")  # noqa: E731
    before = enc(clip)
    patched = mods.apply.apply_to_clip(clip, tmap, 1.0)
    steered = enc(patched)
    assert not torch.equal(steered[0][0], before[0][0])
    assert not torch.equal(steered[0][1]["pooled_output"], before[0][1]["pooled_output"])
    assert count_hooks(cm) == 0
    after = enc(clip)
    assert torch.equal(after[0][0], before[0][0]) and torch.equal(after[0][1]["pooled_output"], before[0][1]["pooled_output"])
    assert torch.equal(enc(patched)[0][0], steered[0][0]), "the patched clone stays steered after the original ran"
    # the UNet part of the pack refuses a text-encoder-only map with a pointer to the right node
    with pytest.raises(MapFileError, match="Apply transport map to CLIP"):
        mods.apply.apply_to_model(model, tmap, 1.0)


def test_chained_clip_maps_both_apply(mods, tiny):
    model, clip = tiny
    m1 = _fit(mods, model, clip, layers="text encoder layers")
    m2 = _fit(mods, model, clip, layers="text encoder layers", goal="negate: pink_elephant")
    enc = lambda c: mods.cc.encode(c, "a photo of a cat")[0][0]  # noqa: E731
    plain, only2 = enc(clip), enc(mods.apply.apply_to_clip(clip, m2, 1.0))
    both = enc(mods.apply.apply_to_clip(mods.apply.apply_to_clip(clip, m1, 1.0), m2, 1.0))
    assert not torch.equal(both, only2), "the first CLIP map was dropped by the second Apply-to-CLIP"
    assert torch.equal(enc(clip), plain) and count_hooks(clip.cond_stage_model) == 0


def test_load_map_accepts_every_listed_file_and_only_those(mods, comfy_env):
    from act_core import fit_transport

    d = mods.cc.maps_save_dir()
    t = TransportMap(meta={"architecture": "sdxl"})
    t.add("unet.conv_norm_out", fit_transport(torch.randn(20, 4), torch.randn(20, 4) + 1), "tokens", None)
    import os

    os.makedirs(os.path.join(d, "styles"), exist_ok=True)
    for rel in ("styles/watercolor.safetensors", "watercolor (v2).safetensors", "aquarelle_é.safetensors"):
        t.save(os.path.join(d, rel))
    listed = mods.cc.list_maps()
    assert {"watercolor (v2).safetensors", "aquarelle_é.safetensors"} <= set(listed)
    assert all(mods.files.LoadMap.validate_inputs(n) is True for n in listed)
    assert "invalid map file name" in mods.files.LoadMap.validate_inputs("../../checkpoints/x.safetensors")


def test_non_finite_sweep_and_per_block_strengths_are_refused(mods):
    for text in ("0, nan", "inf", "0, 11"):
        with pytest.raises(ValueError, match="finite number between -10 and 10"):
            mods.sweep.parse_strengths(text)
    from act_steering_pack.nodes.steering import block_strengths

    with pytest.raises(ValueError, match="finite"):
        block_strengths("mid=nan", ["unet.mid_block.resnets.0.norm1"], 1.0)


def test_causal_fit_differs_from_simultaneous(mods, tiny):
    model, clip = tiny
    pattern = r"unet\.mid_block\..*norm.*"
    sim = _fit(mods, model, clip, "custom pattern", "simultaneous", pattern=pattern)
    cau = _fit(mods, model, clip, "custom pattern", "causal", pattern=pattern)
    low = _fit(mods, model, clip, "custom pattern", "causal (low memory)", pattern=pattern)
    assert list(sim.maps) == list(cau.maps) == list(low.maps) and len(sim) >= 3
    first, last = list(sim.maps)[0], list(sim.maps)[-1]

    def on_data(t, ref):  # T(x) at the reference's source quantiles (omega alone is ill-posed on flat units)
        return t.apply(ref.bands.reshape(-1, ref.units), support="all", layout="tokens")

    # nothing upstream of the first layer (batches of 4 vs all 8 prompts: float rounding only)
    torch.testing.assert_close(on_data(cau[first], sim[first]), on_data(sim[first], sim[first]), rtol=1e-4, atol=1e-5)
    assert (cau[last].omega - sim[last].omega).abs().max() > 0.05  # fitted on upstream-steered activations
    assert cau.meta["procedure"] == "causal" and low.meta["procedure"] == "causal_reference"


def test_interrupt_cancels_a_fit(mods, tiny):
    import comfy.model_management as mm

    model, clip = tiny
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _fit(mods, model, clip)
    finally:
        mm.interrupt_current_processing(False)
    assert count_hooks(model.model) == 0 and count_hooks(clip.cond_stage_model) == 0


def test_save_load_info_and_bad_names(mods, tiny, comfy_env):
    model, clip = tiny
    tmap = _fit(mods, model, clip, goal="negate: pink_elephant")
    path = mods.files.save_map(tmap, "neg_test")
    assert path.endswith("act_maps/neg_test_00001_.safetensors")
    assert "neg_test_00001_.safetensors" in mods.cc.list_maps()
    back = mods.files.load_map("neg_test_00001_.safetensors")
    assert list(back.maps) == list(tmap.maps)
    assert torch.equal(back[list(tmap.maps)[0]].omega, tmap[list(tmap.maps)[0]].omega)
    text = mods.info.describe(back)
    assert "pink_elephant" in text and "recommended strength" in text and f"layers: {len(tmap)}" in text
    for bad in ["../evil", "a/b", "..", "/etc/passwd", "", ".hidden"]:
        with pytest.raises(ValueError, match="invalid map file name"):
            mods.files.safe_map_name(bad)
    with pytest.raises((ValueError, FileNotFoundError)):
        mods.files.load_map("../../secret.safetensors")
    # a non-.safetensors file next to the maps is not listed
    (comfy_env["base"] / "models" / "act_maps" / "notes.txt").write_text("x")
    assert "notes.txt" not in mods.cc.list_maps()


def test_map_for_another_model_type_fails_clearly(mods, tiny):
    model, clip = tiny
    tmap = _fit(mods, model, clip)
    llm = TransportMap(tmap.maps, tmap.layouts, tmap.output_index, {**tmap.meta, "architecture": "llama"})
    path = mods.files.save_map(llm, "llm_map")
    with pytest.raises(MapFileError, match="fitted on a 'llama' model"):
        mods.files.load_map(path.replace("\\", "/").rsplit("/", 1)[-1])
    with pytest.raises(MapFileError, match="SDXL"):
        mods.apply.apply_to_model(model, llm, 1.0)
    # a map for a bigger SDXL (different unit counts) names the mismatch
    big = tmap.subset([list(tmap.maps)[0]]).renamed(lambda n: "unet.mid_block.resnets.0.norm1")
    import act_core.transport as tr

    t = big[list(big.maps)[0]]
    wide = tr.UnitTransport(torch.ones(1280), torch.zeros(1280), torch.zeros(len(tr.BAND_NAMES), 2, 1280),
                            torch.zeros(1280, dtype=torch.uint8), t.method, t.default_support)
    big.maps["unet.mid_block.resnets.0.norm1"] = wide
    with pytest.raises(MapFileError, match="1280"):
        mods.apply.apply_to_model(model, big, 1.0)
    import os

    os.unlink(path)


def test_combine_style_and_negation(mods, tiny):
    model, clip = tiny
    style = _fit(mods, model, clip)
    neg = _fit(mods, model, clip, goal="negate: pink_elephant")
    node = mods.combine.CombineMaps
    combined = node.execute(map_1=style, strength_1=1.0, map_2=neg, strength_2=0.5).result[0]
    assert list(combined.maps) == list(style.maps)
    assert combined.meta["composition"]["parts"][1]["concept"] == "pink_elephant"
    base = _sample(mods, model, clip)
    out = _sample(mods, mods.apply.apply_to_model(model, combined, 1.0), clip)
    only_style = _sample(mods, mods.apply.apply_to_model(model, style, 1.0), clip)
    assert not torch.equal(out, base) and not torch.equal(out, only_style)


def test_prompt_pairs_errors(mods):
    with pytest.raises(ValueError, match="needs tags"):
        mods.prompts.build_pairs("style: (my own tags)", 4, 0)
    own = mods.prompts.build_pairs("(my own source/target lists)", 4, 0, source_prompts="a\nb", target_prompts="c\nd\ne")
    assert own["source"] == ["a", "b"] and own["target"] == ["c", "d", "e"]
    tagged = mods.prompts.build_pairs("style: (my own tags)", 3, 0, tags="neon, glow")
    assert all("neon" in t for t in tagged["target"]) and len(tagged["source"]) == 3
    assert "style: watercolor" in mods.prompts.choices() and "negate: pink_elephant" in mods.prompts.choices()


def test_sweep_grid_labels_and_zero_is_unsteered(mods, tiny, tiny_pack):
    import comfy.sd
    import comfy.taesd.taesd

    model, clip = tiny
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    tiny_pack.init_weights(taesd, 3)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    tmap = _fit(mods, model, clip)
    assert mods.sweep.parse_strengths("0, 0.5 1.5") == [0.0, 0.5, 1.5]
    with pytest.raises(ValueError):
        mods.sweep.parse_strengths("zero")
    cc = mods.cc
    pos, neg = cc.encode(clip, "a cat"), cc.encode(clip, "")
    latent = {"samples": cc.empty_latent(model, SIZE, SIZE)}
    with torch.inference_mode():
        out = mods.sweep.StrengthSweep.execute(model, tmap, pos, neg, latent, vae, "0, 1", 5, STEPS, 5.0, "euler", "normal", 2)
        plain = cc.decode(vae, cc.sample(model, pos, neg, latent["samples"], 5, STEPS, 5.0))
    grid, imgs = out.result
    assert imgs.shape[0] == 2
    assert torch.equal(imgs[0:1], plain) and not torch.equal(imgs[1:2], plain)
    h, w = imgs.shape[1:3]
    assert grid.shape[0] == 1 and grid.shape[2] == 2 * w and grid.shape[1] > h
    assert out.ui is not None
    # the sweep honours the Apply node's options: each λ image equals Apply + KSampler with the same options
    options = dict(start_percent=0.0, end_percent=0.5, steer_negative=True, per_block="down=0")
    with torch.inference_mode():
        _, swept = mods.sweep.StrengthSweep.execute(model, tmap, pos, neg, latent, vae, "1", 5, STEPS, 5.0, "euler",
                                                    "normal", 1, **options).result
        applied = mods.apply.apply_to_model(model, tmap, 1.0, options["start_percent"], options["end_percent"],
                                            options["steer_negative"], options["per_block"])
        expected = cc.decode(vae, cc.sample(applied, pos, neg, latent["samples"], 5, STEPS, 5.0))
    assert torch.equal(swept, expected) and not torch.equal(swept, imgs[1:2])


def test_sweep_at_zero_equals_ksampler_with_an_inpaint_mask_and_batch_index(mods, tiny, tiny_pack):
    import comfy.sd
    import comfy.taesd.taesd
    import nodes as comfy_nodes
    from act_core import fit_transport

    model, clip = tiny
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    tiny_pack.init_weights(taesd, 3)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    tmap = TransportMap(meta={"architecture": "sdxl"})
    tmap.add("unet.conv_norm_out", fit_transport(torch.randn(30, 32), torch.randn(30, 32) + 1), "per_pixel", None)
    pos, neg = mods.cc.encode(clip, "a cat"), mods.cc.encode(clip, "")
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    latent = {"samples": torch.randn(1, 4, 8, 8), "noise_mask": mask, "batch_index": [3]}
    with torch.inference_mode():
        ks = comfy_nodes.common_ksampler(model, 5, 2, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]
        plain = mods.cc.decode(vae, ks)
        _, images = mods.sweep.StrengthSweep.execute(model, tmap, pos, neg, latent, vae, "0", 5, 2, 5.0, "euler",
                                                     "normal", 1).result
    assert torch.equal(images, plain)



def test_sweep_labels_are_readable_text_at_every_size(mods):
    """Pillow's bundled fonts have no Greek: a "λ" would be drawn as an empty box. Labels are ASCII,
    sized to the strip, and shortened to the value where the image is too narrow for the word."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    for size in (32, 512):
        grid = mods.sweep.labelled_grid([torch.ones(size, size, 3)] * 2, ["lambda=0", "lambda=1.5"], 2)[0]
        strip = max(12, min(32, size // 8))
        assert grid.shape == (size + strip, 2 * size, 3)
        ink = (grid[:strip].numpy() < 0.5).all(-1)
        assert ink[:, :size].any() and ink[:, size:].any()  # each tile carries its label
        want = "lambda=1.5" if size == 512 else "1.5"
        ref = Image.new("RGB", (size, strip), "white")
        ImageDraw.Draw(ref).text((2, 1), want, fill=(0, 0, 0), font=ImageFont.load_default(size=strip - 4))
        assert np.array_equal(ink[:, size:], (np.asarray(ref) < 128).all(-1))
