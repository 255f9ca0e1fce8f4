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
- ``("phrase", token_ids)``: the noun phrase that ends at the first of ``token_ids``: from the
  last article "a" before it up to it ("a small red circle").

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
ARTICLE = 320  # "a</w>" in CLIP's BPE vocabulary
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
    if isinstance(positions, tuple) and len(positions) == 2 and positions[0] in ("from", "at", "phrase"):
        wanted = torch.tensor(list(positions[1]), device=ids.device)
        if wanted.numel() == 0:
            raise ValueError("no token ids given for the gate")
        hit = (ids.unsqueeze(-1) == wanted).any(-1)
        if positions[0] == "at":
            return hit
        start = first(hit)
        if positions[0] == "from":
            return pos >= start
        art = torch.where((ids == ARTICLE) & (pos < start), pos, torch.full_like(pos, -1)).max(1, keepdim=True).values
        return (pos >= torch.where(art >= 0, art, start)) & (pos <= start)
    raise ValueError(f"unknown token positions {positions!r}: 'eos', 'words', ('from', ids), ('at', ids) "
                     "or ('phrase', ids)")


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


# -- token-level fits on chosen positions ----------------------------------------------------------


@torch.no_grad()
def fit_token_map(pipe, prompts: Sequence[str], source_positions: Positions, target_positions: Positions,
                  layers: Union[str, Sequence[str]] = ("text_encoder_layers", r"text_encoder(_2)?\.embeddings"),
                  method: str = "linear", support: Optional[str] = None, target_prompts: Optional[Sequence[str]] = None,
                  **meta) -> TransportMap:
    """A text-encoder map fitted on TOKEN rows: source = the hidden states at ``source_positions``
    of ``prompts``, target = the states at ``target_positions`` of the same prompts (or of
    ``target_prompts``), per module.

    E.g. ``source_positions=("phrase", ids of "circle")``, ``target_positions="eos"``: "what the
    words 'a small red circle' look like" -> "what padding looks like". Applied with
    :func:`token_gated_steer` at the same source positions, it makes the phrase look like padding
    to every later layer and to the UNet. Collection runs the text encoders only (as the
    pipeline encodes prompts); rows are float32."""
    from ...estimators import fit_transport
    from ...mapfile import map_meta_defaults
    from ..families.sdxl import PRESETS, sdxl_canonical_names
    from ..presets import resolve_modules

    tree = sdxl_module_tree(pipe)
    modules = resolve_modules(layers, sdxl_canonical_names(pipe), PRESETS)
    bad = [n for n in modules if n.split(".", 1)[0] not in ("text_encoder", "text_encoder_2")]
    if bad:
        raise ValueError(f"token-level fits cover text-encoder modules only: {bad[:3]}")
    rows = {n: ([], []) for n in modules}
    masks: Dict[str, torch.Tensor] = {}
    side = [0]  # 0: collecting source rows, 1: target rows
    handles = []

    def capture(component):
        def pre(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            masks[component] = token_mask(ids, (source_positions, target_positions)[side[0]])
        return pre

    def record(name):
        comp = name.split(".", 1)[0]

        def hook(module, args, output):
            rows[name][side[0]].append(_pick(output, modules[name]).float()[masks[comp]])
        return hook

    target_prompts = list(prompts if target_prompts is None else target_prompts)
    try:
        for comp in ("text_encoder", "text_encoder_2"):
            handles.append(getattr(pipe, comp).register_forward_pre_hook(capture(comp), with_kwargs=True))
        for n in modules:
            handles.append(tree.get_submodule(n).register_forward_hook(record(n)))
        for side[0], texts in enumerate((list(prompts), target_prompts)):
            for i in range(0, len(texts), 64):
                pipe.encode_prompt(texts[i:i + 64], device=pipe.unet.device, do_classifier_free_guidance=False)
    finally:
        for h in handles:
            h.remove()
    tmap = TransportMap(meta=map_meta_defaults(method, "none", "simultaneous", "sdxl", list(prompts), target_prompts,
                                               default_support=support, token_fit={"source": str(source_positions),
                                                                                    "target": str(target_positions)},
                                               **meta))
    for n, idx in modules.items():
        src, tgt = torch.cat(rows[n][0]), torch.cat(rows[n][1])
        tmap.add(n, fit_transport(src, tgt, method, support), "tokens", idx)
    return tmap
