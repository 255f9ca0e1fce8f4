"""Batched collection in the Fit node: prompts sampled batch_size at a time (each with its own
noise) give the maps of one-at-a-time sampling; one-pass "causal" equals "causal (low memory)".

Tiny SDXL built from ComfyUI's own classes (tests/comfy/act_tiny_sdxl). Maps are compared per
layer on omega, beta and the support bands; the largest difference is printed.
"""

import pytest
import torch

from act_core import count_hooks
from conftest import interrupt_on_call

pytestmark = pytest.mark.comfy

SIZE = 64
MID = r"unet\.mid_block\..*norm.*"
#: float32 tolerance for "the same map". Batched convolutions / attention / GroupNorm sum in another
#: order than batch-1 ones: pooled activations differ by <= 2e-6 (measured on the tiny SDXL). The
#: maps are compared as functions: the source quantile bands, and T(x) = omega x + beta at every band
#: end (18 points spanning the source data per unit). omega alone is not compared: on units where the
#: prompts barely differ (spread ~1e-8 in the first ResBlock) it is a ratio of rounding noise, while
#: T on the data stays exact (measured |T_1(x) - T_4(x)| <= 6e-6).
RTOL, ATOL = 1e-4, 1e-5
LONG = ("a watercolor painting of a lighthouse on a rocky coast at dusk with seagulls, fishing boats, "
        "a red roof, tall grass, wild flowers, a winding path, a wooden fence, distant hills, soft clouds, "
        "a pale moon, gentle waves, wet sand, scattered shells, an old anchor and a small dog running along the shore, "
        "kites in the wind, a striped umbrella, children building a sand castle and a sailing ship far out at sea")


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import comfy_compat, fit, prompts, runner

    return type("Mods", (), dict(cc=comfy_compat, fit=fit, prompts=prompts, runner=runner))


@pytest.fixture(scope="module")
def model_clip(tiny_pack):
    return tiny_pack.build(seed=0)


def _fit(mods, model, clip, pairs, batch_size, procedure="simultaneous", layers="UNet norms", pattern=""):
    return mods.fit.fit(model, clip, pairs, "Linear-AcT", layers, pattern, "method default", procedure, 0, SIZE, SIZE,
                        batch_size=batch_size)


def _max_diff(a, b):
    """Largest difference between maps ``a`` and ``b`` as functions on the source data; asserts closeness."""
    assert sorted(a.maps) == sorted(b.maps)
    worst = 0.0
    for n in a.maps:
        ta, tb = a[n], b[n]
        assert a.layouts[n] == b.layouts[n] and ta.method == tb.method
        points = ta.bands.reshape(-1, ta.units)  # (9 bands x 2 ends, D): the source data's quantiles
        pairs = ((ta.bands, tb.bands),
                 (ta.apply(points, support="all", layout="tokens"), tb.apply(points, support="all", layout="tokens")))
        for x, y in pairs:
            torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=lambda m: f"{n}: {m}")
            worst = max(worst, float((x - y).abs().max()))
    return worst


def test_batched_collection_gives_the_activations_of_one_prompt_at_a_time(mods, model_clip):
    from act_core.fitting import collect

    model, clip = model_clip
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    modules = mods.fit.select(mods.cc.model_tree(model, clip), "UNet norms", "")
    runs = {}
    for bs in (1, 4):
        runner = mods.runner.ComfyRunner(model, clip, 0, SIZE, SIZE, batch_size=bs)
        runs[bs], _ = collect(runner, pairs["source"], modules)
    worst = max(float((runs[1][n] - runs[4][n]).abs().max()) for n in modules)
    print(f"pooled activations, batch 1 vs 4, {len(modules)} UNet norms: max |diff| {worst:.2e}")
    for n in modules:
        assert runs[1][n].shape == (4, runs[1][n].shape[1])
        torch.testing.assert_close(runs[1][n], runs[4][n], rtol=RTOL, atol=ATOL)
    # the prompts do differ in the activations compared (the check can fail)
    assert any(float((runs[1][n][0] - runs[1][n][1]).abs().max()) > 1e-3 for n in modules)


def test_batched_simultaneous_fit_equals_one_prompt_at_a_time(mods, model_clip):
    model, clip = model_clip
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    one = _fit(mods, model, clip, pairs, batch_size=1)
    four = _fit(mods, model, clip, pairs, batch_size=4)
    three = _fit(mods, model, clip, pairs, batch_size=3)  # a ragged last batch (3 + 1)
    assert len(one) > 40
    d4, d3 = _max_diff(one, four), _max_diff(one, three)
    print(f"simultaneous fit, batch 1 vs 4: max |diff| {d4:.2e}; vs 3: {d3:.2e} over {len(one)} layers")
    assert four.meta["collection"]["batch_size"] == 4
    # batching changes nothing else: a different seed does change the map (the test can fail)
    other = mods.fit.fit(model, clip, pairs, "Linear-AcT", "UNet norms", "", "method default", "simultaneous", 1,
                         SIZE, SIZE, batch_size=4)
    assert any(not torch.allclose(one[n].beta, other[n].beta, rtol=RTOL, atol=ATOL) for n in one.maps)


def test_each_prompt_gets_its_own_noise_by_the_rule_of_the_diffusers_runner(mods, model_clip, monkeypatch):
    """Every row starts from ``prompt_noise(seed, its prompt)``, whatever the batch, as the diffusers
    runner's latents do (one collection-noise rule for both)."""
    from act_core.diffusion.noise import prompt_noise
    from act_core.hooks import ActivationCollector

    model, clip = model_clip
    seen = []
    real = mods.cc.sample

    def spy(*a, noise=None, **k):
        seen.append(noise.clone())
        return real(*a, noise=noise, **k)

    monkeypatch.setattr(mods.cc, "sample", spy)
    texts = ["a red cat", "a blue dog", "a green boat"]
    for batch_size in (3, 1):
        seen.clear()
        runner = mods.runner.ComfyRunner(model, clip, 5, SIZE, SIZE, batch_size=batch_size)
        name = next(n for n, _ in runner.model.named_modules() if n.endswith("middle_block.0.in_layers.0"))
        with ActivationCollector(runner.model, [name], stop_after=True) as col:
            runner.run(texts, col)
        rows = torch.cat(seen)
        assert rows.shape[0] == 3
        for row, text in zip(rows, texts):
            assert torch.equal(row, prompt_noise(5, text, row.shape))
    assert not torch.equal(rows[0], rows[1])


def test_long_and_short_prompts_batch_like_one_at_a_time(mods, model_clip):
    model, clip = model_clip
    cc = mods.cc
    short, long_ = cc.encode(clip, "a cat"), cc.encode(clip, LONG)
    assert short[0][0].shape[1] == 77 and long_[0][0].shape[1] == 154
    both = cc.concat_conditioning([short, long_])
    assert both[0][0].shape == (2, 154, short[0][0].shape[2])
    assert torch.equal(both[0][0][0, 77:], short[0][0][0]) and torch.equal(both[0][0][1], long_[0][0][0])
    assert torch.equal(both[0][1]["pooled_output"][1], long_[0][1]["pooled_output"][0])
    pairs = {"source": ["a photo of a lighthouse", LONG, "a photo of a dog", "a photo of a boat"],
             "target": ["a watercolor of a lighthouse", "a watercolor of a dog", LONG + ", watercolor", "a watercolor"],
             "meta": {"goal": "custom"}}
    one = _fit(mods, model, clip, pairs, batch_size=1)
    four = _fit(mods, model, clip, pairs, batch_size=4)
    print(f"mixed 77/154-token prompts, batch 1 vs 4: max |diff| {_max_diff(one, four):.2e}")
    # the long prompt really reaches the UNet: replacing it changes the map
    short_pairs = dict(pairs, source=["a photo of a lighthouse", "a cat", "a photo of a dog", "a photo of a boat"])
    changed = _fit(mods, model, clip, short_pairs, batch_size=4)
    assert any(not torch.allclose(one[n].beta, changed[n].beta, rtol=RTOL, atol=ATOL) for n in one.maps)


def test_one_pass_causal_equals_low_memory_causal(mods, model_clip):
    model, clip = model_clip
    # 4 + 4 prompts: with 2 + 2 the per-unit fits are near-degenerate (omega up to ~250 on the tiny model),
    # which scales the same 1e-6 rounding to ~2e-4 in T(x); with 4 + 4 omega <= ~6 (measured)
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    one_pass = _fit(mods, model, clip, pairs, 1, "causal", "custom pattern", MID)
    reference = _fit(mods, model, clip, pairs, 1, "causal (low memory)", "custom pattern", MID)
    simultaneous = _fit(mods, model, clip, pairs, 4, "simultaneous", "custom pattern", MID)
    assert one_pass.meta["procedure"] == "causal" and reference.meta["procedure"] == "causal_reference"
    assert one_pass.meta["collection"]["batch_size"] == 8  # all 4 + 4 prompts in one batch
    assert len(one_pass) >= 5
    # layer by layer in true forward order: ComfyUI's transformer block defines norm2 before norm1
    names = list(reference.maps)
    block = "unet.mid_block.attentions.0.transformer_blocks.0."
    assert names.index(block + "norm1") < names.index(block + "norm2") < names.index(block + "norm3")
    print(f"one-pass causal vs causal (low memory), {len(one_pass)} layers: max |diff| {_max_diff(one_pass, reference):.2e}")
    last = names[-1]
    assert not torch.allclose(one_pass[last].omega, simultaneous[last].omega, rtol=RTOL, atol=ATOL)


def test_causal_with_text_encoder_layers_runs_layer_by_layer(mods, model_clip):
    model, clip = model_clip
    pairs = mods.prompts.build_pairs("style: watercolor", 2, 0)
    pattern = r"text_encoder\.encoder\.layers\.[01]"
    causal = _fit(mods, model, clip, pairs, 2, "causal", "custom pattern", pattern)
    low = _fit(mods, model, clip, pairs, 2, "causal (low memory)", "custom pattern", pattern)
    assert causal.meta["procedure"] == "causal_reference"
    _max_diff(causal, low)


def test_progress_ticks_per_layer_for_one_pass_and_per_prompt_otherwise(mods, model_clip, monkeypatch):
    model, clip = model_clip
    seen = []

    class Bar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None):
            seen.append((value, total))

    monkeypatch.setattr(mods.cc, "progress_bar", Bar)
    pairs = mods.prompts.build_pairs("style: watercolor", 3, 0)
    tmap = _fit(mods, model, clip, pairs, 2, "causal", "custom pattern", MID)
    assert seen[-1] == (len(tmap), len(tmap)) and len({v for v, _ in seen}) == len(tmap) + 1
    seen.clear()
    _fit(mods, model, clip, pairs, 4, "simultaneous", "custom pattern", MID)
    assert seen == [(3, 6), (6, 6)]  # one batch of the 3 source prompts, one of the 3 target prompts


def test_bad_batch_size_is_refused_with_the_fix(mods, model_clip):
    model, clip = model_clip
    pairs = mods.prompts.build_pairs("style: watercolor", 2, 0)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"batch_size must be a whole number of at least 1"):
            _fit(mods, model, clip, pairs, bad)
    assert count_hooks(model.model) == 0


@pytest.mark.parametrize("case", ["simultaneous, 2nd batch", "causal, inside the one pass", "causal (low memory)"])
def test_cancel_during_a_batched_fit_returns_no_map(mods, model_clip, monkeypatch, case):
    import comfy.model_management as mm
    import act_core.fitting as fitting

    model, clip = model_clip
    pairs = mods.prompts.build_pairs("style: watercolor", 4, 0)
    hooks0 = count_hooks(model.model), count_hooks(clip.cond_stage_model)
    procedure = case.split(",")[0]
    with monkeypatch.context() as mp:
        if case.startswith("simultaneous"):  # Cancel pressed while the 2nd batch's prompts are encoded
            calls = interrupt_on_call(mp, mods.cc, "encode", after=1 + 2 + 1)  # negative "", 1st batch, then 2nd
        elif case.startswith("causal,"):  # Cancel pressed after the 2nd layer was fitted, inside the UNet forward
            calls = interrupt_on_call(mp, fitting, "fit_transport", after=2)
        else:
            calls = interrupt_on_call(mp, mods.cc, "sample", after=3)
        result = []
        try:
            with pytest.raises(mm.InterruptProcessingException):
                result.append(_fit(mods, model, clip, pairs, 2, procedure, "custom pattern", MID))
        finally:
            mm.interrupt_current_processing(False)
        assert calls[0] >= 1 and not result
    assert (count_hooks(model.model), count_hooks(clip.cond_stage_model)) == hooks0
    again = _fit(mods, model, clip, pairs, 2, procedure, "custom pattern", MID)
    assert len(again) >= 5


@pytest.mark.parametrize("procedure, fix", [("causal", "causal \\(low memory\\)"), ("simultaneous", "lower batch_size")])
def test_out_of_memory_names_the_fix_and_leaves_no_hook(mods, model_clip, monkeypatch, procedure, fix):
    model, clip = model_clip
    pairs = mods.prompts.build_pairs("style: watercolor", 2, 0)
    hooks0 = count_hooks(model.model), count_hooks(clip.cond_stage_model)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    with monkeypatch.context() as mp:
        mp.setattr(mods.cc, "sample", oom)
        with pytest.raises(torch.OutOfMemoryError, match=rf"4 prompts .*{fix}.*Tried to allocate 12.00 GiB"):
            _fit(mods, model, clip, pairs, 2, procedure, "custom pattern", MID)
    assert (count_hooks(model.model), count_hooks(clip.cond_stage_model)) == hooks0
