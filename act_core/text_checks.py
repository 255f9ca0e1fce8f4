"""Checks on lists of texts (prompts, sentences) shared by every wing."""

from __future__ import annotations

from typing import List, Sequence


def check_texts(texts: Sequence[str], what: str) -> List[str]:
    """``texts`` as a list, or an error naming the problem: one string instead of a list, an empty
    list, or empty / non-string items."""
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: give at least 2 texts")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"{what} has {len(bad)} empty or non-string item(s) (first at index {bad[0]}); remove them")
    return texts
