"""Prompt sets for fitting and evaluating image steering maps (style control, concept negation).

Shipped data (``act_core/diffusion/prompts/data/``, written for this project, no third-party text):

- ``captions.txt``: everyday scene captions, one per line. A fixed, deterministic split keeps
  every 5th caption (index % 5 == 4) for evaluation; the rest are for fitting.
- ``styles.json``: ``{style: {"label": str, "tags": [str, ...]}}``. The first 5 tags are the
  core of the style; target prompts use them plus 5 sampled from the rest (the paper's
  construction, 10 tags per prompt).
- ``concepts.json``: ``{concept: {"label", "exclude", "modifiers", "negated"}}``. ``modifiers``
  put the concept into a caption ("with a pink elephant"), ``negated`` ask for its absence
  ("without a pink elephant"); captions containing an ``exclude`` word are not used.

Pairs follow the paper: a style map transports *plain captions* (source) toward *caption +
style tags* (target); a negation map transports *caption + concept modifier* (source) toward
the *plain caption* (target). Unlike the reference (which draws source and target from
different captions) source and target here share captions, row by row: the two sets then
differ only by the style or concept, which helps with small ``n``.

Names are case-insensitive and accept spaces or hyphens for underscores
(``"Pencil Sketch"`` == ``"pencil_sketch"``).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

DATA = Path(__file__).with_name("data")
EVAL_EVERY = 5  # caption i is held out for evaluation when i % EVAL_EVERY == EVAL_EVERY - 1
CORE_TAGS = 5
SAMPLED_TAGS = 5

__all__ = [
    "list_styles", "list_concepts", "captions", "style_pairs", "negation_pairs", "negation_eval_prompts",
    "load_prompt_file", "style_info", "concept_info", "style_label", "concept_label", "normalize_name",
]


# -- shipped data ------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _all_captions() -> Tuple[str, ...]:
    lines = (DATA / "captions.txt").read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip())


@lru_cache(maxsize=None)
def _styles() -> Dict[str, dict]:
    return json.loads((DATA / "styles.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _concepts() -> Dict[str, dict]:
    return json.loads((DATA / "concepts.json").read_text(encoding="utf-8"))


def normalize_name(name: str) -> str:
    """``"Pencil Sketch"`` / ``"pencil-sketch"`` -> ``"pencil_sketch"``."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _lookup(kind: str, name: str, table: Dict[str, dict]) -> Tuple[str, dict]:
    key = normalize_name(name)
    if key in table:
        return key, table[key]
    for k, v in table.items():  # also accept the label ("ukiyo-e", "3d render")
        if normalize_name(v.get("label", "")) == key:
            return k, v
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    extra = " Or pass your own tags (tags=... / --tags)." if kind == "style" else ""
    raise ValueError(f"unknown {kind} {name!r}. Known {kind}s: {', '.join(table)}.{hint}{extra}")


def list_styles() -> List[str]:
    """Names of the shipped styles (keys of ``styles.json``)."""
    return list(_styles())


def list_concepts() -> List[str]:
    """Names of the shipped concepts (keys of ``concepts.json``)."""
    return list(_concepts())


def style_info(style: str) -> dict:
    """``{"name", "label", "tags"}`` of a shipped style; ValueError listing the known ones."""
    key, v = _lookup("style", style, _styles())
    return {"name": key, "label": v["label"], "tags": list(v["tags"])}


def concept_info(concept: str) -> dict:
    """``{"name", "label", "exclude", "modifiers", "negated"}`` of a shipped concept."""
    key, v = _lookup("concept", concept, _concepts())
    return {"name": key, **{k: (list(x) if isinstance(x, list) else x) for k, x in v.items()}}


def style_label(style: str) -> str:
    """Text naming the style for CLIP ("pencil sketch"); free names pass through with spaces."""
    try:
        return style_info(style)["label"]
    except ValueError:
        return re.sub(r"[_\-]+", " ", str(style)).strip()


def concept_label(concept: str) -> str:
    try:
        return concept_info(concept)["label"]
    except ValueError:
        return re.sub(r"[_\-]+", " ", str(concept)).strip()


def captions(split: str = "train") -> List[str]:
    """Shipped captions: ``"train"`` (4 of 5), ``"eval"`` (every 5th, held out) or ``"all"``."""
    allc = _all_captions()
    if split == "all":
        return list(allc)
    if split not in ("train", "eval"):
        raise ValueError(f"unknown caption split {split!r}: choose 'train', 'eval' or 'all'")
    held = [i % EVAL_EVERY == EVAL_EVERY - 1 for i in range(len(allc))]
    return [c for c, h in zip(allc, held) if h == (split == "eval")]


# -- pair construction -------------------------------------------------------------------------


def _draw(pool: Sequence[str], n: int, rng: random.Random) -> List[str]:
    """``n`` items: shuffled passes over ``pool`` (no repeats until the pool is used up)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not pool:
        raise ValueError("no captions to draw from: the caption list is empty")
    out: List[str] = []
    while len(out) < n:
        block = list(pool)
        rng.shuffle(block)
        out.extend(block[: n - len(out)])
    return out


def _join(caption: str, extra: str) -> str:
    """``"A cat on a mat."`` + ``"with a dog"`` -> ``"A cat on a mat, with a dog."``."""
    base = caption.strip().rstrip(".")
    return f"{base}, {extra.strip().rstrip('.')}."


def _tag_list(tags: Union[str, Sequence[str]]) -> List[str]:
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    items = [str(t).replace("_", " ").strip() for t in items]
    items = [t for t in items if t]
    if not items:
        raise ValueError("the style tags are empty: give at least one tag, e.g. tags='watercolor, soft washes'")
    return items


def _clean_captions(caps: Optional[Sequence[str]], split: str) -> List[str]:
    if caps is None:
        return captions(split)
    if isinstance(caps, str):
        raise TypeError("captions must be a list of strings, not one string")
    out = [str(c).strip() for c in caps if str(c).strip()]
    if not out:
        raise ValueError("the caption list is empty (after dropping blank lines)")
    return out


def style_pairs(
    style: str,
    n: int = 64,
    seed: int = 0,
    captions: Optional[Sequence[str]] = None,  # noqa: A002 - public name from the spec
    tags: Union[str, Sequence[str], None] = None,
) -> Tuple[List[str], List[str]]:
    """``(source, target)`` prompt lists of length ``n`` for a style map.

    ``source[i]`` is a plain caption; ``target[i]`` is the same caption followed by 10 style
    tags: the style's first 5 tags plus 5 drawn at random from the rest (fewer when the list
    is shorter). ``tags`` (a comma-separated string or a list) replaces the shipped tags, and
    then ``style`` may be any name. Deterministic for a given ``seed``.
    """
    rng = random.Random(f"style:{seed}")
    tag_list = _tag_list(tags) if tags is not None else style_info(style)["tags"]
    caps = _draw(_clean_captions(captions, "train"), n, rng)
    core, rest = tag_list[:CORE_TAGS], tag_list[CORE_TAGS:]
    target = []
    for c in caps:
        chosen = core + rng.sample(rest, min(SAMPLED_TAGS, len(rest)))
        target.append(f"{c} {', '.join(chosen)}")
    return list(caps), target


def _without_concept(caps: Sequence[str], info: dict) -> List[str]:
    words = [re.escape(w) for w in info.get("exclude", [])]
    if not words:
        return list(caps)
    rx = re.compile(r"\b(" + "|".join(words) + r")s?\b", re.IGNORECASE)
    kept = [c for c in caps if not rx.search(c)]
    if caps and not kept:
        raise ValueError(f"all {len(caps)} captions mention the concept ({', '.join(info.get('exclude', [])[:3])}); "
                         "give captions without it (the target side is the plain caption)")
    return kept


def negation_pairs(
    concept: str,
    n: int = 64,
    seed: int = 0,
    captions: Optional[Sequence[str]] = None,  # noqa: A002
) -> Tuple[List[str], List[str]]:
    """``(source, target)`` for a concept-negation map: source ``caption, <modifier>.`` (the
    concept present), target the plain caption. Modifiers cycle through the concept's list;
    shipped captions that already mention the concept are skipped."""
    info = concept_info(concept)
    rng = random.Random(f"negation:{seed}")
    pool = _without_concept(_clean_captions(captions, "train"), info)
    caps = _draw(pool, n, rng)
    mods = info["modifiers"]
    offset = rng.randrange(len(mods))
    source = [_join(c, mods[(i + offset) % len(mods)]) for i, c in enumerate(caps)]
    return source, list(caps)


def negation_eval_prompts(concept: str, n: int = 16, seed: int = 0) -> List[str]:
    """Held-out captions with a *negated* modifier ("…, without a pink elephant."): the prompts on
    which unsteered models tend to draw the concept anyway."""
    info = concept_info(concept)
    rng = random.Random(f"negation-eval:{seed}")
    caps = _draw(_without_concept(captions("eval"), info), n, rng)
    neg = info["negated"]
    return [_join(c, neg[i % len(neg)]) for i, c in enumerate(caps)]


# -- user files --------------------------------------------------------------------------------

_COLUMNS = ("prompt", "caption", "text")


def _from_json(data, path: Path) -> List[str]:
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):  # COCO captions
        items = [a.get("caption") for a in data["annotations"] if isinstance(a, dict)]
    elif isinstance(data, dict) and isinstance(data.get("prompts"), list):
        items = data["prompts"]
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError(
            f"{path}: unsupported JSON layout; expected a list of strings, a list of objects with a "
            "'prompt'/'caption'/'text' key, {\"prompts\": [...]} or COCO {\"annotations\": [{\"caption\": ...}]}"
        )
    out = []
    for it in items:
        if isinstance(it, dict):
            key = next((k for k in _COLUMNS if k in it), None)
            if key is None:
                raise ValueError(f"{path}: a JSON object has none of the keys {', '.join(_COLUMNS)}: {str(it)[:80]}")
            it = it[key]
        if it is not None:
            out.append(str(it))
    return out


def _from_csv(text: str, delimiter: str = ",") -> List[str]:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(k) for k in _COLUMNS if k in header), None)
    body = rows[1:] if col is not None else rows
    col = 0 if col is None else col
    return [r[col] for r in body if len(r) > col]


def load_prompt_file(path: Union[str, Path]) -> List[str]:
    """Read prompts from a user file; blank entries are dropped.

    Formats, by extension (content sniffing for JSON otherwise): ``.txt`` (one prompt per line),
    ``.json`` (list of strings / objects with ``prompt``/``caption``/``text``, or COCO captions
    ``{"annotations": [{"caption": ...}]}``), ``.jsonl`` (one JSON string or object per line),
    ``.csv``/``.tsv`` (a ``prompt``/``caption``/``text`` column, else the first column).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"prompt file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{p} is a folder; give a prompt file (.txt, .json, .jsonl or .csv)")
    text = p.read_text(encoding="utf-8-sig")
    ext = p.suffix.lower()
    if ext == ".json" or (ext not in (".txt", ".csv", ".tsv", ".jsonl") and text.lstrip()[:1] in ("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        items = _from_json(data, p)
    elif ext == ".jsonl":
        items = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.extend(_from_json([json.loads(line)], p))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{i}: not valid JSON ({e})") from None
    elif ext in (".csv", ".tsv"):
        items = _from_csv(text, "\t" if ext == ".tsv" else ",")
    else:
        items = text.splitlines()
    prompts = [s.strip() for s in items if s and s.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} contains no prompts (it is empty or has only blank entries)")
    return prompts


