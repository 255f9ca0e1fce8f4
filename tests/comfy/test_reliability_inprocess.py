"""Reliability of the node pack inside one long-lived ComfyUI process (issue 6).

Leaks (hooks, memory) over many steered samplings and fits, cancellation at every stage of a fit
and during a save, disk-full / permission errors while saving, isolation of steered clones, and
a clear, input-naming error from every node for bad input. Tiny SDXL from ComfyUI's own classes.
RSS growth is measured with psutil and printed in the pytest summary (``config._act_report``);
the bounds are generous and never timed.
"""

import errno
import gc
import os
import warnings

import psutil
import pytest
import torch
from conftest import interrupt_on_call

from act_core import TransportMap, count_hooks
from act_core.mapfile import MapFileError

pytestmark = pytest.mark.comfy

STEPS, SIZE = 2, 64
MID = r"unet\.mid_block\..*norm.*"
RSS_BOUND_MB = 150


@pytest.fixture(scope="module")
def mods(pack):
    from act_steering_pack.nodes import apply, combine, comfy_compat, files, fit, info, prompts, sweep

    return type("Mods", (), dict(apply=apply, combine=combine, cc=comfy_compat, files=files, fit=fit,
                                 info=info, prompts=prompts, sweep=sweep))


@pytest.fixture(scope="module")
def model_clip(tiny_pack):
    return tiny_pack.build(seed=0)


def _report(request, line):
    lines = getattr(request.config, "_act_report", None)
    if lines is None:
        lines = request.config._act_report = []
    lines.append(line)
    print(line)


def _rss_mb():
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def _fit(mods, model, clip, goal="style: watercolor", count=2, layers="custom pattern", pattern=MID,
         procedure="simultaneous"):
    pairs = mods.prompts.build_pairs(goal, count, 0)
    return mods.fit.fit(model, clip, pairs, "Linear-AcT", layers, pattern, "method default", procedure, 0, SIZE, SIZE,
                        batch_size=2)


def _sample(mods, model, clip, cfg=3.0, text="a photo of a cat", seed=7):
    cc = mods.cc
    pos, neg = cc.encode(clip, text), cc.encode(clip, "blurry")
    with torch.inference_mode():
        return cc.sample(model, pos, neg, cc.empty_latent(model, SIZE, SIZE), seed, STEPS, cfg)


def _live(cls):
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some lazy torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def _hooks(model, clip):
    return count_hooks(model.model), count_hooks(clip.cond_stage_model)


@pytest.fixture(scope="module")
def two_maps(mods, model_clip):
    model, clip = model_clip
    return (_fit(mods, model, clip, "style: watercolor", layers="UNet norms"),
            _fit(mods, model, clip, "negate: pink_elephant", layers="UNet norms"))


# -- leaks ---------------------------------------------------------------------------------------

def test_100_samplings_leave_no_hook_and_flat_memory(mods, model_clip, two_maps, request):
    model, clip = model_clip
    map_a, map_b = two_maps
    baseline_hooks = _hooks(model, clip)  # whatever ComfyUI itself keeps installed
    plain0 = _sample(mods, model, clip)
    ref_a = _sample(mods, mods.apply.apply_to_model(model, map_a, 1.0), clip)
    ref_b = _sample(mods, mods.apply.apply_to_model(model, map_b, 1.0), clip)
    assert not torch.equal(ref_a, plain0) and not torch.equal(ref_b, plain0) and not torch.equal(ref_a, ref_b)
    for _ in range(2):  # warm-up: allocator, ComfyUI caches
        _sample(mods, mods.apply.apply_to_model(model, map_a, 1.0), clip)
    import comfy.model_patcher

    patchers0, tensors0 = _live(comfy.model_patcher.ModelPatcher), _live(torch.Tensor)
    rss0 = _rss_mb()
    n, peak = 100, rss0
    for i in range(n):
        kind = ("a", "plain", "b", "plain")[i % 4]
        if kind == "plain":
            out = _sample(mods, model, clip)
            assert torch.equal(out, plain0), f"run {i}: the unsteered model drifted after {i} steered runs"
        else:
            tmap, ref = (map_a, ref_a) if kind == "a" else (map_b, ref_b)
            out = _sample(mods, mods.apply.apply_to_model(model, tmap, 1.0), clip)
            assert torch.equal(out, ref), f"run {i}: map {kind} gave another result than its first run"
        assert _hooks(model, clip) == baseline_hooks, f"run {i} ({kind}) left a hook behind"
        del out
        if i % 10 == 9:
            peak = max(peak, _rss_mb())
    growth = _rss_mb() - rss0
    patchers, tensors = _live(comfy.model_patcher.ModelPatcher) - patchers0, _live(torch.Tensor) - tensors0
    _report(request, f"reliability: {n} steered/plain samplings: live ModelPatcher {patchers:+d}, live tensors {tensors:+d}")
    _report(request, f"reliability: {n} steered/plain samplings in one ComfyUI process: RSS {rss0:.0f} MB -> "
                     f"{rss0 + growth:.0f} MB (growth {growth:+.2f} MB, peak {peak - rss0:+.2f} MB; bound {RSS_BOUND_MB} MB); "
                     f"hooks after every run == baseline {baseline_hooks}")
    assert growth < RSS_BOUND_MB
    assert patchers == 0, "steered MODEL clones are kept alive after sampling"
    assert tensors <= 0, "tensors accumulate across samplings"


def test_20_fits_leave_no_hook_and_flat_memory(mods, model_clip, request):
    model, clip = model_clip
    baseline_hooks = _hooks(model, clip)
    first = _fit(mods, model, clip)
    _fit(mods, model, clip, layers="text encoder layers")  # warm-up of the CLIP-only path
    rss0 = _rss_mb()
    n = 20
    for i in range(n):
        if i % 2:
            t = _fit(mods, model, clip, layers="text encoder layers")
            assert all(k.startswith("text_encoder") for k in t.maps)
        else:
            t = _fit(mods, model, clip)
            assert list(t.maps) == list(first.maps)
            assert all(torch.equal(t[k].omega, first[k].omega) and torch.equal(t[k].beta, first[k].beta) for k in t.maps)
        assert _hooks(model, clip) == baseline_hooks, f"fit {i} left a hook behind"
        del t
    growth = _rss_mb() - rss0
    _report(request, f"reliability: {n} fits in one ComfyUI process: RSS growth {growth:+.2f} MB "
                     f"(bound {RSS_BOUND_MB} MB); refits bit-identical, no hook left")
    assert growth < RSS_BOUND_MB


# -- cancellation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["collection", "fitting"])
def test_interrupt_during_a_fit_leaves_nothing_and_next_fit_works(mods, model_clip, monkeypatch, stage):
    import comfy.model_management as mm
    import act_core.fitting as fitting

    model, clip = model_clip
    baseline_hooks = _hooks(model, clip)
    reference = _fit(mods, model, clip)
    with monkeypatch.context() as mp:
        if stage == "collection":  # Cancel pressed while the 2nd prompt is being sampled
            calls = interrupt_on_call(mp, mods.cc, "sample", after=2)
        else:  # Cancel pressed while the transports are being fitted (after all collection)
            calls = interrupt_on_call(mp, fitting, "fit_transport", after=1)
        try:
            with pytest.raises(mm.InterruptProcessingException):
                _fit(mods, model, clip)
        finally:
            mm.interrupt_current_processing(False)
        assert calls[0] >= 1
    assert _hooks(model, clip) == baseline_hooks
    again = _fit(mods, model, clip)
    assert all(torch.equal(again[k].omega, reference[k].omega) for k in reference.maps)


def test_interrupt_inside_a_steered_unet_forward_removes_every_hook(mods, model_clip, two_maps):
    """Cancel raised *while* the steering hooks are attached (inside the UNet forward, step 2)."""
    import comfy.model_management as mm

    model, clip = model_clip
    map_a, _ = two_maps
    baseline_hooks = _hooks(model, clip)
    plain = _sample(mods, model, clip)
    steered_model = mods.apply.apply_to_model(model, map_a, 1.0)
    steered = _sample(mods, steered_model, clip)
    calls = [0]

    def cancel_on_second_step(module, args, output):
        calls[0] += 1
        if calls[0] == 2:
            raise mm.InterruptProcessingException()

    probe = model.model.diffusion_model.middle_block[0].register_forward_hook(cancel_on_second_step)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(mods, steered_model, clip)
    finally:
        probe.remove()
    assert calls[0] == 2
    assert _hooks(model, clip) == baseline_hooks, "a steering hook survived the cancelled forward"
    assert torch.equal(_sample(mods, model, clip), plain)
    assert torch.equal(_sample(mods, steered_model, clip), steered)


def test_interrupt_during_save_keeps_the_old_file(mods, model_clip, two_maps, monkeypatch):
    import comfy.model_management as mm

    map_a, map_b = two_maps
    path = mods.files.save_map(map_a, "rel_cancel_save")
    before = open(path, "rb").read()
    folder = os.path.dirname(path)
    listing = sorted(os.listdir(folder))

    def cancelled_fsync(fd):  # the user cancels while the bytes are being flushed to disk
        raise mm.InterruptProcessingException()

    monkeypatch.setattr(os, "fsync", cancelled_fsync)
    with pytest.raises(mm.InterruptProcessingException):
        mods.files.SaveMap.execute(map_b, "rel_cancel_save")
    monkeypatch.undo()
    assert open(path, "rb").read() == before, "a cancelled save changed the existing map"
    assert sorted(os.listdir(folder)) == listing, "a cancelled save left a file (partial map or .tmp) behind"
    assert list(mods.files.load_map(os.path.basename(path)).maps) == list(map_a.maps)
    # the next save works: the next number, the old file untouched (the Save node never overwrites)
    nxt = mods.files.SaveMap.execute(map_b, "rel_cancel_save").result[0]
    assert os.path.basename(nxt) == os.path.basename(path).replace("_00001_", "_00002_")
    back = mods.files.load_map(os.path.basename(nxt))
    k = list(map_b.maps)[0]
    assert torch.equal(back[k].omega, map_b[k].omega) and open(path, "rb").read() == before
    os.unlink(path)
    os.unlink(nxt)


@pytest.mark.parametrize("failure", ["disk full", "permission"])
def test_save_node_disk_full_or_permission_error_is_clear_and_keeps_the_file(mods, two_maps, monkeypatch, failure):
    map_a, map_b = two_maps
    path = mods.files.save_map(map_a, "rel_disk")
    before = open(path, "rb").read()
    folder = os.path.dirname(path)
    listing = sorted(os.listdir(folder))
    if failure == "disk full":
        def boom(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", boom)
    else:
        real_open = os.open

        def boom(p, flags, *a, **k):  # creating the temporary file is not allowed
            if flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder)
            return real_open(p, flags, *a, **k)

        monkeypatch.setattr(os, "open", boom)
    with pytest.raises(OSError) as e:
        mods.files.SaveMap.execute(map_b, "rel_disk")
    monkeypatch.undo()
    msg = str(e.value)
    assert "rel_disk_NNNNN_.safetensors" in msg, msg  # names the file
    assert "unchanged" in msg, msg  # says what happened to the old one
    assert ("free" in msg) if failure == "disk full" else ("writable" in msg), msg  # and how to fix it
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(folder)) == listing
    os.unlink(path)


# -- isolation ------------------------------------------------------------------------------------

def test_clones_with_different_maps_interleaved_each_get_their_own_result(mods, model_clip, two_maps):
    model, clip = model_clip
    map_a, map_b = two_maps
    ma, mb = mods.apply.apply_to_model(model, map_a, 1.0), mods.apply.apply_to_model(model, map_b, 0.7)
    sep_a, sep_b, sep_plain = _sample(mods, ma, clip), _sample(mods, mb, clip), _sample(mods, model, clip)
    # a combined text-encoder + UNet graph: a steered CLIP branch next to the plain CLIP
    tmap_clip = _fit(mods, model, clip, layers="text encoder layers")
    sclip = mods.apply.apply_to_clip(clip, tmap_clip, 1.0)
    sep_clip = _sample(mods, model, sclip)
    for _ in range(2):
        for m, c, ref in ((mb, clip, sep_b), (model, sclip, sep_clip), (model, clip, sep_plain), (ma, clip, sep_a)):
            assert torch.equal(_sample(mods, m, c), ref)
    assert not torch.equal(sep_clip, sep_plain)


# -- input validation: every node -------------------------------------------------------------------

def test_every_node_names_the_bad_input(mods, model_clip, two_maps, comfy_env):
    model, clip = model_clip
    map_a, _ = two_maps
    P, F, A = mods.prompts, mods.fit, mods.apply
    # Prompt pairs: empty own lists, unknown goal, empty custom tags, unknown style/concept
    with pytest.raises(ValueError, match="at least 2 source and 2 target"):
        P.PromptPairs.execute("(my own source/target lists)", 4, 0, source_prompts="a\n\n", target_prompts="")
    with pytest.raises(ValueError, match="unknown goal"):
        P.PromptPairs.execute("style watercolor", 4, 0)
    with pytest.raises(ValueError, match="needs tags"):
        P.PromptPairs.execute("style: (my own tags)", 4, 0, tags="  ")
    with pytest.raises((ValueError, KeyError), match="watercolour|style"):
        P.PromptPairs.execute("style: watercolour", 4, 0)
    with pytest.raises((ValueError, KeyError), match="concept"):
        P.PromptPairs.execute("negate: unicorn_zebra", 4, 0)
    pairs = P.build_pairs("style: watercolor", 2, 0)
    fit_args = dict(model=model, clip=clip, prompt_pairs=pairs, method="Linear-AcT", layers="custom pattern",
                    support="method default", procedure="simultaneous", seed=0, width=SIZE, height=SIZE)
    # Fit: empty / unknown layer pattern, unknown preset choice, empty prompt lists, unknown method
    with pytest.raises(ValueError, match="pattern is empty"):
        F.FitTransportMap.execute(**fit_args, custom_pattern="  ")
    with pytest.raises(ValueError, match=r"custom_pattern: .*mid_blok.*matched no module"):
        F.FitTransportMap.execute(**fit_args, custom_pattern=r"unet\.mid_blok\..*")
    with pytest.raises(ValueError, match="layers choice"):
        F.FitTransportMap.execute(**{**fit_args, "layers": "all of them"})
    with pytest.raises(ValueError, match="source|prompt"):
        F.FitTransportMap.execute(**{**fit_args, "prompt_pairs": {"source": [], "target": ["a", "b"]}}, custom_pattern=MID)
    with pytest.raises(ValueError, match="method"):
        F.FitTransportMap.execute(**{**fit_args, "method": "magic"}, custom_pattern=MID)
    with pytest.raises(ValueError, match="procedure"):
        F.FitTransportMap.execute(**{**fit_args, "procedure": "sideways"}, custom_pattern=MID)
    with pytest.raises(ValueError, match="support"):
        F.FitTransportMap.execute(**{**fit_args, "support": "q_1_2_3"}, custom_pattern=MID)
    # Apply: reversed window, bad per-block, a text-encoder map on the UNet and vice versa
    with pytest.raises(ValueError, match="start_percent"):
        A.ApplyToModel.execute(model, map_a, 1.0, 0.9, 0.1, False)
    with pytest.raises(ValueError, match="per-block"):
        A.ApplyToModel.execute(model, map_a, 1.0, 0.0, 1.0, False, per_block="down:0")
    with pytest.raises(MapFileError, match="Apply transport map to model"):
        A.ApplyToClip.execute(clip, map_a, 1.0)
    # Save / Load: bad names, nonexistent file, a corrupt file in act_maps
    with pytest.raises(ValueError, match="invalid filename_prefix '../outside'"):
        mods.files.SaveMap.execute(map_a, "../outside")
    assert mods.files.LoadMap.validate_inputs("../x.safetensors") != True  # noqa: E712
    with pytest.raises(FileNotFoundError, match="no map 'missing.safetensors'"):
        mods.files.LoadMap.execute("missing.safetensors")
    bad = os.path.join(mods.cc.maps_save_dir(), "rel_corrupt.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    try:
        with pytest.raises(MapFileError, match="rel_corrupt.safetensors"):
            mods.files.LoadMap.execute("rel_corrupt.safetensors")
    finally:
        os.unlink(bad)
    # Combine: maps that cannot be combined (unequal widths on a shared layer) name the layer
    k = list(map_a.maps)[0]
    import act_core.transport as tr

    t = map_a[k]
    wide = tr.UnitTransport(torch.ones(t.units + 1), torch.zeros(t.units + 1),
                            torch.zeros(len(tr.BAND_NAMES), 2, t.units + 1), torch.zeros(t.units + 1, dtype=torch.uint8),
                            t.method, t.default_support)
    other = TransportMap({k: wide}, {k: map_a.layouts[k]}, {k: map_a.output_index[k]}, dict(map_a.meta))
    with pytest.raises((ValueError, MapFileError), match=k.replace(".", r"\.")):
        mods.combine.CombineMaps.execute(map_1=map_a, strength_1=1.0, map_2=other, strength_2=1.0)
    # Sweep: no / bad / too many strengths
    for text, pat in (("", "at least one strength"), ("0, half", "numbers"), (",".join(["1"] * 17), "at most 16")):
        with pytest.raises(ValueError, match=pat):
            mods.sweep.parse_strengths(text)
    # Info never fails on a minimal map (no prompts, no style)
    assert "layers: 1" in mods.info.describe(map_a.subset([k]))
