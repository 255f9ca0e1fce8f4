"""Export fitted maps so they run without act_core's hooks.

1. **llama.cpp control vector** (:func:`export_control_vector`, :func:`read_control_vector`).
   A Mean-AcT map (``ω = 1``) with the unbounded support on the *residual stream* (the outputs
   of the decoder blocks, preset ``residual``) is ``x -> x + λβ`` at every token: exactly what
   llama.cpp adds with ``--control-vector-scaled file.gguf λ``. File layout (GGUF, written
   with the ``gguf`` package): ``general.architecture = "controlvector"``,
   ``controlvector.model_hint`` (the model's architecture), ``controlvector.layer_count``,
   and one F32 tensor ``direction.{k}`` of width ``n_embd`` per steered block. llama.cpp adds
   ``direction.k`` to the output of block ``k`` (0-based ``il`` in its graph builders, the
   same block as Hugging Face ``model.layers.k``); index 0 is reserved there (its loader
   rejects ``direction.0`` and never steers block 0), so a map on block 0 cannot be exported.

2. **Folded weights** (:func:`fold_map`, :func:`apply_folded`, :func:`save_folded`). At a
   fixed λ a Linear-AcT map with support ``"all"`` is the affine map ``y -> a⊙y + c``
   (``a = 1 + λ(ω-1)``, ``c = λβ``) and can be merged into weights:

   - output of a ``Linear`` / GPT-2 ``Conv1D`` ``y = W x + b``: ``W' = diag(a) W``,
     ``b' = a⊙b + c`` (a bias is added when the layer has none and ``c ≠ 0``);
   - output of a norm ``y = x̂ ⊙ g + b`` with an elementwise gain ``g`` (``g = w``, or
     ``g = 1 + w`` for Gemma's RMSNorm; detected by probing): ``g' = a⊙g``; with a bias,
     ``b' = a⊙b + c``. Without a bias (RMSNorm, bias-free LayerNorm) the offset ``c`` is
     pushed into every linear layer that reads the norm's output, ``W(y + c) + b =
     W y + (b + W c)`` (found by tracing; biases are added where missing).

   **Exact when**: the support is ``"all"`` (quantile bands make the map depend on each
   value, so no fixed weights reproduce it: refused), and for a bias-free norm with
   ``c ≠ 0`` every consumer of its output is a linear layer (true for Llama/Qwen2/Mistral
   input and post-attention norms; false for Gemma's post-norms, whose output goes straight
   into the residual add). Exactness is checked by a probe forward pass (folded vs hooked
   logits) and a :class:`FoldError` is raised when it does not hold. Equality is up to
   float rounding (the hook computes ``a⊙y + c`` after the layer, the fold inside it).
   Loading a folded state dict that *adds* biases into a fresh Hugging Face model needs the
   architecture's bias switch (e.g. Llama ``attention_bias=True`` / ``mlp_bias=True``);
   :func:`apply_folded` adds them in memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..hooks import steer
from .presets import is_norm, out_features
from ..mapfile import TransportMap, prompts_digest
from ..files import atomic_write_bytes
from ..fold import FoldError, effective_support, fold_factors, folded
from ..transport import UNBOUNDED

_BLOCK_RE = re.compile(r"^(.*)\.(\d+)$")


# -- llama.cpp control vectors ------------------------------------------------------------------


def control_vector_directions(tmap: TransportMap, support: Optional[str] = None) -> Tuple[str, Dict[int, torch.Tensor]]:
    """``(block list name, {block index: β})`` for a Mean-AcT residual-stream map (checked)."""
    dirs: Dict[int, torch.Tensor] = {}
    prefixes = set()
    for name, t in tmap.maps.items():
        m = _BLOCK_RE.match(name)
        if not m:
            raise ValueError(
                f"module {name!r} is not a decoder block output; control vectors act on the residual stream: "
                "fit with layers='residual' (block outputs such as model.layers.5)"
            )
        if not torch.all(t.omega == 1):
            raise ValueError(
                f"module {name!r} has slopes ω ≠ 1 ({t.method} map); a control vector is a pure shift: "
                "fit with method='mean' (Mean-AcT), or fold a Linear-AcT map into weights with fold_map"
            )
        if effective_support(t, support) != UNBOUNDED:
            raise ValueError(
                f"module {name!r} uses support {t.default_support!r}; llama.cpp shifts every value, which equals the "
                "map only with support='all' (fit or export with support='all')"
            )
        prefixes.add(m.group(1))
        k = int(m.group(2))
        if k == 0:
            raise ValueError(
                f"{name!r} is block 0, which llama.cpp never steers (direction.0 is rejected by its loader); "
                "fit on 'residual[1:]' instead"
            )
        dirs[k] = t.beta.detach().float().clone()
    if len(prefixes) != 1:
        raise ValueError(f"the map's modules come from several block lists {sorted(prefixes)}; export one model's blocks")
    widths = {int(v.numel()) for v in dirs.values()}
    if len(widths) != 1:
        raise ValueError(f"directions have different widths {sorted(widths)}")
    return prefixes.pop(), dirs


def export_control_vector(tmap: TransportMap, path, model_hint: Optional[str] = None, layer_count: Optional[int] = None,
                          support: Optional[str] = None, scale: float = 1.0) -> Path:
    """Write a llama.cpp control-vector GGUF (``direction.k`` = ``scale``·β of block ``k``), atomically.

    ``model_hint`` defaults to the map's architecture (llama.cpp's ``general.architecture`` of
    the model, e.g. ``"llama"``). ``layer_count`` defaults to the highest exported block index.
    ``scale`` bakes a strength into the file (e.g. the scale the harness matched to a KL
    budget), so that llama.cpp's ``--control-vector-scaled file.gguf 1.0`` is that strength; it
    is recorded as ``controlvector.act_scale``.
    """
    import math

    if not math.isfinite(float(scale)) or float(scale) == 0:
        raise ValueError(f"scale must be a finite, non-zero number, got {scale!r}")
    import gguf
    import numpy as np

    _, dirs = control_vector_directions(tmap, support)
    hint = model_hint or tmap.architecture
    if not hint:
        raise ValueError("the map records no architecture; pass model_hint (e.g. 'llama')")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist; create it first")
    tmp = path.with_name(f".{path.name}.part")
    try:
        w = gguf.GGUFWriter(str(tmp), "controlvector")
        w.add_string("controlvector.model_hint", str(hint))
        w.add_int32("controlvector.layer_count", int(layer_count or max(dirs)))
        w.add_float32("controlvector.act_scale", float(scale))
        for k in sorted(dirs):
            w.add_tensor(f"direction.{k}", np.ascontiguousarray((dirs[k] * float(scale)).numpy().astype(np.float32)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        atomic_write_bytes(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class ControlVector:
    """A control vector read back from GGUF: ``directions[k]`` is added to block ``k``'s output."""

    model_hint: str
    layer_count: int
    directions: Dict[int, torch.Tensor] = field(default_factory=dict)
    scale: float = 1.0  # the strength baked into the directions by export_control_vector (1 if not recorded)

    def to_map(self, blocks: str = "model.layers", architecture: Optional[str] = None) -> TransportMap:
        """An equivalent Mean-AcT :class:`TransportMap` (ω = 1, β = direction, support ``all``)."""
        from ..transport import BAND_NAMES, UnitTransport

        tmap = TransportMap(meta={"method": "mean", "architecture": architecture or self.model_hint, "default_support": UNBOUNDED,
                                  "source": "llama.cpp control vector"})
        for k in sorted(self.directions):
            d = self.directions[k].float()
            big = float(torch.finfo(torch.float32).max)
            bands = torch.stack([torch.full_like(d, -big), torch.full_like(d, big)])  # unused: support is 'all'
            bands = bands.unsqueeze(0).repeat(len(BAND_NAMES), 1, 1)
            t = UnitTransport(torch.ones_like(d), d.clone(), bands, torch.zeros(d.shape, dtype=torch.uint8), "mean", UNBOUNDED)
            tmap.add(f"{blocks}.{k}", t, "tokens", 0)
        return tmap


def read_control_vector(path) -> ControlVector:
    """Read a control-vector GGUF written by this module, llama.cpp or repeng."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control vector {str(path)!r} does not exist")
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises assorted errors on bad files
        raise ValueError(f"{str(path)!r} is not a readable GGUF file: {e}") from None

    def field_value(key):
        f = r.fields.get(key)
        if f is None:
            return None
        part = f.parts[f.data[0]]
        return bytes(part).decode("utf-8") if f.types and f.types[0] == gguf.GGUFValueType.STRING else part.tolist()[0]

    arch = field_value("general.architecture")
    if arch != "controlvector":
        raise ValueError(f"{str(path)!r} has general.architecture={arch!r}, not 'controlvector'")
    dirs = {}
    for t in r.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if not m or int(m.group(1)) == 0:
            raise ValueError(f"tensor {t.name!r} in {str(path)!r} is not a valid direction.N (N >= 1)")
        dirs[int(m.group(1))] = torch.from_numpy(t.data.astype("float32").reshape(-1).copy())
    scale = field_value("controlvector.act_scale")
    return ControlVector(str(field_value("controlvector.model_hint") or ""), int(field_value("controlvector.layer_count") or 0), dirs,
                         1.0 if scale is None else float(scale))


# -- folding into weights ----------------------------------------------------------------------


@dataclass
class FoldResult:
    """``state``: the changed parameters (full names -> tensors); ``added_bias``: modules that got a bias."""

    state: Dict[str, torch.Tensor]
    added_bias: List[str]
    strength: float
    max_abs_error: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def _norm_gain_offset(module: nn.Module, width: int) -> float:
    """0 when ``y = x̂⊙w (+b)``, 1 when ``y = x̂⊙(1+w)`` (Gemma): probe with the weight zeroed."""
    w = module.weight
    saved = w.detach().clone()
    bias = getattr(module, "bias", None)
    saved_b = bias.detach().clone() if isinstance(bias, torch.Tensor) else None
    try:
        with torch.no_grad():
            w.zero_()
            if saved_b is not None:
                bias.zero_()
            x = torch.randn(2, width, dtype=w.dtype, device=w.device)
            y = module(x)
        return 1.0 if float(y.abs().max()) > 1e-3 else 0.0
    finally:
        with torch.no_grad():
            w.copy_(saved)
            if saved_b is not None:
                bias.copy_(saved_b)


def _probe_ids(model: nn.Module) -> torch.Tensor:
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 100) or 100)
    return torch.randint(1, max(2, min(vocab, 1000)), (2, 7), generator=g).to(dev)


def _consumers(model: nn.Module, norm_names: List[str]) -> Dict[str, List[str]]:
    """For each norm, the linear layers whose input tensor is that norm's output (one probe pass)."""
    outputs: Dict[int, str] = {}
    found: Dict[str, List[str]] = {n: [] for n in norm_names}
    keep = []
    handles = []
    for n in norm_names:
        def out_hook(mod, args, out, n=n):
            outputs[id(out)] = n
            keep.append(out)
        handles.append(model.get_submodule(n).register_forward_hook(out_hook))
    for ln, lm in model.named_modules():
        if out_features(lm) is not None:
            def pre_hook(mod, args, ln=ln):
                if args and isinstance(args[0], torch.Tensor) and id(args[0]) in outputs:
                    owner = outputs[id(args[0])]
                    if ln not in found[owner]:
                        found[owner].append(ln)
            handles.append(lm.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            model(input_ids=_probe_ids(model))
    finally:
        for h in handles:
            h.remove()
    return found


def _linear_apply(module: nn.Module, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``W c`` for a Linear, ``c W`` for a Conv1D: the output shift caused by an input shift ``c``."""
    return w @ c if isinstance(module, nn.Linear) else c @ w


def fold_map(model: nn.Module, tmap: TransportMap, strength: Optional[float] = None, support: Optional[str] = None,
             verify: bool = True, atol: float = 1e-4) -> FoldResult:
    """Fold ``tmap`` at strength ``λ`` into weights (see module docstring); the model is not changed.

    Returns the changed parameters. With ``verify`` (default) a probe batch is run through the
    hooked model and through the folded weights (temporarily loaded, then restored) and a
    :class:`FoldError` is raised when the logits differ by more than ``atol`` (relative to
    their scale): that is the check that folding is exact for this model.
    """
    lam = tmap.default_strength if strength is None else float(strength)
    for name, t in tmap.maps.items():
        s = effective_support(t, support)
        if s != UNBOUNDED:
            raise FoldError(
                f"module {name!r} uses support {s!r}: with quantile bands the map depends on each value, so no fixed "
                "weights reproduce it. Fold only maps used with support='all' (pass support='all' to fold the unbounded map)"
            )
    params = dict(model.named_parameters())
    cur: Dict[str, torch.Tensor] = {}
    added: List[str] = []
    notes: List[str] = []

    def get(key: str) -> Optional[torch.Tensor]:
        if key in cur:
            return cur[key]
        return params[key].detach().clone().double() if key in params else None

    norms = [n for n in tmap.maps if is_norm(model.get_submodule(n))]
    needs_consumers = [n for n in norms if not isinstance(getattr(model.get_submodule(n), "bias", None), torch.Tensor)]
    consumers = _consumers(model, needs_consumers) if needs_consumers else {}
    device = next(model.parameters()).device
    for name, t in tmap.maps.items():
        module = model.get_submodule(name)
        norm = is_norm(module)
        if out_features(module) is None and not norm:
            raise FoldError(
                f"module {name!r} ({type(module).__name__}) is neither a linear layer nor a norm; only those can be folded "
                "(residual-stream Mean-AcT maps export as llama.cpp control vectors instead)"
            )
        off = _norm_gain_offset(module, module.weight.shape[-1]) if norm else 0.0
        try:
            factors = fold_factors(module, t, lam, support, tmap.layouts.get(name, "auto"), gain_offset=off,
                                   missing_bias="add")
        except FoldError as e:
            raise FoldError(f"module {name!r}: {e}") from None
        for attr, (scale, shift) in factors.items():
            key = f"{name}.{attr}"
            if attr == "bias" and norm and key not in params:
                # a bias-free norm (RMSNorm): its offset c goes into every linear layer reading its output,
                # W (y + c) + b = W y + (b + W c)
                users = consumers.get(name, [])
                if not users:
                    raise FoldError(f"norm {name!r} has no bias and no linear layer was seen reading its output directly (e.g. a "
                                    "tied LM head reads it through a view), so its offset c cannot be folded; keep "
                                    "hooks for this module or fold a map without it")
                c = shift.to(device)
                for u in users:
                    um = model.get_submodule(u)
                    ub = get(f"{u}.bias")
                    if ub is None:
                        ub = torch.zeros(out_features(um), dtype=torch.float64, device=device)
                        added.append(u)
                    cur[f"{u}.bias"] = ub + _linear_apply(um, get(f"{u}.weight"), c)
                notes.append(f"{name}: offset folded into {', '.join(users)}")
                continue
            p = get(key)
            if p is None:
                added.append(name)
            cur[key] = folded(p, scale, shift, device=device)
    state = {k: v.to(params[k].dtype if k in params else model.get_submodule(k.rsplit('.', 1)[0]).weight.dtype).contiguous()
             for k, v in cur.items()}
    result = FoldResult(state, sorted(set(added)), lam, None, notes)
    if verify:
        result.max_abs_error = _verify(model, tmap, result, lam, atol)
    return result


def _snapshot(model: nn.Module, keys) -> Dict[str, Optional[torch.Tensor]]:
    params = dict(model.named_parameters())
    return {k: (params[k].detach().clone() if k in params else None) for k in keys}


def _restore(model: nn.Module, snap: Dict[str, Optional[torch.Tensor]]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in snap.items():
            if v is None:
                mod_name, attr = k.rsplit(".", 1)
                mod = model.get_submodule(mod_name)
                if attr == "bias":
                    mod.bias = None  # remove a bias that apply_folded added
            else:
                params[k].copy_(v)


def _verify(model: nn.Module, tmap: TransportMap, result: FoldResult, lam: float, atol: float) -> float:
    ids = _probe_ids(model)
    with torch.no_grad(), steer(model, tmap, strength=lam, support=UNBOUNDED):
        hooked = model(input_ids=ids)
    hooked = (hooked.logits if hasattr(hooked, "logits") else hooked[0]).float()
    snap = _snapshot(model, result.state)
    try:
        apply_folded(model, result)
        with torch.no_grad():
            out = model(input_ids=ids)
        folded = (out.logits if hasattr(out, "logits") else out[0]).float()
    finally:
        _restore(model, snap)
    err = float((hooked - folded).abs().max())
    scale = float(hooked.abs().max()) or 1.0
    if err > atol * max(1.0, scale):
        raise FoldError(
            f"folding is not exact for this model (max |folded - hooked| = {err:.3g}): some folded module's output is used "
            "outside linear layers (e.g. Gemma's post-norms feed the residual add directly). Keep the map as hooks"
        )
    return err


def apply_folded(model: nn.Module, result) -> nn.Module:
    """Load a :class:`FoldResult` (or a plain ``{param name: tensor}`` dict) into ``model`` in place.

    Biases missing from a module are added as parameters. Returns ``model``.
    """
    state = result.state if isinstance(result, FoldResult) else dict(result)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            if k in params:
                if params[k].shape != v.shape:
                    raise ValueError(f"folded tensor {k!r} has shape {tuple(v.shape)}, the model's has {tuple(params[k].shape)}")
                params[k].copy_(v.to(params[k].dtype))
                continue
            mod_name, attr = k.rsplit(".", 1)
            mod = model.get_submodule(mod_name)
            if attr != "bias":
                raise ValueError(f"the model has no parameter {k!r}: these folded weights belong to another model")
            ref = mod.weight
            mod.bias = nn.Parameter(v.to(device=ref.device, dtype=ref.dtype).clone(), requires_grad=ref.requires_grad)
    return model


def save_folded(result: FoldResult, path, tmap: Optional[TransportMap] = None) -> Path:
    """Write the folded parameters as a plain safetensors state dict (atomically), with provenance metadata."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"folded weights use the .safetensors extension, got {path.name!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist; create it first")
    meta = {"act_folded": json.dumps({
        "strength": result.strength,
        "added_bias": result.added_bias,
        "notes": result.notes,
        "architecture": tmap.architecture if tmap else None,
        "modules": list(tmap.maps) if tmap else None,
        "map_sha256": prompts_digest(sorted(tmap.maps)) if tmap else None,
    })}
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in result.state.items()}, metadata=meta))
    return path


def _bias_switches(model: nn.Module, needed: List[str]) -> Dict[str, List[str]]:
    """``{config switch: [bias parameter names it creates]}``: the fewest boolean ``*_bias``
    config switches whose models have a bias on every module in ``needed`` (checked by
    building the model on the meta device), or a :class:`FoldError`."""
    cfg = model.config
    flags = [k for k, v in cfg.to_dict().items() if k.endswith("_bias") and v is False]
    have = {n for n, _ in model.named_parameters()}
    created: Dict[str, List[str]] = {}
    for f in flags:
        c = type(cfg).from_dict({**cfg.to_dict(), f: True})
        with torch.device("meta"):
            probe = type(model)(c)
        created[f] = sorted(n for n, _ in probe.named_parameters() if n.endswith(".bias") and n not in have)
    want = {f"{m}.bias" for m in needed}
    chosen: Dict[str, List[str]] = {}
    for f in sorted(created, key=lambda f: len(created[f])):
        if want - {b for bs in chosen.values() for b in bs} and want & set(created[f]):
            chosen[f] = created[f]
    missing = want - {b for bs in chosen.values() for b in bs}
    if missing:
        raise FoldError(
            f"folding adds biases to {sorted(missing)[:3]}, but {type(model).__name__}'s config has no switch that gives "
            "those layers a bias, so plain from_pretrained could not load them. Fold a map on modules that have a bias "
            "(or a norm with consumers that do), or keep the map as hooks"
        )
    return chosen


def save_folded_model(model: nn.Module, tokenizer, result: FoldResult, folder, tmap: Optional[TransportMap] = None,
                      verify: bool = True, atol: float = 1e-4) -> Path:
    """Write a COMPLETE model folder with the fold applied: config (with the bias switches the
    fold needs, e.g. Llama ``attention_bias`` / ``mlp_bias``), weights, tokenizer. Plain
    ``AutoModelForCausalLM.from_pretrained(folder)`` loads it without act_core.

    Modules that a switch gives a bias but the fold did not touch get a zero bias (no change).
    With ``verify`` the folder is loaded back with plain ``from_pretrained`` and its logits on a
    probe batch are compared with the hooked model's (:class:`FoldError` past ``atol``,
    relative to the logits' scale); the folder is written atomically (temporary folder, rename).
    """
    import copy
    import shutil
    import tempfile

    folder = Path(folder)
    if folder.suffix == ".safetensors":
        raise ValueError(f"{folder.name!r} looks like a file; give a folder name for a complete model (or use save_folded "
                         "for a bare state dict)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    switches = _bias_switches(model, result.added_bias) if result.added_bias else {}
    out = copy.deepcopy(model)
    apply_folded(out, result)
    with torch.no_grad():
        for biases in switches.values():
            for b in biases:
                mod = out.get_submodule(b.rsplit(".", 1)[0])
                if getattr(mod, "bias", None) is None:
                    w = mod.weight
                    n = w.shape[-1] if type(mod).__name__ == "Conv1D" else w.shape[0]
                    mod.bias = nn.Parameter(torch.zeros(n, dtype=w.dtype, device=w.device), requires_grad=False)
    for f in switches:
        setattr(out.config, f, True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=str(folder.parent)))
    try:
        out.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        info = {"act_folded": {"strength": result.strength, "added_bias": result.added_bias, "bias_switches": sorted(switches),
                               "architecture": tmap.architecture if tmap else None,
                               "modules": list(tmap.maps) if tmap else None, "notes": result.notes}}
        (tmp / "act_folded.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        if verify:
            _verify_folder(model, tmp, tmap, result.strength, atol)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _verify_folder(model: nn.Module, folder: Path, tmap: Optional[TransportMap], lam: float, atol: float) -> float:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=next(model.parameters()).dtype).eval()
    ids = _probe_ids(model)
    ctx = steer(model, tmap, strength=lam, support=UNBOUNDED) if tmap is not None else None
    with torch.no_grad():
        if ctx is not None:
            with ctx:
                want = model(input_ids=ids).logits.float()
        else:
            want = model(input_ids=ids).logits.float()
        got = loaded(input_ids=ids.to(next(loaded.parameters()).device)).logits.float().to(want.device)
    err = float((want - got).abs().max())
    if err > atol * max(1.0, float(want.abs().max())):
        raise FoldError(f"the saved folder does not reproduce the steered model (max |diff| = {err:.3g})")
    return err


def load_folded(path) -> Dict[str, torch.Tensor]:
    """Read a folded state dict written by :func:`save_folded`."""
    from safetensors.torch import load_file

    return load_file(str(path))


__all__ = [
    "export_control_vector", "read_control_vector", "control_vector_directions", "ControlVector",
    "fold_map", "apply_folded", "save_folded", "save_folded_model", "load_folded", "FoldResult", "FoldError",
]
