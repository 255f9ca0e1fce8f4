"""Layer presets for transformer language models, resolved from the module structure.

A preset names a *role* in every transformer block; it is resolved on the model at hand by
walking its blocks, not by matching one model family's attribute names:

``attention``
    Output of each block's attention output projection (``o_proj`` in Llama/Qwen2/Mistral/
    Gemma, ``attn.c_proj`` in GPT-2, ``attention.output.dense`` in BERT): the last linear
    layer inside the attention sub-module whose output width is the hidden size.
``mlp``
    Output of each block's MLP (``down_proj``, ``mlp.c_proj``, ``output.dense``): the last
    linear layer of the block outside the attention sub-module whose output width is the
    hidden size.
``post_ln``
    Norms applied to a sub-layer's output *before* the residual add (Gemma 2/3
    ``post_attention_layernorm`` / ``post_feedforward_layernorm``; the paper's "Post-LN").
    Found by a one-token trace: a norm is "post" when its input tensor *is* the output
    tensor of an attention or MLP output projection. Llama's ``post_attention_layernorm``
    normalises the residual sum and is therefore not post-LN; models without post-LN raise.
``all_ln``
    Every norm inside the blocks whose width is the hidden size (the paper's "All-LN";
    per-head ``q_norm``/``k_norm`` and the final norm are excluded).
``residual``
    Each block's output: the residual stream after the block (what control vectors act on).

A preset may be restricted to a slice of blocks: ``"attention[10:20]"``, ``"all_ln[-4:]"``,
``"residual[5]"``. :func:`resolve_preset` returns ``{module name: tuple output index}`` as
:func:`act_core.fit_map` accepts. Module names are relative to the model given (for a
causal LM, the ``*ForCausalLM`` object: ``model.layers.3.self_attn.o_proj``).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

PRESETS: Dict[str, str] = {
    "attention": "attention output projection of every block",
    "mlp": "MLP output (down) projection of every block",
    "post_ln": "norms on sub-layer outputs before the residual add (Gemma 2/3 style)",
    "all_ln": "every hidden-size norm inside the blocks",
    "residual": "every block's output (residual stream)",
}

_PRESET_RE = re.compile(r"^([a-z_]+)(?:\[(-?\d*)(?::(-?\d*))?\])?$")


class PresetError(ValueError):
    """A preset name is unknown or the model has no module in that role."""


# -- structure helpers -------------------------------------------------------------------------


def out_features(module: nn.Module) -> Optional[int]:
    """Output width of a linear layer (``nn.Linear`` or GPT-2's transposed ``Conv1D``), else None."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):
        return module.nf
    return None


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm-like: an ``nn.LayerNorm`` or a ``*Norm`` class with a 1-D weight."""
    if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        return True
    w = getattr(module, "weight", None)
    return type(module).__name__.lower().endswith("norm") and isinstance(w, torch.Tensor) and w.ndim == 1


def is_attention(module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower()


def hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    raise PresetError("cannot tell the model's hidden size: it has no config.hidden_size; pass module patterns instead")


def find_blocks(model: nn.Module) -> Tuple[str, List[nn.Module]]:
    """The transformer blocks: the longest ``nn.ModuleList`` whose items each hold an attention module.

    Returns ``(list name, blocks)``. Raises :class:`PresetError` when there is none.
    """
    best: Optional[Tuple[str, nn.ModuleList]] = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if all(any(is_attention(c) for c in block.modules()) for block in mod):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise PresetError(
            f"no transformer blocks found in {type(model).__name__}: expected a ModuleList of blocks that contain "
            "an attention module; pass module patterns (regexes) instead of a preset"
        )
    return best[0], list(best[1])


def _attention_children(block: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Top-most attention sub-modules of a block (``self_attn``, ``attn``, ``attention``)."""
    found: List[Tuple[str, nn.Module]] = []
    for name, m in block.named_modules():
        if name and is_attention(m) and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, m))
    return found


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def block_roles(block: nn.Module, hidden: int) -> Dict[str, List[str]]:
    """Relative names of the modules in each static role of one block.

    ``attention``: per attention sub-module, its last hidden-width linear; ``mlp``: the
    block's last hidden-width linear outside attention; ``norms``: hidden-width norms.
    """
    attns = _attention_children(block)
    roles: Dict[str, List[str]] = {"attention": [], "mlp": [], "norms": []}
    for aname, amod in attns:
        last = None
        for n, m in amod.named_modules():
            if out_features(m) == hidden:
                last = _join(aname, n)
        if last is not None:
            roles["attention"].append(last)
    inside = tuple(a + "." for a, _ in attns)
    mlp_last = None
    for n, m in block.named_modules():
        if out_features(m) == hidden and not n.startswith(inside):
            mlp_last = n
        if is_norm(m) and getattr(m, "weight", None) is not None and m.weight.shape[-1] == hidden:
            roles["norms"].append(n)
    if mlp_last is not None:
        roles["mlp"].append(mlp_last)
    return roles


def _probe_inputs(model: nn.Module) -> torch.Tensor:
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.tensor([[1, 2]], dtype=torch.long, device=dev)


def post_norms(model: nn.Module, blocks_name: str, blocks: List[nn.Module], hidden: int) -> List[str]:
    """Names of norms whose input tensor is exactly a sub-layer's output (found by a 2-token trace)."""
    produced: Dict[int, str] = {}
    post: List[str] = []
    handles = []
    for i, block in enumerate(blocks):
        roles = block_roles(block, hidden)
        for rel in roles["attention"] + roles["mlp"]:
            full = _join(blocks_name, str(i), rel)

            def out_hook(mod, args, output, full=full):
                t = output[0] if isinstance(output, (tuple, list)) else output
                produced[id(t)] = full
                keep.append(t)  # keep alive so ids stay unique during the trace

            handles.append(block.get_submodule(rel).register_forward_hook(out_hook))
        for rel in roles["norms"]:
            full = _join(blocks_name, str(i), rel)

            def in_hook(mod, args, full=full):
                if args and isinstance(args[0], torch.Tensor) and id(args[0]) in produced:
                    post.append(full)

            handles.append(block.get_submodule(rel).register_forward_pre_hook(in_hook))
    keep: List[torch.Tensor] = []
    try:
        with torch.no_grad():
            model(input_ids=_probe_inputs(model))
    finally:
        for h in handles:
            h.remove()
    return post


# -- public ------------------------------------------------------------------------------------


def parse_preset(spec: str) -> Tuple[str, Optional[slice]]:
    """``"attention[2:5]"`` -> ``("attention", slice(2, 5))``; ``"mlp[3]"`` -> one block."""
    m = _PRESET_RE.match(spec.strip()) if isinstance(spec, str) else None
    if not m or m.group(1) not in PRESETS:
        raise PresetError(
            f"unknown layer preset {spec!r}: choose one of {', '.join(PRESETS)} "
            "(optionally with a block slice such as 'attention[10:20]'), or pass module regexes"
        )
    name, a, b = m.group(1), m.group(2), m.group(3)
    if a is None:
        return name, None
    if b is None and ":" not in spec:
        i = int(a)
        return name, slice(i, i + 1 if i != -1 else None)
    return name, slice(int(a) if a else None, int(b) if b else None)


def is_preset(spec) -> bool:
    if not isinstance(spec, str):
        return False
    m = _PRESET_RE.match(spec.strip())
    return bool(m and m.group(1) in PRESETS)


def resolve_preset(model: nn.Module, spec: str) -> Dict[str, Optional[int]]:
    """Resolve a preset (see module docstring) to ``{module name: output index}`` in forward order."""
    name, blocks_slice = parse_preset(spec)
    hidden = hidden_size(model)
    list_name, blocks = find_blocks(model)
    idx = list(range(len(blocks)))
    if blocks_slice is not None:
        idx = idx[blocks_slice]
        if not idx:
            raise PresetError(f"preset {spec!r} selects no block: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    chosen: Dict[str, Optional[int]] = {}
    arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if name == "residual":
        return {_join(list_name, str(i)): 0 for i in idx}
    if name == "post_ln":
        post = set(post_norms(model, list_name, blocks, hidden))
        for i in idx:
            for rel in block_roles(blocks[i], hidden)["norms"]:
                full = _join(list_name, str(i), rel)
                if full in post:
                    chosen[full] = None
        if not chosen:
            raise PresetError(
                f"model type {arch!r} has no post-sub-layer norms (no norm reads an attention or MLP output before "
                "the residual add; that design is Gemma 2/3's). Use 'all_ln' or 'attention' instead"
            )
        return chosen
    role = "norms" if name == "all_ln" else name
    for i in idx:
        for rel in block_roles(blocks[i], hidden)[role]:
            chosen[_join(list_name, str(i), rel)] = None
    if not chosen:
        raise PresetError(f"found no {PRESETS[name]} in model type {arch!r}; pass module regexes instead")
    return chosen


#: Default fitting settings per architecture (``config.model_type``), from the equal-KL harness
#: (``bench/lm_harness.py``, reports/llm/HARNESS.md, "Search" tables: Linear-AcT at 0.5 nat on
#: held-out search prompts). Llama (SmolLM2): attention outputs with Q_o were best or tied-best on
#: both searched tasks (sentiment 0.75, toxicity 1.00; all_ln fell to 0.31 on sentiment).
#: Gemma 3: attention outputs with the unbounded support (sentiment 0.81 vs 0.50 with Q_o;
#: toxicity tied at 1.00 for every setting). Sink-free pooling: within noise of plain mean for
#: these layers, and needed for residual-stream maps. Other architectures get ``FALLBACK``.
DEFAULTS: Dict[str, Dict[str, Optional[str]]] = {
    "llama": {"layers": "attention", "pooling": "mean_nosink", "support": None},
    "gemma3_text": {"layers": "attention", "pooling": "mean_nosink", "support": "all"},
}
FALLBACK: Dict[str, Optional[str]] = {"layers": "attention", "pooling": "mean_nosink", "support": None}


def default_settings(model_or_architecture) -> Dict[str, Optional[str]]:
    """``{"layers", "pooling", "support"}`` for a model (or a ``model_type`` string); ``support``
    None means the method's own default (``q_0_100`` for Linear-AcT)."""
    arch = model_or_architecture if isinstance(model_or_architecture, str) else \
        getattr(getattr(model_or_architecture, "config", None), "model_type", None)
    return dict(DEFAULTS.get(arch, FALLBACK))


def describe_presets(model: nn.Module) -> Dict[str, str]:
    """``{preset: "N modules, first: ..."}`` or the reason it does not apply (for CLI listings)."""
    out = {}
    for p in PRESETS:
        try:
            r = resolve_preset(model, p)
            out[p] = f"{len(r)} modules, first: {next(iter(r))}"
        except PresetError as e:
            out[p] = f"n/a ({e})"
    return out


__all__ = ["DEFAULTS", "FALLBACK", "default_settings", "PRESETS", "PresetError", "resolve_preset", "parse_preset", "is_preset", "find_blocks", "block_roles", "describe_presets"]
