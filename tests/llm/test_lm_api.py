"""transformers adapter: fitting, steering in forward / generate / scoring, padding, removal, errors."""

import pytest
import torch

from act_core import TransportMap, count_hooks, steer
from act_core.fitting import collect
from act_core.llm.presets import PresetError
from act_core.mapfile import MapFileError
from act_core.llm.adapter import LMRunner, fit_lm_map, generate_texts, load_lm, perplexity, sequence_logprobs, steer_lm, token_gate
from lm_helpers import FRIENDLY, HOSTILE, make_model


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", layers=2, hidden=32)


@pytest.fixture(scope="module")
def tmap(llama):
    model, tok = llama
    return fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", method="linear", support="all")


def _logits(model, tok, texts=("Hello there friend", "A")):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_fit_records_names_and_architecture(llama, tmap):
    model, _ = llama
    assert tmap.modules == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    assert tmap.architecture == "llama" and tmap.meta["layers"] == "attention"
    assert all(t.units == 32 for t in tmap.maps.values())
    assert tmap.meta["prompts"]["source_count"] == len(HOSTILE)
    tmap.check_model(model, architecture="llama")


def test_three_line_case_steers_and_removal_restores_exactly(llama, tmap):
    model, tok = llama
    before = _logits(model, tok)
    with steer(model, tmap, strength=1.0):
        steered = _logits(model, tok)
    after = _logits(model, tok)
    assert not torch.allclose(before, steered)
    assert torch.equal(before, after)
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, tmap, strength=1.0):
            raise RuntimeError("boom")
    assert count_hooks(model) == 0 and torch.equal(before, _logits(model, tok))


def test_strength_zero_is_identity(llama, tmap):
    model, tok = llama
    before = _logits(model, tok)
    with steer(model, tmap, strength=0.0):
        assert torch.equal(before, _logits(model, tok))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "bert"])
def test_padding_aware_pooling_matches_unpadded(arch):
    """A short text pooled alone == the same text left-(right-for-BERT) padded in a batch."""
    model, tok = make_model(arch, layers=2)
    runner = LMRunner(model, tok, batch_size=8)
    mods = {n: None for n in ["residual[0]", "residual[1]"]}
    from act_core.llm.presets import resolve_preset

    mods = resolve_preset(model, "residual")
    short, long = "Thank you", "Once upon a time a small robot learned to paint flowers in the garden"
    alone, _ = collect(runner, [short], mods, pooling="mean", stop_after=False)
    both, _ = collect(runner, [long, short], mods, pooling="mean", stop_after=False)
    enc = tok([long, short], padding=True)
    assert 0 in enc["attention_mask"][1]  # the short one really is padded
    for n in mods:
        torch.testing.assert_close(both[n][1:2], alone[n], atol=2e-5, rtol=1e-4)
        assert not torch.allclose(both[n][0:1], alone[n], atol=1e-3)
    # last-token pooling finds the real last token under left padding too
    alone_l, _ = collect(runner, [short], mods, pooling="last", stop_after=False)
    both_l, _ = collect(runner, [long, short], mods, pooling="last", stop_after=False)
    for n in mods:
        torch.testing.assert_close(both_l[n][1:2], alone_l[n], atol=2e-5, rtol=1e-4)


def test_batched_generation_with_hooks_matches_single(llama, tmap):
    model, tok = llama
    prompts = ["Once upon a time", "Thank you", "The football match ended with"]
    plain = generate_texts(model, tok, prompts, max_new_tokens=8)
    steered = generate_texts(model, tok, prompts, max_new_tokens=8, tmap=tmap, strength=4.0, batch_size=3)
    singles = [generate_texts(model, tok, [p], max_new_tokens=8, tmap=tmap, strength=4.0)[0] for p in prompts]
    assert steered == singles
    assert steered != plain
    assert count_hooks(model) == 0
    assert generate_texts(model, tok, prompts, max_new_tokens=8) == plain


def test_token_modes(llama, tmap):
    model, tok = llama
    enc = tok(["Hello there friend"], return_tensors="pt")
    with torch.no_grad():
        base = model(**enc).logits
        with steer_lm(model, tmap, 2.0, tokens="generated"):
            gen_only = model(**enc).logits  # a multi-token (prefill-like) call is not steered
        with steer_lm(model, tmap, 2.0, tokens="prompt"):
            prompt_only = model(**enc).logits
        with steer_lm(model, tmap, 2.0, tokens="all"):
            everything = model(**enc).logits
    assert torch.equal(base, gen_only)
    assert torch.equal(prompt_only, everything) and not torch.allclose(base, prompt_only)
    prompts = ["Once upon a time there", "The weather is"]
    outs = {m: generate_texts(model, tok, prompts, 8, tmap=tmap, strength=4.0, tokens=m) for m in ("all", "prompt", "generated")}
    plain = generate_texts(model, tok, prompts, 8)
    assert outs["prompt"] != plain and outs["generated"] != plain and outs["all"] != outs["prompt"]
    with pytest.raises(ValueError, match="unknown tokens mode"):
        token_gate("prefill")


def test_map_save_load_round_trip_steers_identically(llama, tmap, tmp_path):
    model, tok = llama
    path = tmap.save(tmp_path / "m.safetensors")
    loaded = TransportMap.load(path)
    assert loaded.architecture == "llama" and loaded.modules == tmap.modules
    with steer(model, tmap, 1.0):
        a = _logits(model, tok)
    with steer(model, loaded, 1.0):
        b = _logits(model, tok)
    assert torch.equal(a, b)


def test_map_on_wrong_model_is_refused(tmap):
    gpt2, _ = make_model("gpt2")
    with pytest.raises(MapFileError, match="architecture 'llama'"):
        with steer_lm(gpt2, tmap):
            pass
    other, _ = make_model("llama", hidden=48)
    with pytest.raises(MapFileError, match="has 48 units but the map has 32"):
        with steer_lm(other, tmap):
            pass
    assert count_hooks(other) == 0


def test_causal_procedure_and_other_presets(llama):
    model, tok = llama
    m = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="all_ln", method="mean", procedure="causal")
    assert len(m) == 4 and m.meta["procedure"] == "causal"
    s = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="all_ln", method="mean", procedure="simultaneous")
    # first module sees no upstream map: identical; later ones differ (upstream maps applied)
    first = m.modules[0]
    torch.testing.assert_close(m[first].beta, s[first].beta)
    assert not torch.allclose(m[m.modules[-1]].beta, s[s.modules[-1]].beta)
    r = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers=[r"model\.layers\.1\.mlp\.down_proj"], method="linear")
    assert r.modules == ["model.layers.1.mlp.down_proj"]


def test_fit_errors(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="source texts is empty"):
        fit_lm_map(model, tok, [], FRIENDLY)
    with pytest.raises(ValueError, match="empty or non-string"):
        fit_lm_map(model, tok, HOSTILE + ["  "], FRIENDLY)
    with pytest.raises(PresetError, match="unknown layer preset 'atention'"):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="atention")
    with pytest.raises(PresetError, match="no post-sub-layer norms"):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="post_ln")
    with pytest.raises(ValueError, match="matched no module"):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers=[r"model\.layers\.9\.mlp"])
    cancelled = []

    def cancel(done, total, msg):
        if done == 1:
            cancelled.append(msg)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, progress=cancel)
    assert cancelled and count_hooks(model) == 0


def test_load_lm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="GGUF file 'x.gguf' not found"):
        load_lm(tmp_path, gguf_file="x.gguf")


def test_load_lm_round_trip_from_folder(llama, tmp_path):
    from act_core.llm.adapter import save_lm

    model, tok = llama
    save_lm(model, tok, tmp_path / "tiny")
    m2, t2 = load_lm(tmp_path / "tiny")
    assert t2.padding_side == "left" and len(t2) == len(tok)
    assert torch.equal(_logits(model, tok), _logits(m2, t2))


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])  # gemma2: final logit soft-capping
def test_sequence_logprobs_known_answer(arch):
    model, tok = make_model(arch)
    prompts, conts = ["Thank you", "Once upon a time a"], [" so much", " robot"]
    lp, n = sequence_logprobs(model, tok, prompts, conts, batch_size=2)
    for j, (p, c) in enumerate(zip(prompts, conts)):
        pi = tok(p)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pi + ci])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
        want = sum(logp[len(pi) - 1 + k, ci[k]].item() for k in range(len(ci)))
        assert n[j] == len(ci)
        assert lp[j].item() == pytest.approx(want, abs=1e-4)
    with steer(model, fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="mlp", method="mean"), 3.0):
        lp2, _ = sequence_logprobs(model, tok, prompts, conts)
    assert not torch.allclose(lp, lp2)


def test_perplexity_known_answer(llama):
    model, tok = llama
    texts = ["The weather is lovely today.", "Hi"]
    ppl = perplexity(model, tok, texts, batch_size=2)
    for j, t in enumerate(texts):
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(logits[0, :-1].double(), ids[0, 1:])
        assert ppl[j].item() == pytest.approx(torch.exp(nll).item(), rel=1e-5)
    # a random model over ~300 tokens: perplexity near the vocabulary size
    assert 50 < ppl[0] < 2000


def test_learned_position_models_cap_fitting_and_refuse_overlong_generation():
    from lm_helpers import FRIENDLY, HOSTILE, make_model

    from act_core.llm.adapter import fit_lm_map, generate_texts, perplexity, position_limit

    g, gt = make_model("gpt2")
    limit = position_limit(g)
    assert limit == g.config.n_positions
    long = " ".join(["the weather is lovely"] * 200)
    tmap = fit_lm_map(g, gt, [long, long], [long, long], layers="attention", max_length=10 * limit)  # capped, no IndexError
    assert len(tmap) > 0
    assert torch.isfinite(perplexity(g, gt, [long], max_length=10 * limit)).all()
    with pytest.raises(ValueError, match=f"reads at most {limit}"):
        generate_texts(g, gt, [long], max_new_tokens=2)
    assert position_limit(make_model("llama")[0]) is None  # rotary positions: no limit from the weights
    assert len(fit_lm_map(g, gt, HOSTILE, FRIENDLY, layers="attention")) > 0


def test_token_modes_follow_the_cache_state_even_for_one_token_prompts():
    from lm_helpers import FRIENDLY, HOSTILE, make_model

    from act_core.llm.adapter import fit_lm_map, steer_lm

    model, tok = make_model("llama")
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", support="all")
    ids = torch.tensor([[5]])  # a one-token prompt: its prefill has one position, like a decoding step
    gen = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
               pad_token_id=tok.pad_token_id)

    def first_scores(tokens=None):
        with torch.no_grad():
            if tokens is None:
                return model.generate(input_ids=ids, **gen).scores[0]
            with steer_lm(model, tmap, 1.0, tokens=tokens):
                return model.generate(input_ids=ids, **gen).scores[0]

    plain = first_scores()
    assert not torch.allclose(first_scores("prompt"), plain)  # the prefill is the prompt pass: steered
    assert torch.equal(first_scores("generated"), plain)  # ...and not a decoding step
    assert count_hooks(model) == 0


def test_unknown_method_is_a_clear_error(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="unknown method 'lineer'.*linear"):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, method="lineer")
    from act_core.mapfile import map_meta_defaults

    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        map_meta_defaults("bogus", "mean", "simultaneous", "llama")


def test_one_text_is_enough_for_generate_and_perplexity(llama):
    model, tok = llama
    one = perplexity(model, tok, "The weather is lovely today.")
    assert one.shape == (1,) and torch.equal(one, perplexity(model, tok, ["The weather is lovely today."]))
    assert generate_texts(model, tok, "Once upon a time", max_new_tokens=3) == generate_texts(model, tok, ["Once upon a time"], 3)
    with pytest.raises(ValueError, match="at least one text"):
        perplexity(model, tok, [])


def test_rotary_embedding_is_refused(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="RotaryEmbedding.*not activations"):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers=[r"model\.rotary_emb"])
    with pytest.raises(ValueError, match="RotaryEmbedding"):
        fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers=[r"model\.(rotary_emb|layers\.0\.mlp\.down_proj)"])
    assert count_hooks(model) == 0


def test_nesting_steer_lm_with_the_same_map_is_refused(llama, tmap):
    model, tok = llama
    with steer_lm(model, tmap, 1.0):
        once = _logits(model, tok)
        with pytest.raises(RuntimeError, match="already steering this model"):
            with steer_lm(model, tmap, 1.0):
                pass
        assert torch.equal(once, _logits(model, tok))  # the outer block is untouched
    assert count_hooks(model) == 0
    other = fit_lm_map(model, tok, FRIENDLY, HOSTILE, layers="attention", support="all")
    with steer_lm(model, tmap, 1.0), steer_lm(model, other, 1.0):  # different maps compose
        both = _logits(model, tok)
    assert not torch.equal(both, once)


def test_defaults_follow_the_architecture_table(llama):
    from act_core.llm.presets import DEFAULTS, FALLBACK, default_settings

    model, tok = llama
    assert default_settings(model) == DEFAULTS["llama"] and default_settings("unknown-arch") == FALLBACK
    m = fit_lm_map(model, tok, HOSTILE, FRIENDLY)
    assert m.meta["layers"] == DEFAULTS["llama"]["layers"] and m.meta["pooling"] == DEFAULTS["llama"]["pooling"]
    g, gt = make_model("gemma3", layers=2)
    gm = fit_lm_map(g, gt, HOSTILE, FRIENDLY)
    assert gm.meta["default_support"] == DEFAULTS["gemma3_text"]["support"] == "all"
    assert fit_lm_map(model, tok, HOSTILE, FRIENDLY).meta["default_support"] == "q_0_100"  # llama: Linear-AcT's own
