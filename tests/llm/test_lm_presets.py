"""Layer presets resolved by module structure on tiny models of each architecture."""

import pytest
import torch

from act_core.llm.presets import PresetError, parse_preset, resolve_preset
from lm_helpers import ARCHS, make_model

# expected relative names inside block i, per architecture and preset (None = preset must raise)
L = "model.layers.{i}."
EXPECTED = {
    "llama": {"attention": [L + "self_attn.o_proj"], "mlp": [L + "mlp.down_proj"], "post_ln": None,
              "all_ln": [L + "input_layernorm", L + "post_attention_layernorm"], "residual": ["model.layers.{i}"]},
    "qwen2": {"attention": [L + "self_attn.o_proj"], "mlp": [L + "mlp.down_proj"], "post_ln": None,
              "all_ln": [L + "input_layernorm", L + "post_attention_layernorm"], "residual": ["model.layers.{i}"]},
    "mistral": {"attention": [L + "self_attn.o_proj"], "mlp": [L + "mlp.down_proj"], "post_ln": None,
                "all_ln": [L + "input_layernorm", L + "post_attention_layernorm"], "residual": ["model.layers.{i}"]},
    "gemma2": {"attention": [L + "self_attn.o_proj"], "mlp": [L + "mlp.down_proj"],
               "post_ln": [L + "post_attention_layernorm", L + "post_feedforward_layernorm"],
               "all_ln": [L + "input_layernorm", L + "post_attention_layernorm", L + "pre_feedforward_layernorm",
                          L + "post_feedforward_layernorm"], "residual": ["model.layers.{i}"]},
    "gemma3": {"attention": [L + "self_attn.o_proj"], "mlp": [L + "mlp.down_proj"],
               "post_ln": [L + "post_attention_layernorm", L + "post_feedforward_layernorm"],
               # q_norm / k_norm (per-head width) are not hidden-size norms
               "all_ln": [L + "input_layernorm", L + "post_attention_layernorm", L + "pre_feedforward_layernorm",
                          L + "post_feedforward_layernorm"], "residual": ["model.layers.{i}"]},
    "gpt2": {"attention": ["transformer.h.{i}.attn.c_proj"], "mlp": ["transformer.h.{i}.mlp.c_proj"], "post_ln": None,
             "all_ln": ["transformer.h.{i}.ln_1", "transformer.h.{i}.ln_2"], "residual": ["transformer.h.{i}"]},
    "bert": {"attention": ["encoder.layer.{i}.attention.output.dense"], "mlp": ["encoder.layer.{i}.output.dense"],
             "post_ln": None,
             "all_ln": ["encoder.layer.{i}.attention.output.LayerNorm", "encoder.layer.{i}.output.LayerNorm"],
             "residual": ["encoder.layer.{i}"]},
}


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    model, _ = make_model(request.param, layers=3)
    return request.param, model


@pytest.mark.parametrize("preset", ["attention", "mlp", "post_ln", "all_ln", "residual"])
def test_every_preset_on_every_architecture(arch_model, preset):
    arch, model = arch_model
    want = EXPECTED[arch][preset]
    if want is None:
        with pytest.raises(PresetError, match="no post-sub-layer norms.*all_ln"):
            resolve_preset(model, preset)
        return
    got = resolve_preset(model, preset)
    expected = [w.format(i=i) for i in range(3) for w in want]
    assert list(got) == expected
    for name in got:  # every resolved module exists and steering it changes the output width-consistently
        model.get_submodule(name)


def test_preset_slices(arch_model):
    arch, model = arch_model
    assert len(resolve_preset(model, "attention[1:]")) == 2
    last = resolve_preset(model, "mlp[-1]")
    assert list(last) == [EXPECTED[arch]["mlp"][0].format(i=2)]
    with pytest.raises(PresetError, match="selects no block"):
        resolve_preset(model, "attention[5:9]")


def test_unknown_preset_lists_choices():
    with pytest.raises(PresetError, match="unknown layer preset 'atention'.*attention, mlp, post_ln"):
        parse_preset("atention")
    assert parse_preset("all_ln[2:4]") == ("all_ln", slice(2, 4))
    assert parse_preset("residual[3]") == ("residual", slice(3, 4))


def test_post_ln_found_by_dataflow_not_by_name():
    """Llama's 'post_attention_layernorm' is a pre-MLP norm of the residual sum: not post-LN."""
    model, _ = make_model("llama")
    assert "model.layers.0.post_attention_layernorm" in dict(model.named_modules())
    with pytest.raises(PresetError):
        resolve_preset(model, "post_ln")
    g, _ = make_model("gemma2")
    assert "model.layers.0.post_attention_layernorm" in resolve_preset(g, "post_ln")
    assert "model.layers.0.input_layernorm" not in resolve_preset(g, "post_ln")


def test_presets_resolve_on_base_model_too():
    model, _ = make_model("llama")
    assert list(resolve_preset(model.model, "attention[0]")) == ["layers.0.self_attn.o_proj"]


def test_no_blocks_error():
    with pytest.raises(PresetError, match="no transformer blocks"):
        m = torch.nn.Sequential(torch.nn.Linear(3, 3))
        m.config = type("C", (), {"hidden_size": 3})()
        resolve_preset(m, "attention")
