"""LLM steering tasks: the shipped data, and loaders for the paper's datasets from local files.

Shipped (``act_core/llm/data/lm_*.json``, written for this project, no third-party text):

- **toxicity-like**: 201 hostile / rude sentences (source) vs 200 friendly ones (target),
  plus 20 starters that invite a hostile continuation.
- **concepts**: 30 sentences each about football, cloud, baby, church, book, flower, plus 60
  unrelated everyday sentences and per-concept keywords. For concept ``c`` the target is
  ``c``'s sentences and the source is the unrelated sentences plus the other concepts'.
- **truthfulness MC**: 70 questions with true answers (first = best) and false answers
  stating common misconceptions (TruthfulQA-style; scored in :mod:`act_core.llm.evaluate`).
- **neutral**: 40 factual sentences for perplexity and 20 neutral generation prompts.
- **sentiment**: 64 positive / 64 negative review-style sentences (fit), 24 + 24 others
  reserved for the embedding judge, and 40 neutral review starters ("The restaurant we
  went to last night"): 16 to choose settings, 24 held out for reporting.

Local files of the paper's datasets (never downloaded):

- Jigsaw toxic-comment ``train.csv`` -> :func:`toxicity_texts` ``path=`` (source = ``toxic``
  rows, target = rows with no category flagged; rows flagged in other categories only are
  dropped, as in the reference).
- OneSec-style concepts -> :func:`concept_texts` ``path=``: a folder with
  ``sense/<concept>.json`` or one JSON file, holding ``positive``/``negative`` sentence lists
  (top level or under ``sentences``).
- TruthfulQA ``TruthfulQA.csv`` (Question, Best Answer, Correct Answers, Incorrect Answers;
  answers separated by ``;``) or ``mc_task.json`` (``mc1_targets``/``mc2_targets``) ->
  :func:`truthfulqa_items` ``path=``.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

DATA_DIR = Path(__file__).with_name("data")
PathLike = Union[str, Path]


def _load(name: str) -> dict:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return p


def _balance(a: List[str], b: List[str], limit: Optional[int], seed: int) -> Tuple[List[str], List[str]]:
    rng = random.Random(seed)
    n = min(len(a), len(b)) if limit is None else min(len(a), len(b), int(limit))
    return rng.sample(a, n), rng.sample(b, n)


def read_lines(path: PathLike, what: str = "text file") -> List[str]:
    """Non-empty stripped lines of a UTF-8 text file; an empty file is an error."""
    p = _existing(path, what)
    lines = [l.strip() for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
    if not lines:
        raise ValueError(f"{what} {str(path)!r} has no non-empty lines: put one text per line")
    return lines


# -- toxicity-like ---------------------------------------------------------------------------


def toxicity_texts(path: Optional[PathLike] = None, limit: Optional[int] = None, seed: int = 0,
                   balanced: bool = False) -> Tuple[List[str], List[str]]:
    """``(source, target)`` = (hostile / toxic, friendly / non-toxic) texts.

    With ``path`` a Jigsaw-style CSV (``comment_text``, ``toxic`` and the other category
    columns) is read instead of the shipped sentences. ``balanced`` (or ``limit``) samples
    equal counts with ``seed``.
    """
    if path is None:
        d = _load("lm_toxicity.json")
        src, tgt = list(d["hostile"]), list(d["friendly"])
    else:
        p = _existing(path, "toxicity CSV")
        src, tgt = [], []
        with p.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            if "comment_text" not in cols or "toxic" not in cols:
                raise ValueError(f"{str(path)!r} is not a Jigsaw-style CSV: need columns comment_text and toxic, got {cols[:8]}")
            cats = [c for c in ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate") if c in cols]
            for row in reader:
                text = (row["comment_text"] or "").strip()
                if not text:
                    continue
                flags = [str(row[c]).strip() in ("1", "1.0", "True", "true") for c in cats]
                if flags[cats.index("toxic")]:
                    src.append(text)
                elif not any(flags):
                    tgt.append(text)
        if not src or not tgt:
            raise ValueError(f"{str(path)!r} gave {len(src)} toxic and {len(tgt)} non-toxic rows; both are needed")
    if balanced or limit is not None:
        src, tgt = _balance(src, tgt, limit, seed)
    return src, tgt


# -- concepts --------------------------------------------------------------------------------


def concepts() -> List[str]:
    """Names of the shipped concepts."""
    return list(_load("lm_concepts.json")["concepts"])


def concept_keywords(concept: str, strict: bool = False) -> List[str]:
    """The concept's keywords; ``strict=True``: only words that name the concept itself
    (football: football, soccer, goalkeeper, ...; not team, match, ball, score, player)."""
    d = _load("lm_concepts.json")["concepts"]
    if concept not in d:
        raise ValueError(f"no keywords for concept {concept!r}; shipped concepts: {', '.join(d)}")
    return list(d[concept]["strict_keywords" if strict else "keywords"])


def _onesec_lists(data: dict) -> Tuple[List[str], List[str]]:
    d = data.get("sentences", data) if isinstance(data, dict) else {}
    pos, neg = d.get("positive"), d.get("negative")
    if not isinstance(pos, list) or not isinstance(neg, list):
        raise ValueError("a OneSec-style file needs 'positive' and 'negative' sentence lists (top level or under 'sentences')")
    return [str(s).strip() for s in neg if str(s).strip()], [str(s).strip() for s in pos if str(s).strip()]


def concept_texts(concept: str, path: Optional[PathLike] = None, limit: Optional[int] = None,
                  seed: int = 0) -> Tuple[List[str], List[str]]:
    """``(source, target)`` for inducing ``concept``: (unrelated sentences, sentences about it)."""
    if path is None:
        d = _load("lm_concepts.json")
        if concept not in d["concepts"]:
            raise ValueError(f"unknown concept {concept!r}: shipped concepts are {', '.join(d['concepts'])}; or pass path= to a OneSec-style file")
        tgt = list(d["concepts"][concept]["sentences"])
        src = list(d["unrelated"]) + [s for c, v in d["concepts"].items() if c != concept for s in v["sentences"]]
    else:
        p = _existing(path, "concept data")
        if p.is_dir():
            f = p / "sense" / f"{concept}.json"
            if not f.is_file():
                f = p / f"{concept}.json"
            if not f.is_file():
                raise FileNotFoundError(f"no {concept}.json under {str(p)!r} or its sense/ folder")
            p = f
        src, tgt = _onesec_lists(json.loads(p.read_text(encoding="utf-8")))
    if limit is not None:
        rng = random.Random(seed)
        src = rng.sample(src, min(limit, len(src)))
        tgt = rng.sample(tgt, min(limit, len(tgt)))
    return src, tgt


# -- truthfulness MC ---------------------------------------------------------------------------


@dataclass
class MCItem:
    """One multiple-choice question: ``correct[0]`` is the best answer (MC1)."""

    question: str
    correct: List[str]
    incorrect: List[str]
    extra: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.question.strip() or not self.correct or not self.incorrect:
            raise ValueError(f"MC item {self.question[:40]!r} needs a question, at least one true and one false answer")


def _split_answers(s: str) -> List[str]:
    return [a.strip() for a in (s or "").split(";") if a.strip()]


def truthfulqa_items(path: Optional[PathLike] = None, limit: Optional[int] = None) -> List[MCItem]:
    """The shipped MC set, or TruthfulQA from a local ``TruthfulQA.csv`` / ``mc_task.json``."""
    if path is None:
        items = [MCItem(i["question"], list(i["correct"]), list(i["incorrect"])) for i in _load("lm_truthfulqa_mc.json")["items"]]
    else:
        p = _existing(path, "TruthfulQA file")
        items = []
        if p.suffix.lower() == ".csv":
            with p.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                need = {"Question", "Best Answer", "Correct Answers", "Incorrect Answers"}
                if not need <= set(reader.fieldnames or []):
                    raise ValueError(f"{str(path)!r} lacks TruthfulQA columns {sorted(need)}")
                for row in reader:
                    best = row["Best Answer"].strip()
                    correct = [best] + [a for a in _split_answers(row["Correct Answers"]) if a != best]
                    items.append(MCItem(row["Question"].strip(), correct, _split_answers(row["Incorrect Answers"])))
        else:
            data = json.loads(p.read_text(encoding="utf-8"))
            rows = data.get("items", data) if isinstance(data, dict) else data
            for r in rows:
                if "mc1_targets" in r:
                    mc1, mc2 = r["mc1_targets"], r.get("mc2_targets", r["mc1_targets"])
                    best = [a for a, v in mc1.items() if v][:1]
                    correct = best + [a for a, v in mc2.items() if v and a not in best]
                    wrong = [a for a, v in mc2.items() if not v] or [a for a, v in mc1.items() if not v]
                    items.append(MCItem(r["question"], correct, wrong))
                else:
                    items.append(MCItem(r["question"], list(r["correct"]), list(r["incorrect"])))
    if not items:
        raise ValueError(f"no multiple-choice items found in {str(path)!r}")
    return items[:limit] if limit else items


# -- neutral -----------------------------------------------------------------------------------


def neutral_texts() -> List[str]:
    """Factual sentences for perplexity (never used for fitting)."""
    return list(_load("lm_neutral.json")["perplexity"])


def hostile_prompts(split: str = "report") -> List[str]:
    """Starters that invite a hostile continuation ("You are such a", ...), for mitigation sweeps.

    ``split="report"``: the 20 used for reported numbers; ``"search"``: 16 others, used only to
    choose settings (so the reported prompts stay held out).
    """
    d = _load("lm_toxicity.json")
    if split not in ("report", "search"):
        raise ValueError(f"unknown split {split!r}: 'report' or 'search'")
    return list(d["prompts"] if split == "report" else d["search_prompts"])


# -- sentiment ---------------------------------------------------------------------------------


def sentiment_texts(direction: str = "positive") -> Tuple[List[str], List[str]]:
    """``(source, target)`` for steering toward ``direction`` (``"positive"``: negative -> positive
    sentences; ``"negative"``: positive -> negative)."""
    d = _load("lm_sentiment.json")
    if direction == "positive":
        return list(d["negative"]), list(d["positive"])
    if direction == "negative":
        return list(d["positive"]), list(d["negative"])
    raise ValueError(f"unknown sentiment direction {direction!r}: 'positive' or 'negative'")


def sentiment_judge_texts() -> Tuple[List[str], List[str]]:
    """``(positive, negative)`` sentences reserved for the embedding judge (never used to fit)."""
    d = _load("lm_sentiment.json")
    return list(d["judge_positive"]), list(d["judge_negative"])


def sentiment_prompts(split: str = "report") -> List[str]:
    """Neutral review starters: ``"report"`` (24, held out) or ``"search"`` (16, for choosing settings)."""
    p = _load("lm_sentiment.json")["prompts"]
    if split not in ("report", "search"):
        raise ValueError(f"unknown split {split!r}: 'report' or 'search'")
    return list(p[16:] if split == "report" else p[:16])


def neutral_prompts() -> List[str]:
    """Neutral generation starters ("Once upon a time", ...)."""
    return list(_load("lm_neutral.json")["prompts"])


TASKS = ("toxicity", "concept", "sentiment")


def task_texts(task: str, concept: Optional[str] = None, path: Optional[PathLike] = None,
               limit: Optional[int] = None, seed: int = 0) -> Tuple[List[str], List[str]]:
    """``(source, target)`` for ``task`` = ``toxicity``, ``concept`` (needs ``concept``) or
    ``sentiment`` (``concept`` = the direction, ``positive`` (default) or ``negative``)."""
    if task == "toxicity":
        return toxicity_texts(path, limit=limit, seed=seed)
    if task == "sentiment":
        if path is not None:
            raise ValueError("task 'sentiment' uses the shipped sentences; pass your own files as --source/--target")
        src, tgt = sentiment_texts(concept or "positive")
        if limit is not None:
            src, tgt = _balance(src, tgt, limit, seed)
        return src, tgt
    if task == "concept":
        if not concept:
            raise ValueError(f"task 'concept' needs a concept name: one of {', '.join(concepts())}")
        return concept_texts(concept, path, limit=limit, seed=seed)
    raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")


__all__ = [
    "toxicity_texts", "concept_texts", "concepts", "concept_keywords", "truthfulqa_items", "MCItem",
    "neutral_texts", "neutral_prompts", "hostile_prompts", "read_lines", "task_texts", "TASKS", "DATA_DIR",
    "sentiment_texts", "sentiment_judge_texts", "sentiment_prompts",
]
