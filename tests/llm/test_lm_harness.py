"""Sink-free pooling, the baselines (mean-difference vector, directional ablation) and the equal-KL harness."""

import math

import pytest
import torch

from act_core import count_hooks, steer
from act_core.fitting import collect
from act_core.llm.adapter import LMRunner, fit_lm_map, steer_lm
from act_core.llm.baselines import DirectionalAblation, directional_ablation, mean_difference_map, residual_means
from act_core.llm.harness import (SideEffects, Steering, bootstrap_ci, evaluate_at_budgets, fit_methods, knob_for_budget,
                                  paired_diff_ci)
from act_core.pooling import pool
from lm_helpers import FRIENDLY, HOSTILE, make_model

NEUTRAL = ["The weather is lovely today and everyone is smiling.", "Books on the shelf were dusty but bright.",
           "Once upon a time a small robot learned to paint flowers."]


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", layers=3, hidden=32)


# -- pooling -----------------------------------------------------------------------------------


def test_mean_nosink_pooling_known_answer():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    x[0, 1] = 1e6  # the first REAL token of row 0 (left padded): must not count
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    got = pool(x, "mean_nosink", mask)
    torch.testing.assert_close(got[0], x[0, 2:].mean(0))
    torch.testing.assert_close(got[1], x[1, 1])
    one = pool(x[:1], "mean_nosink", torch.tensor([[0, 0, 0, 1]]))  # a one-token text keeps its token
    torch.testing.assert_close(one[0], x[0, 3])
    torch.testing.assert_close(pool(x, "mean_nosink"), x[:, 1:].mean(1))  # no mask: drop position 0
    img = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(pool(img, "mean_nosink"), pool(img, "mean"))  # feature maps: plain mean
    with pytest.raises(ValueError, match="no real token"):
        pool(x, "mean_nosink", torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]]))


# -- baselines ---------------------------------------------------------------------------------


def test_mean_difference_vector_is_the_difference_of_means_and_adds_it(llama):
    model, tok = llama
    tmap = mean_difference_map(model, tok, HOSTILE, FRIENDLY, layer=1)
    runner = LMRunner(model, tok)
    a, _ = collect(runner, HOSTILE, {"model.layers.1": 0}, "mean_nosink")
    b, _ = collect(runner, FRIENDLY, {"model.layers.1": 0}, "mean_nosink")
    v = b["model.layers.1"].mean(0) - a["model.layers.1"].mean(0)
    torch.testing.assert_close(tmap["model.layers.1"].beta, v, atol=1e-5, rtol=1e-5)
    assert torch.all(tmap["model.layers.1"].omega == 1) and tmap.meta["baseline"] == "mean_difference"
    ids = tok(["Hello there friend"], return_tensors="pt")["input_ids"]
    seen = {}
    h = model.model.layers[1].register_forward_hook(lambda m, i, o: seen.__setitem__("x", (o[0] if isinstance(o, tuple) else o).clone()))
    with torch.no_grad():
        model(input_ids=ids)
        plain = seen["x"]
        with steer(model, tmap, strength=2.5):
            model(input_ids=ids)
    h.remove()
    # the steering hook runs after the observer hook registered before it? no: it is added later, so observe the logits
    with torch.no_grad():
        hooked = model.model.layers[1].register_forward_hook(lambda m, i, o: (o[0] + 2.5 * v,) + tuple(o[1:]) if isinstance(o, tuple) else o + 2.5 * v)
        want = model(input_ids=ids).logits
        hooked.remove()
        with steer(model, tmap, strength=2.5):
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert count_hooks(model) == 0 and plain.shape[-1] == 32


def test_directional_ablation_removes_the_direction_and_is_removed(llama):
    model, tok = llama
    abl = directional_ablation(model, tok, HOSTILE, FRIENDLY, layer=1)
    assert abs(float(abl.direction.norm()) - 1) < 1e-6 and len(abl.modules) == 3
    means = residual_means(model, tok, HOSTILE, FRIENDLY, "residual[1]")
    a, b = means["model.layers.1"]
    d = a.mean(0) - b.mean(0)
    torch.testing.assert_close(abl.direction, d / d.norm(), atol=1e-5, rtol=1e-5)
    ids = tok(["Hello there friend", "Thank you"], return_tensors="pt", padding=True)["input_ids"]
    outs = {}
    last = model.model.layers[2]
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with abl.steer(model, 1.0):
            h = last.register_forward_hook(lambda m, i, o: outs.__setitem__("y", o[0] if isinstance(o, tuple) else o))
            after = model(input_ids=ids).logits
            h.remove()
        with abl.steer(model, 0.0):
            same = model(input_ids=ids).logits
    # the observer runs after the ablation hook (registered later): its input has no component along r
    assert float((outs["y"] @ abl.direction).abs().max()) < 1e-4
    assert not torch.allclose(before, after) and torch.equal(before, same)
    assert count_hooks(model) == 0
    with steer_lm(model, abl, 1.0):  # steer_lm accepts it too
        torch.testing.assert_close(model(input_ids=ids).logits, after)
    with pytest.raises(ValueError, match="zero or not finite"):
        DirectionalAblation(torch.zeros(32), ["model.layers.0"])


# -- statistics and matching -------------------------------------------------------------------


def test_bootstrap_intervals():
    m, lo, hi = bootstrap_ci([0.7] * 10)
    assert m == lo == hi == pytest.approx(0.7)
    m, lo, hi = bootstrap_ci([0, 1] * 20)
    assert m == 0.5 and 0.3 < lo < 0.5 < hi < 0.7  # ≈ ±1.96·0.5/√40 = ±0.155
    d, dlo, dhi = paired_diff_ci([1, 1, 0, 1] * 5, [0, 1, 0, 0] * 5)
    assert d == pytest.approx(0.5) and dlo > 0
    with pytest.raises(ValueError, match="same items"):
        paired_diff_ci([1, 0], [1])


def test_knob_for_budget_hits_budgets_with_few_evaluations():
    calls = []

    def kl(k):
        calls.append(k)
        return 0.3 * k ** 2

    known = {}
    r = knob_for_budget(kl, 0.5, known=known)
    assert r["reached"] and abs(math.log(r["kl"] / 0.5)) <= math.log(1.2)
    assert len(calls) <= 4
    n = len(calls)
    r = knob_for_budget(kl, 1.0, known=known)  # reuses the memo
    assert r["reached"] and abs(r["kl"] - 1.0) <= 0.2 and len(calls) - n <= 3
    sat = knob_for_budget(lambda k: 0.2 * (1 - math.exp(-k)), 0.5, hi=8.0)  # never reaches 0.5
    assert not sat["reached"] and sat["knob"] == 8.0
    steep = knob_for_budget(lambda k: float("inf") if k > 2 else k ** 4, 1.0, start=4.0)  # overflow above 2
    assert steep["reached"] and 0.9 < steep["knob"] < 1.1
    with pytest.raises(ValueError, match="positive"):
        knob_for_budget(kl, 0.0)


# -- side effects ------------------------------------------------------------------------------


def test_side_effects_known_answers(llama):
    model, tok = llama
    side = SideEffects(model, tok, NEUTRAL, batch_size=2)
    base = side.measure()
    assert base["kl"] == 0.0
    # perplexity by hand over the tokens after each text's first word token
    ppl = []
    for t in NEUTRAL:
        w = tok(t, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([tok("", add_special_tokens=True)["input_ids"] + w])
        off = ids.shape[1] - len(w)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits.double()[0], -1)
        nll = -sum(lp[off + k - 1, w[k]].item() for k in range(1, len(w))) / (len(w) - 1)
        ppl.append(math.exp(nll))
    assert base["ppl"] == pytest.approx(sum(ppl) / len(ppl), rel=1e-4)
    tmap = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", support="all")
    st = Steering("lin", tmap, support="all")
    s1, s2 = side.measure(st, 1.0), side.measure(st, 3.0)
    assert 0 < s1["kl"] < s2["kl"]
    # KL by hand for the first text
    w = tok(NEUTRAL[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([w])
    with torch.no_grad():
        p = torch.log_softmax(model(input_ids=ids).logits.double()[0, :-1], -1)
        with steer(model, tmap, 3.0, support="all"):
            q = torch.log_softmax(model(input_ids=ids).logits.double()[0, :-1], -1)
    kl0 = float((p.exp() * (p - q)).sum(-1).mean())
    side1 = SideEffects(model, tok, NEUTRAL[:1])
    assert side1.measure(st, 3.0)["kl"] == pytest.approx(kl0, rel=1e-3)
    assert side.measure(prefix="Write kindly. ")["kl"] > 0  # a prefix changes the predictions
    assert count_hooks(model) == 0


def test_fit_methods_equals_one_fit_per_method(llama):
    model, tok = llama
    maps = fit_methods(model, tok, HOSTILE, FRIENDLY, "attention", ["linear", "mean"], pooling="mean_nosink")
    for m in ("linear", "mean"):
        ref = fit_lm_map(model, tok, HOSTILE, FRIENDLY, layers="attention", method=m, pooling="mean_nosink")
        assert maps[m].modules == ref.modules
        for n in ref.modules:
            torch.testing.assert_close(maps[m][n].omega, ref[n].omega)
            torch.testing.assert_close(maps[m][n].beta, ref[n].beta)


def test_evaluate_at_budgets_matches_kl_and_reports_prompts(llama):
    model, tok = llama
    side = SideEffects(model, tok, NEUTRAL)
    tmap = mean_difference_map(model, tok, HOSTILE, FRIENDLY, layer=1)
    seen = []

    def effect(steering, knob, prefix):
        seen.append((knob, prefix))
        return {"scores": [min(1.0, knob / 10)] * 4, "secondary": 0.0, "samples": []}

    rows = evaluate_at_budgets(Steering("vec", tmap, max_knob=200.0), side, effect, (0.0005, 0.002))
    assert [r["budget"] for r in rows] == [0.0005, 0.002]
    for r in rows:
        assert r["reached"] and abs(math.log(r["kl"] / r["budget"])) <= math.log(1.2)
        assert side.measure(Steering("vec", tmap), r["knob"])["kl"] == pytest.approx(r["kl"])
    assert rows[0]["knob"] < rows[1]["knob"]
    prompt_rows = evaluate_at_budgets(Steering("p", prefixes=["Be kind. ", "Be very kind. "]), side, effect, (0.5,))
    assert [r["budget"] for r in prompt_rows] == [None, None] and seen[-1] == (0.0, "Be very kind. ")
    with pytest.raises(ValueError, match="needs a map"):
        Steering("nothing")
