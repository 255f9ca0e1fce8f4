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


@pytest.mark.parametrize("layers", ["attention", "all_ln"])  # all_ln: RMSNorm offsets go into q/k/v/gate/up biases
def test_folded_model_folder_loads_with_plain_from_pretrained(llama, tmp_path, layers):
    import json
    import subprocess
    import sys

    from act_core.llm.export import save_folded_model

    model, tok = llama
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers=layers, method="linear", support="all")
    res = fold_map(model, tmap, strength=0.8)
    folder = save_folded_model(model, tok, res, tmp_path / "folded", tmap)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["attention_bias"] is True and cfg["mlp_bias"] is (layers == "all_ln")
    with torch.no_grad(), steer(model, tmap, 0.8, support="all"):
        want = model(input_ids=IDS).logits
    assert not list(tmp_path.glob(".folded.*"))  # the temporary folder is gone
    if layers != "all_ln":
        return  # save_folded_model already reloaded it with plain from_pretrained; one fresh interpreter is enough
    torch.save(IDS, tmp_path / "ids.pt")
    # a fresh interpreter, transformers only: no act_core, no strict=False, no bias switch by hand
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval(); AutoTokenizer.from_pretrained({str(folder)!r})\n"
            f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
            "with torch.no_grad(): out = m(input_ids=ids).logits\n"
            f"torch.save(out, {str(tmp_path / 'out.pt')!r}); assert 'act_core' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, atol=1e-4, rtol=1e-4)


def test_fold_refuses_a_bias_no_config_switch_can_create(tmp_path):
    from act_core.llm.export import save_folded_model

    model, tok = make_model("qwen2", layers=2)  # Qwen2's o_proj has no bias and no switch for one
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", method="linear", support="all")
    res = fold_map(model, tmap, strength=1.0)
    with pytest.raises(FoldError, match="no switch"):
        save_folded_model(model, tok, res, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_control_vector_scale_is_baked_in(llama, tmp_path):
    model, tok = llama
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="residual[1:]", method="mean", support="all")
    cv = read_control_vector(export_control_vector(tmap, tmp_path / "s.gguf", scale=2.5))
    assert cv.scale == 2.5
    torch.testing.assert_close(cv.directions[1], 2.5 * tmap["model.layers.1"].beta)
    with pytest.raises(ValueError, match="non-zero"):
        export_control_vector(tmap, tmp_path / "z.gguf", scale=0.0)
