"""EXPERIMENTAL ways of applying text-encoder maps, measured in reports/miniworld/ (not in the core).

**Token gating.** A text-encoder map fitted on pooled (or token-level) activations normally
transports every one of the 77 token positions. Here it acts only where a token mask says so::

    y[b, p] = x[b, p] + m[b, p] · (T_λ(x[b, p]) − x[b, p])        m[b, p] ∈ {0, 1}

The mask comes from the prompt's token ids, captured by a pre-hook on each text encoder:

- ``"eos"``: the end-of-text token and every position after it (the padding). CLIP's causal
  attention lets those positions read the whole prompt; SDXL's pooled embedding is
  ``text_encoder_2``'s end-of-text state, and the UNet's cross-attention reads all 77
  positions. Steering only there leaves the states of the words themselves untouched.
- ``"words"``: the complement (the start token and the words).
- ``("from", token_ids)``: from the first occurrence of any of ``token_ids`` (e.g. the ids of
  "circle") to the end: the named word and everything causal attention lets it influence.
- ``("at", token_ids)``: only the positions holding one of ``token_ids``.

UNet modules in the map are applied ungated (as :func:`act_core.hooks.steer` would).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from ...hooks import _pick, _replace, steer
from ...mapfile import TransportMap
from ...transport import normalize_support
from ..families.sdxl import sdxl_module_tree

EOS = 49407
Positions = Union[str, Tuple[str, Sequence[int]]]


def token_mask(ids: torch.Tensor, positions: Positions) -> torch.Tensor:
    """``(B, T)`` bool mask of the positions to steer, from token ids ``(B, T)``."""
    b, t = ids.shape
    pos = torch.arange(t, device=ids.device).expand(b, t)

    def first(hit: torch.Tensor) -> torch.Tensor:  # index of the first True per row (T if none)
        idx = torch.where(hit, pos, torch.full_like(pos, t))
        return idx.min(1, keepdim=True).values

    if positions == "eos":
        return pos >= first(ids == EOS)
    if positions == "words":
        return pos < first(ids == EOS)
    if isinstance(positions, tuple) and len(positions) == 2 and positions[0] in ("from", "at"):
        wanted = torch.tensor(list(positions[1]), device=ids.device)
        if wanted.numel() == 0:
            raise ValueError("no token ids given for the gate")
        hit = (ids.unsqueeze(-1) == wanted).any(-1)
        return pos >= first(hit) if positions[0] == "from" else hit
    raise ValueError(f"unknown token positions {positions!r}: 'eos', 'words', ('from', ids) or ('at', ids)")


def word_ids(pipe, word: str) -> list:
    """The BPE ids of ``word`` (without start/end tokens), as both miniature tokenizers give them."""
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"{word!r} has no tokens")
    return ids


@contextlib.contextmanager
def token_gated_steer(pipe, tmap: TransportMap, strength: float, positions: Positions,
                      support: Optional[str] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """``with token_gated_steer(pipe, tmap, 1.0, "eos"): pipe(...)`` — see the module docstring.

    Yields the dict of the latest masks per text encoder (for inspection). Hooks are removed on
    exit, also after an exception."""
    tree = sdxl_module_tree(pipe)
    tmap.check_model(tree, architecture="sdxl")
    masks: Dict[str, torch.Tensor] = {}
    handles = []

    def capture(component):
        def pre(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise ValueError(f"{component} was called without input_ids: token gating needs the ids")
            masks[component] = token_mask(ids, positions)
        return pre

    def gated(name: str, t) -> Callable:
        component = name.split(".", 1)[0]
        index = tmap.output_index.get(name)
        sup = normalize_support(support if support is not None else t.default_support)

        def hook(module, args, output):
            if strength == 0:
                return None
            x = _pick(output, index)
            m = masks.get(component)
            if m is None or m.shape != x.shape[:2]:
                raise ValueError(f"no token mask of shape {tuple(x.shape[:2])} for {name}")
            y = t.apply(x, strength, sup, "tokens")
            return _replace(output, index, torch.where(m.unsqueeze(-1), y, x))
        return hook

    text = {n: t for n, t in tmap.maps.items() if n.split(".", 1)[0] in ("text_encoder", "text_encoder_2")}
    rest = [n for n in tmap.maps if n not in text]
    try:
        for comp in ("text_encoder", "text_encoder_2"):
            enc = getattr(pipe, comp, None)
            if enc is not None:
                handles.append(enc.register_forward_pre_hook(capture(comp), with_kwargs=True))
        for n, t in text.items():
            handles.append(tree.get_submodule(n).register_forward_hook(gated(n, t)))
        with (steer(tree, tmap.subset(rest), strength=strength, support=support) if rest
              else contextlib.nullcontext()):
            yield masks
    finally:
        for h in handles:
            h.remove()
