"""The only module of the pack that touches ComfyUI (``comfy.*``, ``folder_paths``, ``comfy_api``).

Everything else in ``nodes/`` talks to ComfyUI through the names below, and all math lives in
``act_core``. Written against ComfyUI 0.3.75 (the version the tests run); features that moved
between versions are looked up with ``getattr``.

Module trees used for names (see ``act_core.diffusion.families.sdxl``):

- UNet: ``MODEL.model`` (``comfy.model_base.SDXL``), names ``diffusion_model.<UNetModel name>``;
- text encoders: ``CLIP.cond_stage_model`` (``SDXLClipModel``), names ``clip_l.transformer.text_model.<x>``.

:func:`model_tree` joins both in one read-only naming view (``model.`` + UNet names,
``cond_stage_model.`` + CLIP names) so a single fit can hook either or both.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401  (re-exported for the node modules)

log = logging.getLogger("act_steering")

TransportMapType = io.Custom("TRANSPORT_MAP")
PromptPairsType = io.Custom("ACT_PROMPT_PAIRS")

UNET_ROOT = "model"
CLIP_ROOT = "cond_stage_model"
WRAPPER_KEY = "act_steering"
MAPS_FOLDER = "act_maps"


# -- model identity ---------------------------------------------------------------------------

def architecture(model) -> str:
    """``"sdxl"`` for SDXL-family MODELs (base, Turbo, Lightning, ...), else a lower-case class name."""
    import comfy.model_base

    base = model.model
    if isinstance(base, comfy.model_base.SDXL):
        return "sdxl"
    return type(base).__name__.lower()


def clip_architecture(clip) -> str:
    import comfy.sdxl_clip

    cm = clip.cond_stage_model
    if isinstance(cm, comfy.sdxl_clip.SDXLClipModel):
        return "sdxl"
    return type(cm).__name__.lower()


class _View(torch.nn.Module):
    """A naming view: children are shared modules (not copied); never called."""

    def __init__(self, children: Dict[str, torch.nn.Module]):
        super().__init__()
        for k, v in children.items():
            self.add_module(k, v)

    def forward(self, *a, **k):  # pragma: no cover
        raise RuntimeError("naming view only")


def model_tree(model=None, clip=None) -> torch.nn.Module:
    """``nn.Module`` whose names are ``model.<UNet names>`` and ``cond_stage_model.<CLIP names>``.

    CLIP first: ``named_modules()`` order is then forward order (text encoders run first).
    """
    kids: Dict[str, torch.nn.Module] = {}
    if clip is not None:
        kids[CLIP_ROOT] = clip.cond_stage_model
    if model is not None:
        kids[UNET_ROOT] = model.model
    return _View(kids)


# -- progress and cancellation -----------------------------------------------------------------

def progress_bar(total: int):
    return comfy.utils.ProgressBar(max(1, int(total)))


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel (POST /interrupt)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


# -- text encoding and sampling ----------------------------------------------------------------

def encode(clip, text: str):
    """CONDITIONING for ``text``, as CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def latent_channels(model) -> int:
    return int(getattr(model.model.latent_format, "latent_channels", 4))


#: seed range of every seed input of the pack, as KSampler's
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def empty_latent(model, width: int, height: int, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, latent_channels(model), max(1, height // 8), max(1, width // 8))


def _fix_latent(model, latent: torch.Tensor) -> torch.Tensor:
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        return comfy.sample.fix_empty_latent_channels(model, latent)
    return latent


def sample(model, positive, negative, latent: torch.Tensor, seed: int, steps: int, cfg: float,
           sampler_name: str = "euler", scheduler: str = "normal", denoise: float = 1.0,
           noise: Optional[torch.Tensor] = None, noise_mask: Optional[torch.Tensor] = None,
           batch_index: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Run ComfyUI's own sampler (the KSampler path) and return the denoised latent.

    ``noise`` (same shape as the latent) replaces the seeded noise ComfyUI would draw for the
    whole latent batch (the Fit node passes one :func:`act_core.diffusion.noise.prompt_noise` per row).
    ``noise_mask`` and ``batch_index`` are a LATENT's own keys (inpainting masks, latents taken
    from a batch), used as KSampler uses them.
    """
    latent = _fix_latent(model, latent)
    if noise is None:
        noise = comfy.sample.prepare_noise(latent, seed, batch_index)
    elif tuple(noise.shape) != tuple(latent.shape):
        raise ValueError(f"noise of shape {tuple(noise.shape)} does not match the latent {tuple(latent.shape)}")
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               denoise=denoise, noise_mask=noise_mask, seed=seed, disable_pbar=True)


def noise_shape(model, latent: torch.Tensor):
    """``(C, H, W)`` of the noise ComfyUI's sampler takes for one latent of ``latent``'s size
    (the channel count of the model's latent format, as KSampler fixes empty latents)."""
    return tuple(_fix_latent(model, latent[:1]).shape[1:])


def concat_conditioning(conds: Sequence[Any]) -> List[List[Any]]:
    """One CONDITIONING whose batch rows are the single-prompt CONDITIONINGs ``conds``, in order.

    Each item must be ``[[cond (1, T_i, C), {"pooled_output": (1, P), ...}]]`` (what
    :func:`encode` returns for an unscheduled CLIP). Token lengths differ for long prompts
    (77 vs 154 ...): every ``cond`` is repeated along the token axis up to the least common
    multiple ``L`` of the ``T_i``. Cross-attention reads the context only through
    ``softmax(q kᵀ) v`` over its tokens; ``k`` identical copies of every token scale each
    weight by ``1/k`` and sum ``k`` equal terms, so the output is unchanged (ComfyUI pads the
    same way when it batches conds). Other tensors in the dict (``pooled_output``) are
    concatenated along dim 0; other values must be equal across prompts.
    """
    if not conds:
        raise ValueError("no conditioning to batch")
    entries = []
    for i, c in enumerate(conds):
        if len(c) != 1 or len(c[0]) != 2 or c[0][0].shape[0] != 1:
            raise ValueError(
                f"conditioning {i} is not one unscheduled prompt ({len(c)} entries): batching needs plain CLIP "
                "encodings; set batch_size to 1 and use procedure 'simultaneous' or 'causal (low memory)'"
            )
        entries.append(c[0])
    length = 1
    for t, _ in entries:
        length = math.lcm(length, int(t.shape[1]))
    tensors = [t if t.shape[1] == length else t.repeat(1, length // t.shape[1], 1) for t, _ in entries]
    first = entries[0][1]
    extra: Dict[str, Any] = {}
    for key, value in first.items():
        values = [d.get(key) for _, d in entries]
        if isinstance(value, torch.Tensor):
            if any(not isinstance(v, torch.Tensor) or v.shape != value.shape for v in values):
                raise ValueError(f"conditioning key {key!r} has different shapes across prompts: cannot batch them")
            extra[key] = torch.cat(values, 0)
        elif any(v != value for v in values):
            raise ValueError(f"conditioning key {key!r} differs across prompts: cannot batch them (set batch_size to 1)")
        else:
            extra[key] = value
    if any(set(d) != set(first) for _, d in entries):
        raise ValueError("conditionings have different keys: cannot batch them (set batch_size to 1)")
    return [[torch.cat(tensors, 0), extra]]


def sampler_names() -> List[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> List[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """VAE-decode to an IMAGE tensor ``(B, H, W, 3)`` in [0, 1]."""
    images = vae.decode(latent)
    if images.ndim == 5:  # some VAEs return (B, T, H, W, C)
        images = images.reshape(-1, *images.shape[-3:])
    return images


# -- running the UNet / text encoders under act_core hooks --------------------------------------

def percent_to_sigma(model, percent: float) -> float:
    return float(model.get_model_object("model_sampling").percent_to_sigma(float(percent)))


def add_unet_wrapper(model, wrapper: Callable) -> Any:
    """Clone ``model`` and wrap every UNet forward of the clone in ``wrapper``.

    ``wrapper(unet, call, transformer_options)`` must run ``call()`` (the real forward) and
    return its result; it sees the ``UNetModel`` and ComfyUI's ``transformer_options``
    (``cond_or_uncond``, ``sigmas``). The input MODEL is not changed.
    """

    def diffusion_model_wrapper(executor, *args, **kwargs):
        transformer_options = kwargs.get("transformer_options")
        if transformer_options is None:
            transformer_options = args[5] if len(args) > 5 else {}
        return wrapper(executor.class_obj, lambda: executor(*args, **kwargs), transformer_options)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                           outside_torch_compile(diffusion_model_wrapper))
    return m


def loaded_weight(model, key: str) -> torch.Tensor:
    """The value parameter ``key`` (e.g. ``diffusion_model.out.0.weight``) has while ``model`` is
    loaded, computed without loading it: a float32 copy of the original weight with ``model``'s own
    patches (LoRA, ...) applied.

    The original comes from the patchers' shared backup when some clone of the same model is
    currently loaded with its patches written into the modules, so a weight patched by an
    earlier run never becomes the base of a new patch.
    """
    import comfy.lora
    import comfy.model_patcher

    weight, _, convert = comfy.model_patcher.get_key_weight(model.model, key)
    backup = model.backup.get(key)
    if backup is not None:
        weight = backup.weight
    hook_backup = getattr(model, "hook_backup", {}).get(key)
    if hook_backup is not None:
        weight = hook_backup[0]
    w = weight.detach().to(torch.float32, copy=True)
    if convert is not None:
        w = convert(w, inplace=True)
    if key in model.patches:
        w = comfy.lora.calculate_weight(model.patches[key], w, key)
    return w


def add_weight_diffs(model, diffs: Dict[str, torch.Tensor]) -> None:
    """Add ``{state-dict key: Δ}`` to ``model`` (a clone) as ComfyUI "diff" weight patches.

    ComfyUI writes ``w + Δ`` into the modules when it loads ``model`` for sampling and restores
    ``w`` bit for bit when it unloads or switches to another clone, so the patch costs nothing
    per step and never reaches the MODEL the clone was made from. Raises when a key is unknown.
    """
    accepted = model.add_patches({k: (d.to(model.offload_device),) for k, d in diffs.items()}, 1.0, 1.0)
    missing = sorted(set(diffs) - set(accepted))
    if missing:
        raise RuntimeError(f"ComfyUI did not accept weight patches for {missing[:3]} ({len(missing)} keys); "
                           "the model's state dict has no such parameters")


def cond_rows(transformer_options, batch: int) -> Optional[torch.Tensor]:
    """``(batch,)`` bool: rows of the conditional (positive) half; None when unknown."""
    cu = transformer_options.get("cond_or_uncond") if transformer_options else None
    if not cu or batch % len(cu):
        return None
    chunk = batch // len(cu)
    return torch.tensor([c == 0 for c in cu for _ in range(chunk)], dtype=torch.bool)


def has_uncond_rows(transformer_options) -> bool:
    """True when this model call holds unconditional (negative-prompt) rows, i.e. cfg > 1."""
    cu = transformer_options.get("cond_or_uncond") if transformer_options else None
    return bool(cu) and any(c != 0 for c in cu)


def current_sigma(transformer_options) -> Optional[float]:
    s = transformer_options.get("sigmas") if transformer_options else None
    if s is None:
        return None
    return float(s.flatten()[0]) if isinstance(s, torch.Tensor) else float(s)


def sample_sigmas(transformer_options) -> Optional[torch.Tensor]:
    """The whole sampling's noise levels (``N + 1`` values for ``N`` steps), when ComfyUI passes them."""
    s = transformer_options.get("sample_sigmas") if transformer_options else None
    return s if isinstance(s, torch.Tensor) and s.numel() >= 2 else None


def patch_clip_encode(clip, around: Callable) -> Any:
    """Clone ``clip`` so that its text encoding runs inside ``around(cond_stage_model, call)``.

    Implemented as an object patch of ``cond_stage_model.encode_token_weights`` on the clone's
    patcher: ComfyUI applies it only while the clone is the loaded CLIP, so the input CLIP
    (which shares the same modules) is never affected.
    """
    c = clip.clone()
    cm = clip.cond_stage_model
    # an earlier Apply-to-CLIP on this chain already patched the encoder: run inside it, so
    # chained maps compose instead of the last one replacing the others
    previous = c.patcher.object_patches.get("encode_token_weights")
    if previous is None:
        original = type(cm).encode_token_weights
        previous = lambda token_weight_pairs: original(cm, token_weight_pairs)  # noqa: E731

    def encode_token_weights(token_weight_pairs):
        return around(cm, lambda: previous(token_weight_pairs))

    c.patcher.add_object_patch("encode_token_weights", encode_token_weights)
    return c


# -- the act_maps model folder -----------------------------------------------------------------

def register_maps_folder() -> None:
    """Register ``models/act_maps`` first in the folder list (``extra_model_paths.yaml`` entries
    named ``act_maps`` are kept after it) and list only ``.safetensors`` files there."""
    default = os.path.join(folder_paths.models_dir, MAPS_FOLDER)
    folder_paths.add_model_folder_path(MAPS_FOLDER, default, is_default=True)
    _, exts = folder_paths.folder_names_and_paths[MAPS_FOLDER]
    if exts != {".safetensors"}:
        exts.clear()
        exts.add(".safetensors")


def list_maps() -> List[str]:
    register_maps_folder()
    return sorted(folder_paths.get_filename_list(MAPS_FOLDER))


def map_path(name: str) -> str:
    register_maps_folder()
    return folder_paths.get_full_path_or_raise(MAPS_FOLDER, name)


def maps_save_dir() -> str:
    register_maps_folder()
    paths = folder_paths.get_folder_paths(MAPS_FOLDER)
    target = paths[0]
    os.makedirs(target, exist_ok=True)
    return target


def comfy_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # pragma: no cover - very old or very new layouts
        return "unknown"


# -- torch.compile (TorchCompileModel) ---------------------------------------------------------

def outside_torch_compile(fn: Callable) -> Callable:
    """``fn`` (and everything it calls: the whole steered UNet forward) runs eagerly, never traced
    by torch.compile.

    ComfyUI's TorchCompileModel compiles the UNet. TorchDynamo does not guard on forward hooks
    (``torch._dynamo.config.skip_nnmodule_hook_guards``, True by default): a graph traced while
    steering hooks were attached would keep running them after they were removed (steering the
    input MODEL), and a graph traced without them would ignore them. Steered UNet calls
    therefore run uncompiled; unsteered calls of the same model (another clone, the input
    MODEL) stay compiled, and fused mode with every layer folded adds no wrapper at all, so it
    keeps the compiled speed. Outside torch.compile the only cost is one context switch per
    UNet call.
    """
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    if disable is None:  # pragma: no cover - torch < 2.1 has no torch.compiler
        return fn
    return disable(fn, recursive=True)


def torch_compiled(model) -> bool:
    """True when ComfyUI's TorchCompileModel (``comfy_api.torch_helpers``) is set on ``model``."""
    return bool(getattr(model, "model_options", {}).get("torch_compile_kwargs"))


class CompiledPartCheck:
    """Finds a steered module inside a torch.compile'd part of a model tree.

    Nodes that compile single blocks put a TorchDynamo ``OptimizedModule`` in place of the block
    (an object patch). Its compiled graph keeps whichever forward hooks existed when it was
    traced (TorchDynamo does not guard on hooks), so steering hooks below it would be lost or,
    worse, kept after removal. Built once from the hooked module paths; calling it walks only
    their ancestors (a few hundred dictionary look-ups for a full SDXL map).
    """

    def __init__(self, names: Sequence[str]):
        self.trie: Dict[str, dict] = {}
        for name in names:
            node = self.trie
            for part in name.split("."):
                node = node.setdefault(part, {})

    def __call__(self, root) -> Optional[str]:
        """The path of the first compiled module above (or at) a steered module, else None."""
        import sys

        eval_frame = sys.modules.get("torch._dynamo.eval_frame")
        compiled = getattr(eval_frame, "OptimizedModule", None)
        if compiled is None:  # TorchDynamo never imported: nothing can be compiled
            return None
        stack = [(root, self.trie, "")]
        while stack:
            module, node, path = stack.pop()
            for part, below in node.items():
                child = module._modules.get(part) if isinstance(module, torch.nn.Module) else None
                if child is None:
                    child = getattr(module, part, None)
                here = f"{path}.{part}" if path else part
                if isinstance(child, compiled):
                    return here
                if child is not None and below:
                    stack.append((child, below, here))
        return None


# -- low-precision weights -----------------------------------------------------------------------

def coarse_weight_dtype(model, key: str) -> Optional[str]:
    """The dtype name of parameter ``key`` (e.g. ``diffusion_model.out.0.weight``) when its storage
    is too coarse to hold a folded weight, else None.

    Float8 weights (``weight_dtype`` fp8_e4m3fn / fp8_e5m2 of the diffusion model loader, fp8
    checkpoints) keep 3 or 2 mantissa bits, and ComfyUI rounds a patched float8 weight
    stochastically: ``a·w`` would carry up to 6–12 % noise per unit, far more than the weights' own
    rounding. float16 / bfloat16 / float32 weights fold at their own precision.
    """
    import comfy.model_patcher

    weight, _, _ = comfy.model_patcher.get_key_weight(model.model, key)
    dtype = weight.dtype
    if dtype.is_floating_point and dtype.itemsize == 1:
        return str(dtype).replace("torch.", "")
    return None


# -- masks ---------------------------------------------------------------------------------------

def latent_hw(transformer_options) -> Optional[tuple]:
    """``(H, W)`` of the latent the UNet is denoising in this call (ComfyUI records the input's
    shape as ``original_shape`` when the UNet starts), or None when unknown."""
    shape = transformer_options.get("original_shape") if transformer_options else None
    return (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) >= 4 else None


def cond_chunks(transformer_options) -> int:
    """How many conditioning chunks (cond / uncond) this UNet call stacks in its batch."""
    cu = transformer_options.get("cond_or_uncond") if transformer_options else None
    return len(cu) if cu else 1
