"""Compare steering methods at equal side effects: KL budgets, knob matching, bootstrap intervals.

A method's knob (AcT's λ, a vector's scale, an ablation's α) trades effect for damage, so
comparing methods at the same knob value means nothing. Here every method is compared at the
same *side effect*:

- **side effect** (:class:`SideEffects`): on neutral text the project never fits on, the mean
  per-token KL divergence ``KL(p_plain ‖ p_steered) = Σ_v p_plain(v) (log p_plain(v) −
  log p_steered(v))`` of the next-token distributions (nats), averaged over every predicted
  token; and the steered perplexity of the same text. The predicted tokens are each text's
  tokens after its first word token, so a prompt prefix (plain prompting) is scored on the
  same tokens as the text alone.
- **matching** (:func:`knob_for_budget`): for a budget ``b`` (e.g. 0.1, 0.5, 1 nat) the knob
  is searched (log-log secant inside a bracket, a few forward passes) until the measured KL is
  within ``±tol`` of ``b``; the measured KL is reported, not the budget.
- **effect** with a percentile bootstrap confidence interval over prompts
  (:func:`bootstrap_ci`), and paired differences between two methods on the same prompts
  (:func:`paired_diff_ci`).

A :class:`Steering` wraps what is compared: a :class:`~act_core.TransportMap` (AcT maps and
mean-difference vectors), a :class:`~act_core.llm.baselines.DirectionalAblation`, or
instruction prefixes (plain prompting: a discrete knob, reported at its own measured KL).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..mapfile import TransportMap
from ..text_checks import check_texts
from .adapter import base_model, steer_lm
from .baselines import DirectionalAblation


# -- what is compared ----------------------------------------------------------------------------


@dataclass
class Steering:
    """One method with a continuous knob (``obj`` = map or ablation) or a list of prompt prefixes."""

    name: str
    obj: object = None
    support: Optional[str] = None
    prefixes: Sequence[str] = ()
    max_knob: float = 8.0
    start_knob: float = 1.0
    info: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.obj is None and not self.prefixes:
            raise ValueError(f"steering {self.name!r} needs a map, an ablation or prompt prefixes")
        if self.obj is not None and not isinstance(self.obj, (TransportMap, DirectionalAblation)):
            raise TypeError(f"steering {self.name!r}: expected a TransportMap or DirectionalAblation, got {type(self.obj).__name__}")

    @property
    def is_prompt(self) -> bool:
        return self.obj is None

    def context(self, model, knob: float):
        """A context manager that steers ``model`` at ``knob`` (nothing for knob 0 or prompting)."""
        if self.obj is None or knob == 0:
            return contextlib.nullcontext()
        if isinstance(self.obj, DirectionalAblation):
            return self.obj.steer(model, knob)
        return steer_lm(model, self.obj, strength=knob, support=self.support)


def fit_methods(model, tokenizer, source: Sequence[str], target: Sequence[str], layers, methods: Sequence[str],
                pooling: str = "mean_nosink", support: Optional[str] = None, batch_size: int = 16,
                **meta) -> Dict[str, TransportMap]:
    """``{method: TransportMap}`` for several AcT methods from ONE collection pass per side.

    The same as calling :func:`~act_core.llm.adapter.fit_lm_map` once per method with the
    simultaneous procedure (each module fitted on unsteered activations), at a fraction of
    the cost.
    """
    from ..estimators import fit_transport
    from ..fitting import _layout, collect
    from ..mapfile import map_meta_defaults
    from .adapter import LMRunner, architecture_of, resolve_layers
    from ..selection import ordered, select_modules

    src, tgt = check_texts(source, "source texts"), check_texts(target, "target texts")
    mods = resolve_layers(model, layers)
    chosen = dict(mods) if isinstance(mods, dict) else select_modules(model, mods)
    names = ordered(model, list(chosen))
    runner = LMRunner(model, tokenizer, batch_size=batch_size)
    was = model.training
    model.eval()
    try:
        a, shapes = collect(runner, src, {n: chosen[n] for n in names}, pooling)
        b, _ = collect(runner, tgt, {n: chosen[n] for n in names}, pooling)
    finally:
        model.train(was)
    out = {}
    for m in methods:
        tmap = TransportMap(meta=map_meta_defaults(m, pooling, "simultaneous", architecture_of(model), src, tgt,
                                                   default_support=support, layers=layers if isinstance(layers, str) else "custom",
                                                   **meta))
        for n in names:
            tmap.add(n, fit_transport(a[n], b[n], m, support), _layout(shapes[n], m), chosen[n])
        out[m] = tmap
    return out


# -- side effects ------------------------------------------------------------------------------


class SideEffects:
    """KL to the unsteered model and perplexity on fixed neutral texts (see module docstring).

    The unsteered log-probabilities are computed once and kept (``tokens × vocab`` float32:
    about 70 MB for 24 short sentences and a 49k vocabulary, 330 MB for 262k).
    """

    def __init__(self, model, tokenizer, texts: Sequence[str], batch_size: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.texts = check_texts(texts, "neutral texts")
        self.batch_size = int(batch_size)
        self.special = list(tokenizer("", add_special_tokens=True)["input_ids"])
        self.words = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in self.texts]
        short = [t for t, w in zip(self.texts, self.words) if len(w) < 2]
        if short:
            raise ValueError(f"neutral text {short[0]!r} has fewer than 2 tokens; nothing would be predicted")
        self.n_tokens = sum(len(w) - 1 for w in self.words)
        self._ref = [lp for lp, _ in self._logprobs(prefix_ids=[])]

    def _batches(self, prefix_ids: List[int]):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for b in range(0, len(self.texts), self.batch_size):
            rows = [self.special + prefix_ids + w for w in self.words[b : b + self.batch_size]]
            t = max(len(r) for r in rows)
            ids = torch.full((len(rows), t), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), t), dtype=torch.long)
            sel_r, sel_p, tgt = [], [], []
            off = len(self.special) + len(prefix_ids)
            for j, (r, w) in enumerate(zip(rows, self.words[b : b + self.batch_size])):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
                for k in range(1, len(w)):  # the position holding w[k-1] predicts w[k]
                    sel_r.append(j)
                    sel_p.append(off + k - 1)
                    tgt.append(w[k])
            yield ids, mask, torch.tensor(sel_r), torch.tensor(sel_p), torch.tensor(tgt)

    def _logprobs(self, prefix_ids: List[int]):
        dev = next(self.model.parameters()).device
        prefix, body = base_model(self.model)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        cap = getattr(getattr(self.model, "config", None), "final_logit_softcapping", None)
        with torch.no_grad():
            for ids, mask, rj, pj, tgt in self._batches(prefix_ids):
                ids, mask = ids.to(dev), mask.to(dev)
                if prefix and head is not None:
                    h = body(input_ids=ids, attention_mask=mask, use_cache=False)
                    h = h.last_hidden_state if hasattr(h, "last_hidden_state") else h[0]
                    logits = head(h[rj.to(dev), pj.to(dev)]).float()
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rj.to(dev), pj.to(dev)].float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                yield torch.log_softmax(logits, dim=-1).cpu(), (rj, tgt)

    def measure(self, steering: Optional[Steering] = None, knob: float = 0.0, prefix: str = "") -> Dict[str, float]:
        """``{"kl": mean per-token KL (nats), "ppl": mean per-text perplexity, "kl_max_text": ...}``."""
        prefix_ids = list(self.tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
        ctx = steering.context(self.model, knob) if steering is not None else contextlib.nullcontext()
        kl_sum, nll_text, kl_text = 0.0, [], []
        with ctx:
            for (lp, (rj, tgt)), ref in zip(self._logprobs(prefix_ids), self._ref):
                kl_tok = (ref.exp() * (ref - lp)).sum(-1).clamp(min=0)
                nll_tok = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                kl_sum += float(kl_tok.double().sum())
                for j in rj.unique(sorted=True).tolist():
                    m = rj == j
                    kl_text.append(float(kl_tok[m].double().mean()))
                    nll_text.append(float(nll_tok[m].double().mean()))
        ppl = sum(math.exp(min(v, 700.0)) for v in nll_text) / len(nll_text)
        return {"kl": kl_sum / self.n_tokens, "ppl": ppl, "kl_max_text": max(kl_text)}


# -- matching a budget -------------------------------------------------------------------------


def knob_for_budget(kl_at: Callable[[float], float], budget: float, hi: float = 8.0, start: float = 1.0,
                    tol: float = 0.2, max_evals: int = 8, known: Optional[Dict[float, float]] = None) -> Dict[str, float]:
    """The knob whose measured KL is within ``budget·(1 ± tol)`` (or the closest one found).

    ``kl_at(knob)`` measures the KL; results are memoised in ``known`` (pass the same dict for
    several budgets of one method). KL is assumed to grow with the knob (it does for every
    method here on the range searched); the search keeps a bracket ``[below, above]`` and steps
    in log-log space (KL ≈ c·knob² for a small shift). Returns ``{"knob", "kl", "reached"}``;
    ``reached`` is False when even ``hi`` stays below the budget or no point fell within ``tol``.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    known = {} if known is None else known
    known.setdefault(0.0, 0.0)

    def ev(x: float) -> float:
        x = float(x)
        if x not in known:
            v = float(kl_at(x))
            known[x] = v if math.isfinite(v) else float("inf")
        return known[x]

    def ok(v: float) -> bool:
        return v > 0 and math.isfinite(v) and abs(math.log(v / budget)) <= math.log(1 + tol)

    guess = start
    for _ in range(max_evals):
        hits = [(k, v) for k, v in known.items() if ok(v)]
        if hits:
            k, v = min(hits, key=lambda kv: abs(math.log(kv[1] / budget)))
            return {"knob": k, "kl": v, "reached": True}
        below = max(((k, v) for k, v in known.items() if v <= budget), key=lambda kv: kv[0])
        aboves = [(k, v) for k, v in known.items() if v > budget]
        above = min(aboves, key=lambda kv: kv[0]) if aboves else None
        if above is None:
            if below[0] >= hi:
                break
            if below[0] == 0:
                guess = min(start, hi)
            else:
                step = math.sqrt(budget / below[1]) if below[1] > 0 else 4.0
                guess = min(below[0] * min(max(step, 1.1), 4.0), hi)
        elif below[0] == 0:
            if math.isfinite(above[1]) and above[1] > 0:
                guess = above[0] * max(math.sqrt(budget / above[1]), 0.125)
            else:
                guess = above[0] / 4
        else:
            (k0, v0), (k1, v1) = below, above
            if math.isfinite(v1) and v0 > 0:
                t = (math.log(budget) - math.log(v0)) / (math.log(v1) - math.log(v0))
                guess = math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0)))
            else:
                guess = math.sqrt(k0 * k1)
        if guess in known:
            break
        ev(guess)
    # no point within tol: the closest one not above budget·(1+tol), else the smallest above
    under = [(k, v) for k, v in known.items() if k > 0 and v <= budget * (1 + tol)]
    if under:
        k, v = max(under, key=lambda kv: kv[1])
    else:
        k, v = min(((k, v) for k, v in known.items() if k > 0), key=lambda kv: kv[1])
    return {"knob": k, "kl": v, "reached": ok(v)}


# -- statistics --------------------------------------------------------------------------------


def bootstrap_ci(scores: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Tuple[float, float, float]:
    """``(mean, low, high)``: percentile bootstrap interval of the mean over the given items."""
    x = torch.as_tensor(list(scores), dtype=torch.float64)
    if x.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)
    means = x[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    return float(x.mean()), float(lo), float(hi)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
                   seed: int = 0) -> Tuple[float, float, float]:
    """Bootstrap interval of ``mean(a) - mean(b)`` resampling the *same* items for both (paired)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: {len(a)} vs {len(b)}")
    return bootstrap_ci([x - y for x, y in zip(a, b)], n_boot, alpha, seed)


# -- one method at several budgets -------------------------------------------------------------

#: effect(steering, knob, prefix) -> {"scores": per-prompt floats (higher = more effect), ...}
EffectFn = Callable[[Optional[Steering], float, str], Dict[str, object]]


def evaluate_at_budgets(steering: Steering, side: SideEffects, effect: EffectFn, budgets: Sequence[float],
                        tol: float = 0.2, max_evals: int = 8, log: Optional[Callable[[str], None]] = None) -> List[Dict[str, object]]:
    """Rows ``{"method", "budget", "knob", "kl", "ppl", "reached", "effect", "ci", "scores", ...}``.

    Continuous methods: one row per budget (knob matched by :func:`knob_for_budget`). Prompt
    prefixes: one row per prefix at its own measured KL (``budget`` None).
    """
    rows: List[Dict[str, object]] = []
    say = log or (lambda m: None)
    if steering.is_prompt:
        for i, p in enumerate(steering.prefixes):
            s = side.measure(prefix=p)
            e = effect(None, 0.0, p)
            m, lo, hi = bootstrap_ci(e["scores"])
            say(f"{steering.name} prefix {i}: KL {s['kl']:.3f}, effect {m:.3f}")
            rows.append({"method": steering.name, "budget": None, "knob": i, "prefix": p, "kl": s["kl"], "ppl": s["ppl"],
                         "reached": True, "effect": m, "ci": [lo, hi], **e})
        return rows
    known: Dict[float, float] = {}
    ppl_at: Dict[float, float] = {}

    def kl_at(k: float) -> float:
        s = side.measure(steering, k)
        ppl_at[k] = s["ppl"]
        return s["kl"]

    for b in budgets:
        r = knob_for_budget(kl_at, b, hi=steering.max_knob, start=steering.start_knob, tol=tol, max_evals=max_evals, known=known)
        e = effect(steering, r["knob"], "")
        m, lo, hi = bootstrap_ci(e["scores"])
        say(f"{steering.name} budget {b}: knob {r['knob']:.3g}, KL {r['kl']:.3f}{'' if r['reached'] else ' (budget not reached)'}, "
            f"effect {m:.3f} [{lo:.3f}, {hi:.3f}]")
        rows.append({"method": steering.name, "budget": b, "knob": r["knob"], "kl": r["kl"], "ppl": ppl_at.get(r["knob"]),
                     "reached": r["reached"], "effect": m, "ci": [lo, hi], **e})
    return rows


__all__ = ["fit_methods", "Steering", "SideEffects", "knob_for_budget", "bootstrap_ci", "paired_diff_ci", "evaluate_at_budgets", "EffectFn"]
