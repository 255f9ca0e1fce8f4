"""Shipped LLM task data, loaders for the paper's local files, and the evaluation helpers."""

import json

import pytest
import torch

from act_core.llm import tasks as T
from act_core.llm.evaluate import CentroidScorer, MiniLM, keyword_rate, line_plot, markdown_table, mc_fit_texts, mc_prompt, mc_scores
from act_core.llm.adapter import sequence_logprobs
from lm_helpers import make_model


def test_shipped_data_sizes_and_hygiene():
    hostile, friendly = T.toxicity_texts()
    assert len(hostile) >= 200 and len(friendly) >= 200
    assert len(set(hostile)) == len(hostile) and len(set(friendly)) == len(friendly)
    assert not set(hostile) & set(friendly)
    assert len(T.hostile_prompts()) == 20 and len(T.neutral_prompts()) == 20 and len(T.neutral_texts()) == 40
    assert set(T.concepts()) == {"football", "cloud", "baby", "church", "book", "flower"}
    for c in T.concepts():
        src, tgt = T.concept_texts(c)
        assert len(tgt) == 30 and not set(src) & set(tgt)
        assert len(src) == 60 + 5 * 30
        assert keyword_rate(tgt, T.concept_keywords(c)) >= 0.85  # the keywords describe the concept's sentences
    items = T.truthfulqa_items()
    assert 60 <= len(items) <= 100
    for it in items:
        assert it.correct and len(it.incorrect) >= 2 and not set(it.correct) & set(it.incorrect)
    s, t = T.toxicity_texts(limit=50, seed=3)
    assert len(s) == len(t) == 50 and s == T.toxicity_texts(limit=50, seed=3)[0]


def test_jigsaw_csv_loader(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(
        "id,comment_text,toxic,severe_toxic,obscene,threat,insult,identity_hate\n"
        "1,you are awful,1,0,0,0,1,0\n2,nice work,0,0,0,0,0,0\n3,insult only,0,0,0,0,1,0\n"
        '4,"thanks, friend",0,0,0,0,0,0\n5,go away idiot,1,0,0,0,0,0\n'
    )
    src, tgt = T.toxicity_texts(p)
    assert src == ["you are awful", "go away idiot"] and tgt == ["nice work", "thanks, friend"]
    (tmp_path / "bad.csv").write_text("text,label\nhi,1\n")
    with pytest.raises(ValueError, match="not a Jigsaw-style CSV"):
        T.toxicity_texts(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.toxicity_texts(tmp_path / "nope.csv")


def test_onesec_and_truthfulqa_loaders(tmp_path):
    (tmp_path / "sense").mkdir()
    (tmp_path / "sense" / "balloon.json").write_text(json.dumps({"sentences": {"positive": ["a red balloon"], "negative": ["a car", "tea"]}}))
    src, tgt = T.concept_texts("balloon", tmp_path)
    assert tgt == ["a red balloon"] and src == ["a car", "tea"]
    csvp = tmp_path / "TruthfulQA.csv"
    csvp.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        'Adversarial,Misc,Is the sky green?,No it is blue,"No it is blue; It is blue",Yes; It is green,x\n'
    )
    it = T.truthfulqa_items(csvp)[0]
    assert it.correct == ["No it is blue", "It is blue"] and it.incorrect == ["Yes", "It is green"]
    mc = tmp_path / "mc_task.json"
    mc.write_text(json.dumps([{"question": "Q?", "mc1_targets": {"A": 1, "B": 0}, "mc2_targets": {"A": 1, "C": 1, "B": 0, "D": 0}}]))
    it = T.truthfulqa_items(mc)[0]
    assert it.correct == ["A", "C"] and it.incorrect == ["B", "D"]


def test_read_lines(tmp_path):
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no non-empty lines"):
        T.read_lines(tmp_path / "e.txt")
    (tmp_path / "a.txt").write_text(" one \n\ntwo\n")
    assert T.read_lines(tmp_path / "a.txt") == ["one", "two"]


def test_keyword_rate_known_answers():
    assert keyword_rate(["We watched the football match.", "Tea time.", "Two goals!", "goalkeeper"], ["football", "goal"]) == 0.5
    assert keyword_rate([], ["x"]) != keyword_rate([], ["x"])  # nan


@pytest.fixture(scope="module")
def minilm():
    return MiniLM()


def test_minilm_embeddings_and_centroid_scorer(minilm):
    e = minilm.embed(["A cat sat on the mat.", "A kitten sat on the rug.", "Stock markets fell sharply today."])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
    hostile, friendly = T.toxicity_texts()
    sc = CentroidScorer(minilm, hostile[::2], friendly[::2])
    held_h, held_f = hostile[1::2], friendly[1::2]  # not in the centroids
    acc = (float((sc.scores(held_h) > 0).float().mean()) + float((sc.scores(held_f) < 0).float().mean())) / 2
    assert acc > 0.9


def test_mc_scores_match_manual_computation():
    model, tok = make_model("llama")
    items = T.truthfulqa_items()[:5]
    r = mc_scores(model, tok, items, batch_size=4)
    mc1 = mc2 = 0.0
    for it in items:
        answers = list(it.correct) + list(it.incorrect)
        lp, _ = sequence_logprobs(model, tok, [mc_prompt(it.question)] * len(answers), [" " + a for a in answers])
        mc1 += float(lp[0] > lp[len(it.correct):].max())
        p = torch.exp(lp - lp.max())
        mc2 += float(p[: len(it.correct)].sum() / p.sum())
    assert r["n"] == 5
    assert r["mc1"] == pytest.approx(mc1 / 5) and r["mc2"] == pytest.approx(mc2 / 5, abs=1e-9)
    src, tgt = mc_fit_texts(items)
    assert len(src) == sum(len(i.incorrect) for i in items) and src[0].startswith("Q: ")


def test_markdown_and_plot(tmp_path):
    md = markdown_table([{"λ": 0.0, "score": 0.12345, "name": "a"}, {"λ": 1.0, "score": float("nan"), "name": "b"}])
    assert md.splitlines()[0] == "| λ | score | name |" and "| 0.000 | 0.123 | a |" in md and "–" in md
    p = line_plot([{"title": "t", "xlabel": "λ", "ylabel": "y", "series": {"linear": ([0, 1], [0.1, 0.5]), "mean": ([0, 1], [0.1, 0.3])}},
                   {"title": "u", "series": {"x": ([0, 1], [1.0, 1.0])}}], tmp_path / "p.png")
    from PIL import Image

    im = Image.open(p)
    assert im.size == (840, 300)
    assert len(im.convert("RGB").getcolors(maxcolors=100000)) > 3  # something was drawn


def test_sweep_reuses_unsteered_runs_and_measures_cost():
    from act_core.llm.evaluate import sweep
    from act_core.llm.adapter import fit_lm_map, perplexity
    from lm_helpers import FRIENDLY, HOSTILE

    model, tok = make_model("llama")
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="mlp", method="mean")
    cache, calls = {}, []
    prompts, texts = ["Once upon a time", "Thank you"], ["The weather is lovely today.", "Books on the shelf."]
    scorers = {"chars": lambda t: sum(len(x) for x in t) / len(t)}
    a = sweep(model, tok, tmap, [0.0, 40.0], prompts, scorers, ppl_texts=texts, max_new_tokens=5, cache=cache,
              progress=calls.append)
    b = sweep(model, tok, tmap, [0.0], prompts, scorers, ppl_texts=texts, max_new_tokens=5, cache=cache, progress=calls.append)
    assert len(calls) == 2  # the second sweep's λ=0 came from the cache
    assert a[0].samples == b[0].samples and a[0].metrics == b[0].metrics
    assert a[0].metrics["ppl"] == pytest.approx(float(perplexity(model, tok, texts).mean()))
    assert a[1].metrics["ppl"] != a[0].metrics["ppl"] and a[1].samples != a[0].samples
