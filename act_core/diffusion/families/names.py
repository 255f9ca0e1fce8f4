"""Name tables shared by the family modules: leaf-name templates translated both ways
(:class:`NameTable`), blocks with several output streams (:class:`StreamRule`), and the error a
name without a counterpart raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple, Union

Index = Union[int, Tuple[int, ...], None]


class NameTranslationError(ValueError):
    """A module name has no counterpart in the other naming scheme."""


def _template_regex(template: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>\\d+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


class NameTable:
    """Leaf-name pairs ``(diffusers template, ComfyUI template)`` with ``{i}``-style block
    numbers, translated both ways by full match (``"transformer_blocks.{i}.norm2"`` <->
    ``"double_blocks.{i}.img_norm2"``). Names in neither column have no counterpart."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self.pairs = [(a, b, _template_regex(a), _template_regex(b)) for a, b in pairs]

    def to_comfy(self, name: str) -> Optional[str]:
        for a, b, ra, _ in self.pairs:
            m = ra.fullmatch(name)
            if m:
                return b.format(**m.groupdict())
        return None

    def from_comfy(self, name: str) -> Optional[str]:
        for a, b, _, rb in self.pairs:
            m = rb.fullmatch(name)
            if m:
                return a.format(**m.groupdict())
        return None


@dataclass(frozen=True)
class StreamRule:
    """A block with several outputs, or one output that a framework returns in pieces.

    ``streams`` maps a suffix to ``(diffusers index, ComfyUI index)``; the suffix ``""`` means
    the block itself (one canonical output)."""

    diffusers: str
    comfy: str
    streams: Mapping[str, Tuple[Index, Index]]

    def __post_init__(self):
        object.__setattr__(self, "_rd", _template_regex(self.diffusers))
        object.__setattr__(self, "_rc", _template_regex(self.comfy))


def split_prefix(name: str, table: Mapping[str, object]) -> Optional[Tuple[str, str]]:
    """Longest ``prefix`` in ``table`` with ``name == prefix`` or ``name`` starting with ``prefix.``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return head, ".".join(parts[n:])
    return None


__all__ = ["Index", "NameTranslationError", "NameTable", "StreamRule", "split_prefix"]
