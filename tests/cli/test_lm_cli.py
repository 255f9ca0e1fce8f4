"""act-steer lm-* subcommands on a tiny saved model: happy paths and clear errors."""

import json

import pytest

from act_core.cli import main
from act_core.mapfile import TransportMap
from act_core.llm.adapter import save_lm
from lm_helpers import FRIENDLY, HOSTILE, make_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model, tok = make_model("llama", layers=2)
    save_lm(model, tok, d / "model")
    (d / "src.txt").write_text("\n".join(HOSTILE) + "\n")
    (d / "tgt.txt").write_text("\n\n".join(FRIENDLY))
    (d / "empty.txt").write_text("\n  \n")
    return d


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fit_generate_export(tiny, capsys):
    m = tiny / "m.safetensors"
    rc, out, err = run(capsys, "lm-fit", "--model", str(tiny / "model"), "--source", str(tiny / "src.txt"),
                       "--target", str(tiny / "tgt.txt"), "--layers", "residual[1:]", "--method", "mean",
                       "--support", "all", "--out", str(m))
    assert rc == 0, err
    assert "3/3 100 %" in err and "done in" in err and "1 modules" in out
    tmap = TransportMap.load(m)
    assert tmap.modules == ["model.layers.1"] and tmap.meta["task"] == "custom"
    rc, out, err = run(capsys, "lm-generate", "--model", str(tiny / "model"), "--map", str(m), "--strength", "0",
                       "--strength", "3", "--prompt", "Once upon a time", "--max-new-tokens", "6")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[λ=0]") and lines[1].startswith("[λ=3]")
    assert lines[0].split("->")[1] != lines[1].split("->")[1]
    rc, out, err = run(capsys, "lm-export", "--map", str(m), "--control-vector", str(tiny / "cv.gguf"))
    assert rc == 0, err and (tiny / "cv.gguf").is_file()
    rc, out, err = run(capsys, "lm-export", "--map", str(m), "--fold", str(tiny / "f.safetensors"), "--model", str(tiny / "model"))
    assert rc == 2 and "neither a linear layer nor a norm" in err


def test_fit_with_regex_layers_and_fold(tiny, capsys):
    m = tiny / "attn.safetensors"
    rc, out, err = run(capsys, "lm-fit", "--model", str(tiny / "model"), "--task", "toxicity", "--limit", "12",
                       "--layers", r"model\.layers\.0\.self_attn\.o_proj,model\.layers\.1\.mlp\.down_proj",
                       "--support", "all", "--out", str(m))
    assert rc == 0, err
    assert TransportMap.load(m).modules == ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"]
    rc, out, err = run(capsys, "lm-export", "--map", str(m), "--fold", str(tiny / "f.safetensors"),
                       "--model", str(tiny / "model"), "--strength", "0.5")
    assert rc == 0, err and "folded at λ=0.5" in out


def test_eval_truthfulness_writes_table_and_plot(tiny, capsys):
    m = tiny / "ln.safetensors"
    assert run(capsys, "lm-fit", "--model", str(tiny / "model"), "--task", "toxicity", "--limit", "10",
               "--layers", "all_ln", "--support", "all", "--out", str(m))[0] == 0
    rc, out, err = run(capsys, "lm-eval", "--model", str(tiny / "model"), "--map", str(m), "--task", "truthfulness",
                       "--strengths", "0,2", "--out", str(tiny / "ev"))
    assert rc == 0, err
    rows = json.loads((tiny / "ev" / "eval.json").read_text())
    assert [r["λ"] for r in rows] == ["0", "2"]
    assert all(0 <= r["MC1"] <= 1 and 0 < r["MC2"] < 1 for r in rows)
    assert rows[0]["MC2"] != rows[1]["MC2"]
    assert "| λ | MC1 | MC2 |" in (tiny / "ev" / "eval.md").read_text()
    assert (tiny / "ev" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    # the generation tasks (they read --prompts, never --prompt)
    prompts = tiny / "prompts.txt"
    prompts.write_text("You are\nThe weather\n", encoding="utf-8")
    rc, out, err = run(capsys, "lm-eval", "--model", str(tiny / "model"), "--map", str(m), "--task", "toxicity",
                       "--strengths", "0,1", "--prompts", str(prompts), "--max-new-tokens", "4", "--out", str(tiny / "tox"))
    assert rc == 0, err
    rows = json.loads((tiny / "tox" / "eval.json").read_text())
    assert [r["λ"] for r in rows] == ["0", "1"] and all(0 <= r["hostile_frac"] <= 1 and r["ppl"] > 0 for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["lm-fit", "--model", "/nonexistent/model", "--task", "toxicity", "--out", "{d}/x.safetensors"], "does not exist"),
    (["lm-fit", "--task", "toxicity", "--out", "{d}/x.safetensors"], "no model: give --model"),
    (["lm-fit", "--model", "{d}/model", "--source", "{d}/empty.txt", "--target", "{d}/tgt.txt", "--out", "{d}/x.safetensors"],
     "has no non-empty lines"),
    (["lm-fit", "--model", "{d}/model", "--source", "{d}/src.txt", "--out", "{d}/x.safetensors"], "go together"),
    (["lm-fit", "--model", "{d}/model", "--task", "toxicity", "--layers", "atention", "--out", "{d}/x.safetensors"],
     "unknown layer preset 'atention'"),
    (["lm-fit", "--model", "{d}/model", "--task", "toxicity", "--layers", "post_ln", "--out", "{d}/x.safetensors"],
     "no post-sub-layer norms"),
    (["lm-fit", "--model", "{d}/model", "--task", "concept", "--concept", "dragons", "--out", "{d}/x.safetensors"],
     "unknown concept 'dragons'"),
    (["lm-fit", "--model", "{d}/model", "--task", "toxicity", "--out", "{d}/nodir/x.safetensors"], "does not exist"),
    (["lm-fit", "--model", "{d}/model", "--task", "toxicity", "--out", "{d}/x.pt"], "must end in .safetensors"),
    (["lm-generate", "--model", "{d}/model", "--map", "{d}/missing.safetensors"], "missing.safetensors"),
    (["lm-eval", "--model", "{d}/model", "--map", "{d}/missing.safetensors", "--task", "toxicity", "--out", "{d}/e"], "missing"),
    (["lm-export", "--map", "{d}/missing.safetensors"], "nothing to do"),
    (["lm-eval", "--model", "{d}/model", "--map", "{d}/missing.safetensors", "--task", "toxicity", "--strengths", "0,nan",
      "--out", "{d}/e"], "finite numbers"),
])
def test_cli_errors(tiny, capsys, argv, message):
    rc, out, err = run(capsys, *[a.format(d=tiny) for a in argv])
    assert rc == 2
    assert "error:" in err and message in err
    assert not (tiny / "x.safetensors").exists()


@pytest.mark.parametrize("argv,message", [
    (["--layers", "atention"], "unknown layer preset 'atention'"),
    (["--layers", "attention[x]"], "unknown layer preset"),
    (["--layers", r"model\.layers\.(0"], "not a valid regular expression"),
    (["--support", "q_1_2"], "unknown support 'q_1_2'"),
    (["--task", "concept", "--concept", "dragons"], "unknown concept 'dragons'"),
    (["--task", "concept"], "needs --concept"),
])
def test_fit_checks_arguments_before_loading_the_model(tmp_path, capsys, argv, message):
    """The model path does not exist: had the model been loaded first, the error would name the path."""
    base = ["lm-fit", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "x.safetensors")]
    if "--task" not in argv:
        base += ["--task", "toxicity"]
    rc, out, err = run(capsys, *(base + argv))
    assert rc == 2 and message in err and "does not exist" not in err


def test_generate_and_eval_check_support_before_loading(tmp_path, capsys):
    rc, _, err = run(capsys, "lm-generate", "--model", str(tmp_path / "none"), "--support", "bogus")
    assert rc == 2 and "unknown support 'bogus'" in err
    rc, _, err = run(capsys, "lm-eval", "--model", str(tmp_path / "none"), "--map", str(tmp_path / "m.safetensors"),
                     "--task", "concept", "--out", str(tmp_path / "e"))
    assert rc == 2 and "needs --concept" in err
    rc, _, err = run(capsys, "lm-eval", "--model", str(tmp_path / "none"), "--map", str(tmp_path / "m.safetensors"),
                     "--task", "custom", "--out", str(tmp_path / "e"))
    assert rc == 2 and "--task custom needs --source FILE and --target FILE" in err


def test_causal_reference_procedure_is_offered(tiny, capsys):
    m = tiny / "cr.safetensors"
    rc, out, err = run(capsys, "lm-fit", "--model", str(tiny / "model"), "--task", "toxicity", "--limit", "8",
                       "--layers", "attention", "--procedure", "causal_reference", "--out", str(m))
    assert rc == 0, err
    assert TransportMap.load(m).meta["procedure"] == "causal_reference"


def test_eval_scores_a_users_own_task_files(tiny, capsys):
    m = tiny / "own.safetensors"
    assert run(capsys, "lm-fit", "--model", str(tiny / "model"), "--source", str(tiny / "src.txt"), "--target",
               str(tiny / "tgt.txt"), "--layers", "attention", "--support", "all", "--out", str(m))[0] == 0
    prompts = tiny / "own_prompts.txt"
    prompts.write_text("You are\nThe weather\n", encoding="utf-8")
    rc, out, err = run(capsys, "lm-eval", "--model", str(tiny / "model"), "--map", str(m), "--task", "custom",
                       "--source", str(tiny / "src.txt"), "--target", str(tiny / "tgt.txt"), "--prompts", str(prompts),
                       "--strengths", "0,8", "--max-new-tokens", "4", "--out", str(tiny / "own"))
    assert rc == 0, err
    rows = json.loads((tiny / "own" / "eval.json").read_text())
    assert [r["λ"] for r in rows] == ["0", "8"] and all(0 <= r["target_frac"] <= 1 for r in rows)
    assert rows[0]["target_score"] != rows[1]["target_score"]  # the judge sees the steered continuations


def test_fold_writes_a_complete_model_folder(tiny, capsys):
    m = tiny / "attn_all.safetensors"
    assert run(capsys, "lm-fit", "--model", str(tiny / "model"), "--task", "toxicity", "--limit", "10",
               "--layers", "attention", "--support", "all", "--out", str(m))[0] == 0
    rc, out, err = run(capsys, "lm-export", "--map", str(m), "--fold", str(tiny / "folded"), "--model", str(tiny / "model"),
                       "--strength", "0.5")
    assert rc == 0, err and "complete model" in out
    assert (tiny / "folded" / "config.json").is_file() and (tiny / "folded" / "tokenizer.json").is_file()
    cfg = json.loads((tiny / "folded" / "config.json").read_text())
    assert cfg["attention_bias"] is True  # o_proj got the offset as a bias


def test_eval_sentiment_uses_vader_and_the_embedding_judge(tiny, capsys):
    pytest.importorskip("vaderSentiment")
    m = tiny / "sent.safetensors"
    assert run(capsys, "lm-fit", "--model", str(tiny / "model"), "--task", "sentiment", "--concept", "negative", "--limit", "8",
               "--layers", "attention", "--out", str(m))[0] == 0
    assert TransportMap.load(m).meta["task"] == "sentiment"
    rc, out, err = run(capsys, "lm-eval", "--model", str(tiny / "model"), "--map", str(m), "--task", "sentiment",
                       "--concept", "negative", "--strengths", "0", "--max-new-tokens", "3", "--out", str(tiny / "sent"))
    assert rc == 0, err
    row = json.loads((tiny / "sent" / "eval.json").read_text())[0]
    assert set(row) >= {"negative_frac (VADER)", "negative_frac (MiniLM)", "ppl"}
