"""Choose modules by name pattern.

A pattern is a regular expression matched against the whole dotted module name
(``re.fullmatch``), as in the reference. A pattern may end in ``:k`` to select element
``k`` of a tuple output (``"model.layers.3:0"``). Results keep ``named_modules()`` order,
which is forward order for the models we steer (the order causal fitting uses).
"""

from __future__ import annotations

import difflib
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

Patterns = Union[str, Sequence[str]]


def split_output_index(pattern: str) -> Tuple[str, Optional[int]]:
    """``"a.b:1"`` -> ``("a.b", 1)``; ``"a.b"`` -> ``("a.b", None)``."""
    m = re.fullmatch(r"(.*):(\d+)", pattern)
    return (m.group(1), int(m.group(2))) if m else (pattern, None)


def match_patterns(
    names: Sequence[str], patterns: Sequence[Tuple[str, str]], what: str = "module pattern"
) -> Tuple[Dict[str, Optional[int]], List[str]]:
    """Match ``names`` against ``(label, pattern)`` pairs (full-match regexes, optional ``:k``).

    Returns ``({name: k or None}`` in ``names`` order, the first matching pattern's ``k``
    winning; ``labels that matched nothing)``. An invalid regex is a ValueError that calls it
    a ``what``.
    """
    compiled = []
    for label, p in patterns:
        body, idx = split_output_index(p)
        try:
            compiled.append((label, re.compile(body), idx))
        except re.error as e:
            raise ValueError(f"{what} {p!r} is not a valid regular expression: {e}") from None
    chosen: Dict[str, Optional[int]] = {}
    hits = {label: 0 for label, _, _ in compiled}
    for n in names:
        for label, rx, idx in compiled:
            if rx.fullmatch(n):
                chosen.setdefault(n, idx)
                hits[label] += 1
    return chosen, [label for label, c in hits.items() if c == 0]


def close_names(pattern: str, names: Sequence[str]) -> List[str]:
    """Up to five ``names`` that look like ``pattern`` (for "matched nothing" messages)."""
    return difflib.get_close_matches(split_output_index(pattern)[0], list(names), n=5, cutoff=0.4)


def select_modules(model: torch.nn.Module, patterns: Patterns) -> Dict[str, Optional[int]]:
    """Map every module whose name fully matches a pattern to its tuple output index.

    Raises ValueError naming each pattern that matched nothing, with close module names.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no module patterns given")
    names = [n for n, _ in model.named_modules() if n]
    chosen, empty = match_patterns(names, [(p, p) for p in patterns])
    if empty:
        msgs = []
        for p in empty:
            close = close_names(p, names)
            msgs.append(f"'{p}' matched no module" + (f" (close: {', '.join(close)})" if close else ""))
        raise ValueError("; ".join(msgs) + f". The model has {len(names)} named modules; patterns are full-match regexes.")
    return chosen


def ordered(model: torch.nn.Module, names: List[str]) -> List[str]:
    """``names`` sorted into ``named_modules()`` order."""
    rank = {n: i for i, (n, _) in enumerate(model.named_modules())}
    missing = [n for n in names if n not in rank]
    if missing:
        raise ValueError(f"modules not found in the model: {missing[:5]}")
    return sorted(names, key=rank.__getitem__)
