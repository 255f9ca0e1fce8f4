"""Export: llama.cpp control vectors (GGUF round trip) and Linear-AcT folded into weights."""

import pytest
import torch

from act_core import count_hooks, steer
from act_core.llm.export import FoldError, apply_folded, export_control_vector, fold_map, load_folded, read_control_vector, save_folded
from act_core.llm.adapter import fit_lm_map
from lm_helpers import FRIENDLY, HOSTILE, make_model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 9, 77, 3], [8, 8, 120, 33, 2, 1]])


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", layers=3)


def test_control_vector_round_trip_and_llama_cpp_layout(llama, tmp_path):
    model, tok = llama
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="residual[1:]", method="mean", support="all")
    path = export_control_vector(tmap, tmp_path / "cv.gguf")
    cv = read_control_vector(path)
    assert cv.model_hint == "llama" and cv.layer_count == 2
    assert sorted(cv.directions) == [1, 2]  # direction.k = output of model.layers.k (1-based names, block 0 never)
    for k in (1, 2):
        assert torch.equal(cv.directions[k], tmap[f"model.layers.{k}"].beta)
    # the raw GGUF has the llama.cpp keys and F32 1-D tensors
    import gguf

    r = gguf.GGUFReader(str(path))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert {t.name for t in r.tensors} == {"direction.1", "direction.2"}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and t.n_elements == 32 for t in r.tensors)
    # steering with the read-back vector == steering with the map (x + λβ at every token)
    back = cv.to_map()
    with steer(model, tmap, 0.7):
        a = _logits(model, IDS)
    with steer(model, back, 0.7):
        b = _logits(model, IDS)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_control_vector_refusals(llama, tmp_path):
    model, tok = llama
    lin = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="residual[1:]", method="linear", support="all")
    with pytest.raises(ValueError, match="method='mean'"):
        export_control_vector(lin, tmp_path / "a.gguf")
    banded = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="residual[1:]", method="mean", support="q_0_100")
    with pytest.raises(ValueError, match="support='all'"):
        export_control_vector(banded, tmp_path / "b.gguf")
    zero = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="residual", method="mean", support="all")
    with pytest.raises(ValueError, match="block 0"):
        export_control_vector(zero, tmp_path / "c.gguf")
    attn = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", method="mean", support="all")
    with pytest.raises(ValueError, match="not a decoder block output"):
        export_control_vector(attn, tmp_path / "d.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_control_vector(bad)


@pytest.mark.parametrize("arch,layers", [
    ("llama", "attention"),       # Linear without bias: bias added
    ("llama", "all_ln"),          # RMSNorm without bias: offset pushed into q/k/v and gate/up
    ("gpt2", "all_ln"),           # LayerNorm with bias
    ("gpt2", "mlp"),              # Conv1D with bias
    ("qwen2", "all_ln"),          # q/k/v already have biases
    ("gemma2", "attention"),
])
def test_folded_equals_hooked(arch, layers, tmp_path):
    model, tok = make_model(arch, layers=2)
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers=layers, method="linear", support="all")
    before = _logits(model, IDS)
    with steer(model, tmap, 0.8):
        hooked = _logits(model, IDS)
    res = fit = fold_map(model, tmap, strength=0.8)
    assert torch.equal(_logits(model, IDS), before) and count_hooks(model) == 0  # fold_map leaves the model as it was
    assert not torch.allclose(hooked, before)
    path = save_folded(res, tmp_path / "folded.safetensors", tmap)
    fresh, _ = make_model(arch, layers=2)  # same seed: same weights
    apply_folded(fresh, load_folded(path))
    torch.testing.assert_close(_logits(fresh, IDS), hooked, atol=2e-5, rtol=1e-4)
    assert fit.max_abs_error is not None and fit.max_abs_error < 1e-4


def test_fold_refuses_bands_and_inexact_cases(tmp_path):
    model, tok = make_model("llama", layers=2)
    banded = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", method="linear", support="q_0_100")
    with pytest.raises(FoldError, match="support 'q_0_100'"):
        fold_map(model, banded, 1.0)
    fold_map(model, banded, 1.0, support="all")  # the unbounded map of the same fit folds
    g, gt = make_model("gemma2", layers=2)
    post = fit_lm_map(g, gt, HOSTILE, FRIENDLY, layers="post_ln", method="linear", support="all")
    before = _logits(g, IDS)
    with pytest.raises(FoldError, match="not exact|cannot be folded"):
        fold_map(g, post, 1.0)
    assert torch.equal(_logits(g, IDS), before)  # a failed fold leaves the model as it was
    res_map = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="residual", method="linear", support="all")
    with pytest.raises(FoldError, match="neither a linear layer nor a norm"):
        fold_map(model, res_map, 1.0)
