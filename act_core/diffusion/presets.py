"""Named layer presets for diffusion models, resolved on CANONICAL module names.

A :class:`Preset` is a list of full-match regular expressions over a family's canonical
names (for SDXL: ``unet.<diffusers UNet name>``, ``text_encoder.<CLIP-L name below
text_model>``, ``text_encoder_2.<OpenCLIP-G name below text_model>``). Each family module
(:mod:`act_core.diffusion.families`) owns its preset table; :func:`resolve_modules` works on
any iterable of canonical names, so the ComfyUI side can resolve presets on names translated
from its own module tree.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..selection import close_names, match_patterns

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Preset:
    name: str
    patterns: Tuple[str, ...]
    description: str


def preset_table(*presets: Preset) -> Dict[str, Preset]:
    return {p.name: p for p in presets}


def _close_presets(name: str, presets: Mapping[str, Preset]) -> List[str]:
    return difflib.get_close_matches(name, list(presets), n=3, cutoff=0.5)


def resolve_modules(
    name_or_patterns: Union[str, Sequence[str]], canonical_names: Iterable[str], presets: Mapping[str, Preset]
) -> Dict[str, Optional[int]]:
    """``{canonical name: tuple-output index or None}`` selected by a preset name, a regex
    (``:k`` suffix = index ``k`` of a tuple output), or a list mixing both.

    Names come back in the order of ``canonical_names``. Raises ValueError for an unknown
    preset (with close preset names) or a pattern that matches nothing (with close names).
    """
    names = [n for n in canonical_names if n]
    items = [name_or_patterns] if isinstance(name_or_patterns, str) else list(name_or_patterns)
    if not items:
        raise ValueError(f"no layer preset or pattern given; presets: {', '.join(presets)}")
    patterns: List[Tuple[str, str]] = []  # (shown as, pattern)
    for it in items:
        it = str(it).strip()
        if it in presets:
            patterns.extend((it, p) for p in presets[it].patterns)
        else:
            patterns.append((it, it))
    chosen, empty = match_patterns(names, patterns, what="layer pattern")
    if empty:
        msgs = []
        for s in empty:
            if _IDENT.match(s) and s not in names and s not in presets:
                close = _close_presets(s, presets)
                msgs.append(f"unknown layer preset {s!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            else:
                close = close_names(s, names)
                msgs.append(f"{s!r} matched no module" + (f" (close: {', '.join(close)})" if close else ""))
        raise ValueError(
            "; ".join(msgs) + f". Presets: {', '.join(presets)}; or give full-match regexes over canonical names "
            f"(e.g. 'unet\\.mid_block\\..*norm.*'); {len(names)} names were searched."
        )
    return chosen


def resolve_preset(name_or_patterns: Union[str, Sequence[str]], canonical_names: Iterable[str],
                   presets: Mapping[str, Preset]) -> List[str]:
    """The canonical names of :func:`resolve_modules`, without tuple-output indices."""
    return list(resolve_modules(name_or_patterns, canonical_names, presets))
