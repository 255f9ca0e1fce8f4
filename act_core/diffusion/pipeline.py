"""SDXL (base, Lightning, Turbo) in diffusers: load, fit style / negation maps, generate, sweep.

diffusers is imported lazily (inside functions), so importing this module costs nothing.

How activations are collected (as in the reference): each prompt batch is pushed through the
pipeline for ONE denoising step at the noisiest timestep (a 1-step Euler schedule with
``timestep_spacing="trailing"``, t = 999, swapped in for the call and restored afterwards),
``guidance_scale=0`` (no CFG batch), ``output_type="latent"`` (no VAE decode). The forward pass
is aborted right after the last hooked module (:class:`act_core.hooks.StopForward`, raised inside
the text encoder or UNet and caught around the pipeline call). Initial noise comes from a CPU
generator seeded with ``seed + batch index``, so fits are deterministic.

Module names are canonical (``unet.…``, ``text_encoder.…``, ``text_encoder_2.…``); the runner's
``model`` is :func:`act_core.diffusion.families.sdxl.sdxl_module_tree`, a view of the pipeline's modules whose
``named_modules()`` are those names, so collectors and :func:`act_core.hooks.steer` attach
straight onto the pipeline's own modules. Causal fitting uses the measured forward order
(:meth:`SDXLRunner.order`), because the UNet's ``named_modules()`` order is not forward order.

Maps act at every denoising step with the same strength (as in the paper). An experimental
variant fits one map per denoising step (:func:`fit_step_maps`); ``bench/diffusers_timesteps.py``
measures whether that helps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..fitting import fit_map
from ..hooks import ActivationCollector, attach, run_until_stop, steer
from ..mapfile import TransportMap
from ..text_checks import check_texts
from .families.sdxl import PRESETS, sdxl_canonical_names, sdxl_module_tree
from .images import label_grid
from .noise import batch_noise
from .presets import resolve_modules

ARCHITECTURE = "sdxl"
KINDS = ("base", "lightning", "turbo")
#: generation defaults per model kind: (steps, guidance scale)
DEFAULTS = {"base": (30, 5.0), "lightning": (4, 0.0), "turbo": (1, 0.0)}
COLLECT_TIMESTEP_NOTE = "1-step trailing Euler, t=999, guidance 0, latent output"

Progress = Callable[[int, int, str], None]


# -- loading -------------------------------------------------------------------------------------


def _dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}: choose float32, float16 or bfloat16")
    return table[dtype]


def _guess_kind(path: Path, unet: Optional[Path]) -> str:
    text = f"{path.name} {unet.name if unet else ''}".lower()
    if "lightning" in text:
        return "lightning"
    if "turbo" in text:
        return "turbo"
    return "base"


def _lightning_steps(unet: Optional[Path]) -> Optional[int]:
    m = re.search(r"(\d+)step", unet.name.lower()) if unet else None
    return int(m.group(1)) if m else None


def _load_unet_weights(pipe, unet_path: Path) -> None:
    """Replace the UNet's weights with a diffusers-format UNet file or folder (e.g. SDXL-Lightning's
    ``sdxl_lightning_4step_unet.safetensors``); every key must match."""
    if unet_path.is_dir():
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(unet_path, local_files_only=True,
                                                         torch_dtype=pipe.unet.dtype).to(pipe.unet.device)
        return
    if unet_path.suffix != ".safetensors":
        raise ValueError(f"{unet_path}: UNet weights must be a .safetensors file or a diffusers UNet folder")
    from safetensors.torch import load_file

    sd = load_file(str(unet_path))
    missing, unexpected = pipe.unet.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{unet_path} does not fit this SDXL UNet: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}). Expected a diffusers-format SDXL UNet "
            "state dict such as sdxl_lightning_4step_unet.safetensors on the SDXL base pipeline."
        )


def load_sdxl(
    path: Union[str, Path],
    kind: str = "auto",
    unet: Union[str, Path, None] = None,
    config: Union[str, Path, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    device: Optional[str] = None,
):
    """Load an SDXL-family pipeline from local files only (never the network).

    Args:
        path: a diffusers folder (``model_index.json``) or a single-file checkpoint
            (``.safetensors``/``.ckpt``, A1111/ComfyUI layout).
        kind: ``base`` | ``lightning`` | ``turbo`` | ``auto`` (from the file names). Lightning
            gets an Euler scheduler with ``timestep_spacing="trailing"`` (``prediction_type="sample"``
            for the 1-step x0 UNet); all kinds record default steps/guidance in ``pipe.act_defaults``.
        unet: optional diffusers-format UNet weights to put on ``path`` (SDXL-Lightning's
            ``sdxl_lightning_{1,2,4,8}step_unet.safetensors`` on the SDXL base).
        config: for single files: a local diffusers SDXL folder providing the component configs
            and tokenizers (weights not needed). Required offline: without it diffusers would
            fetch the configs from the Hub.
        dtype: ``float32`` (default on CPU) | ``float16`` (default on CUDA) | ``bfloat16``.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    path = Path(path).expanduser()
    unet_path = Path(unet).expanduser() if unet else None
    if not path.exists():
        raise FileNotFoundError(f"model path not found: {path} (give a diffusers SDXL folder or a .safetensors checkpoint)")
    if unet_path is not None and not unet_path.exists():
        raise FileNotFoundError(f"UNet weights not found: {unet_path}")
    if kind == "auto":
        kind = _guess_kind(path, unet_path)
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: choose one of {', '.join(KINDS)} or 'auto'")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _dtype(dtype, device)
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ValueError(f"{path} is not a diffusers pipeline folder (no model_index.json); give the folder "
                             "that holds model_index.json, or a single-file .safetensors checkpoint")
        pipe = StableDiffusionXLPipeline.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True)
    else:
        pipe = _from_single_file(path, config, torch_dtype)
    if unet_path is not None:
        _load_unet_weights(pipe, unet_path)
    steps, guidance = DEFAULTS[kind]
    if kind == "lightning":
        n = _lightning_steps(unet_path) or _lightning_steps(path)
        steps = n or steps
        extra = {"prediction_type": "sample"} if n == 1 else {}
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", **extra)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.act_defaults = {"kind": kind, "steps": steps, "guidance": guidance, "source": str(path),
                         "unet": str(unet_path) if unet_path else None}
    return pipe


def _from_single_file(path: Path, config, torch_dtype):
    from diffusers import StableDiffusionXLPipeline

    if path.suffix not in (".safetensors", ".ckpt", ".pt", ".bin", ".sft"):
        raise ValueError(f"{path}: unsupported checkpoint type {path.suffix!r}; use .safetensors")
    kwargs: Dict[str, Any] = dict(torch_dtype=torch_dtype, local_files_only=True)
    if config is not None:
        cfg = Path(config).expanduser()
        if not (cfg / "model_index.json").exists():
            raise FileNotFoundError(f"--config {cfg} must be a local diffusers SDXL folder with model_index.json "
                                    "(component configs and tokenizers; weights are not needed)")
        kwargs["config"] = str(cfg)
    try:
        return StableDiffusionXLPipeline.from_single_file(str(path), **kwargs)
    except (OSError, EnvironmentError, ValueError) as e:
        if config is None:
            raise ValueError(
                f"could not load single-file checkpoint {path} offline: diffusers needs the SDXL component configs "
                "and tokenizers. Pass config= (CLI: --config) a local diffusers SDXL folder, e.g. a download of "
                f"stabilityai/stable-diffusion-xl-base-1.0 without weights. ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        raise


def pipeline_defaults(pipe) -> dict:
    return dict(getattr(pipe, "act_defaults", None) or {"kind": "base", "steps": DEFAULTS["base"][0],
                                                        "guidance": DEFAULTS["base"][1]})


# -- the runner ------------------------------------------------------------------------------------


class _StepCounter:
    """Counts UNet calls within one pipeline call (a forward pre-hook on the UNet)."""

    def __init__(self, unet: torch.nn.Module, on_step: Optional[Callable[[int], None]] = None):
        self.step = -1
        self.on_step = on_step
        self.handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.step += 1
        if self.on_step is not None:
            self.on_step(self.step)

    def remove(self):
        self.handle.remove()


class SDXLRunner:
    """Runner (see :mod:`act_core.fitting`) over a diffusers SDXL pipeline.

    Args:
        pipe: a ``StableDiffusionXLPipeline`` (any SDXL-family weights).
        batch_size: prompts per pipeline call.
        seed: the initial noise of each prompt (:func:`act_core.diffusion.noise.prompt_noise`: seeded
            with ``seed`` and a hash of the prompt text, the rule the ComfyUI Fit node uses too), so
            a prompt gets the same noise whatever batch it is in.
        height, width: image size during collection (default: the pipeline's, 1024 for SDXL).
        collect_step: None (default): one step at t = 999. ``k``: run the model's own
            ``steps``-step schedule, unsteered, and record only at denoising step ``k``
            (UNet modules only; the experimental per-step maps).
        steps: schedule length for ``collect_step`` (default: the pipeline's default steps).
        on_batch: ``callback(done, total)`` after every batch (progress bars).
    """

    architecture = ARCHITECTURE

    def __init__(self, pipe, batch_size: int = 4, seed: int = 0, height: Optional[int] = None,
                 width: Optional[int] = None, collect_step: Optional[int] = None, steps: Optional[int] = None,
                 on_batch: Optional[Callable[[int, int], None]] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.pipe, self.batch_size, self.seed = pipe, batch_size, seed
        self.height, self.width = height, width
        self.collect_step, self.steps = collect_step, steps
        self.on_batch = on_batch
        self.model = sdxl_module_tree(pipe)

    # one pipeline call -------------------------------------------------------------------------
    def _latents(self, prompts: List[str]) -> torch.Tensor:
        scale = self.pipe.vae_scale_factor
        h = (self.height or self.pipe.default_sample_size * scale) // scale
        w = (self.width or self.pipe.default_sample_size * scale) // scale
        c = self.pipe.unet.config.in_channels
        return batch_noise(self.seed, prompts, (c, h, w)).to(device=self.pipe.unet.device, dtype=self.pipe.unet.dtype)

    def _call(self, prompts: List[str], steps: int):
        return self.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=0.0, output_type="latent",
                         latents=self._latents(prompts), height=self.height, width=self.width)

    @torch.no_grad()
    def run(self, inputs: Sequence[str], collector: ActivationCollector) -> None:
        from diffusers import EulerDiscreteScheduler

        prompts = [str(p) for p in inputs]
        total = (len(prompts) + self.batch_size - 1) // self.batch_size
        saved = self.pipe.scheduler
        counter = None
        if self.collect_step is None:
            self.pipe.scheduler = EulerDiscreteScheduler.from_config(saved.config, timestep_spacing="trailing")
            steps = 1
        else:
            steps = self.steps or pipeline_defaults(self.pipe)["steps"]
            if not 0 <= self.collect_step < steps:
                raise ValueError(f"collect_step {self.collect_step} is outside the {steps}-step schedule")
            k = self.collect_step

            def gate(step):  # record only during denoising step k
                if step == k and not collector._handles:
                    collector.attach()
                elif step != k and collector._handles:
                    collector.remove()

            counter = _StepCounter(self.pipe.unet, gate)
        try:
            for b in range(total):
                batch = prompts[b * self.batch_size:(b + 1) * self.batch_size]
                collector.attention_mask = None  # pool over all 77 token positions, as steering acts on all
                if counter is not None:
                    counter.step = -1
                    if collector._handles:
                        collector.remove()
                run_until_stop(self._call, batch, steps)
                if self.on_batch:
                    self.on_batch(b + 1, total)
        finally:
            self.pipe.scheduler = saved
            if counter is not None:
                counter.remove()
                if not collector._handles:
                    collector.attach()  # the caller's `with collector` expects it attached

    @torch.no_grad()
    def order(self, names: Sequence[str]) -> List[str]:
        """``names`` in forward (completion) order, measured with one 1-prompt collection run:
        a module comes after every module whose output it consumes."""
        names = list(names)
        seen: List[str] = []
        handles = []
        for n in names:
            def hook(m, a, o, n=n):
                if n not in seen:
                    seen.append(n)
            handles.append(self.model.get_submodule(n).register_forward_hook(hook))
        try:
            col = ActivationCollector(self.model, [names[-1]], stop_after=False)
            saved = self.on_batch, self.batch_size
            self.on_batch, self.batch_size = None, 1
            try:
                with col:
                    self.run(["a photo"], col)
            finally:
                self.on_batch, self.batch_size = saved
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in seen]
        if missing:
            raise ValueError(f"modules never ran during a denoising step: {missing[:5]}")
        return seen


# -- fitting ---------------------------------------------------------------------------------------


def fit_sdxl_map(
    pipe,
    source: Sequence[str],
    target: Sequence[str],
    layers: Union[str, Sequence[str]] = "unet_norms",
    method: str = "linear",
    procedure: str = "simultaneous",
    pooling: str = "mean",
    support: Optional[str] = None,
    seed: int = 0,
    batch_size: int = 4,
    height: Optional[int] = None,
    width: Optional[int] = None,
    progress: Optional[Progress] = None,
    on_batch: Optional[Callable[[int, int], None]] = None,
    **meta: Any,
) -> TransportMap:
    """Fit a map from ``source`` prompts toward ``target`` prompts on the layers named by a
    preset / regex list (canonical names). Returns a :class:`TransportMap` (architecture "sdxl")."""
    source, target = check_texts(source, "source prompts"), check_texts(target, "target prompts")
    runner = SDXLRunner(pipe, batch_size=batch_size, seed=seed, height=height, width=width, on_batch=on_batch)
    modules = resolve_modules(layers, sdxl_canonical_names(pipe), PRESETS)
    d = pipeline_defaults(pipe)
    return fit_map(runner, list(source), list(target), modules, method=method, pooling=pooling, procedure=procedure,
                   support=support, progress=progress, layers=layers if isinstance(layers, str) else list(layers),
                   model_kind=d["kind"], collection=COLLECT_TIMESTEP_NOTE, seed=seed, **meta)


def fit_style_map(pipe, style: str, n: int = 64, layers: Union[str, Sequence[str]] = "unet_norms",
                  method: str = "linear", procedure: str = "simultaneous", seed: int = 0, tags=None,
                  captions: Optional[Sequence[str]] = None, **kwargs) -> TransportMap:
    """Style map: plain captions -> captions + style tags (:func:`act_core.diffusion.prompts.style_pairs`)."""
    from . import prompts as P

    source, target = P.style_pairs(style, n=n, seed=seed, captions=captions, tags=tags)
    return fit_sdxl_map(pipe, source, target, layers, method, procedure, seed=seed, task="style",
                        style=style, condition=P.style_label(style), **kwargs)


def fit_negation_map(pipe, concept: str, n: int = 64, layers: Union[str, Sequence[str]] = "unet_norms",
                     method: str = "linear", procedure: str = "simultaneous", seed: int = 0,
                     captions: Optional[Sequence[str]] = None, **kwargs) -> TransportMap:
    """Negation map: captions + concept modifier -> plain captions (:func:`act_core.diffusion.prompts.negation_pairs`)."""
    from . import prompts as P

    source, target = P.negation_pairs(concept, n=n, seed=seed, captions=captions)
    return fit_sdxl_map(pipe, source, target, layers, method, procedure, seed=seed, task="negation",
                        concept=concept, condition=P.concept_label(concept), **kwargs)


# -- generation ------------------------------------------------------------------------------------


def _check_map(pipe, tmap: TransportMap, tree: torch.nn.Module) -> None:
    if not isinstance(tmap, TransportMap):
        raise TypeError(f"expected a TransportMap, got {type(tmap).__name__}")
    tmap.check_model(tree, architecture=ARCHITECTURE)


@torch.no_grad()
def generate(
    pipe,
    prompt: Union[str, Sequence[str]],
    tmap: Union[TransportMap, Mapping[int, TransportMap], None] = None,
    strength: Union[float, Mapping[str, float]] = 1.0,
    seed: int = 0,
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    support: Optional[str] = None,
    negative_prompt: Union[str, Sequence[str], None] = None,
    output_type: str = "pil",
    steer_negative: bool = False,
):
    """Images for ``prompt`` (one per prompt) with ``tmap`` applied at ``strength`` at every step.

    With classifier-free guidance (``guidance > 1``) the UNet sees the negative (unconditional)
    rows and the conditional rows in one batch; as in the reference and the ComfyUI nodes, only
    the conditional rows are steered unless ``steer_negative``. Text-encoder maps act on every
    prompt the encoders encode (the negative prompt too).

    ``tmap=None`` or ``strength=0`` gives the unsteered image, bit for bit (the hooks return the
    output untouched at λ = 0 and are removed afterwards). ``tmap`` may also be a dict
    ``{step: TransportMap}`` from :func:`fit_step_maps` (map ``k`` acts at denoising step ``k``;
    the last map covers later steps). Noise: ``torch.Generator("cpu").manual_seed(seed)``, one
    generator for the whole call, so with several prompts each image depends on its position in
    the list (the CLI and :func:`sweep_images` call this once per prompt).
    """
    d = pipeline_defaults(pipe)
    steps = d["steps"] if steps is None else int(steps)
    guidance = d["guidance"] if guidance is None else float(guidance)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError("empty prompt: give a non-empty text prompt")
    kw = dict(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
              output_type=output_type, generator=torch.Generator("cpu").manual_seed(seed))
    if negative_prompt is not None:
        kw["negative_prompt"] = negative_prompt
    if tmap is None:
        return pipe(**kw).images
    tree = sdxl_module_tree(pipe)
    rows = None if steer_negative or guidance <= 1 else cond_rows_gate(len(prompts))
    if isinstance(tmap, Mapping):
        return _generate_step_maps(pipe, tree, dict(tmap), strength, support, kw, rows)
    _check_map(pipe, tmap, tree)
    with steer(tree, tmap, strength=strength, support=support, gate=rows):
        return pipe(**kw).images


def cond_rows_gate(images: int):
    """Steering gate (see :class:`act_core.hooks.SteerHandle`) that steers only the conditional
    rows of a CFG batch: a UNet call with ``2 * images`` rows holds ``[negative; conditional]``
    (diffusers' order), so its second half is steered; every other call (text encoders, a UNet
    call without the negative half) is steered whole."""
    def gate(name, x):
        if not name.startswith("unet.") or x.shape[0] != 2 * images:
            return True
        rows = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        rows[images:] = True
        return rows

    return gate


def _generate_step_maps(pipe, tree, maps: Dict[int, TransportMap], strength, support, kw, rows=None):
    keys = sorted(maps)
    for m in maps.values():
        _check_map(pipe, m, tree)
    counter = _StepCounter(pipe.unet)

    def gate_for(k, nxt):
        def gate(name, x):
            if not k <= max(counter.step, 0) < nxt:
                return False
            return True if rows is None else rows(name, x)
        return gate

    handles = []
    try:
        for i, k in enumerate(keys):
            nxt = keys[i + 1] if i + 1 < len(keys) else 1 << 30
            handles.append(attach(tree, maps[k], strength, support=support, gate=gate_for(k, nxt)))
        return pipe(**kw).images
    finally:
        for h in handles:
            h.remove()
        counter.remove()


def fit_step_maps(pipe, source: Sequence[str], target: Sequence[str], layers="unet_norms",
                  steps: Optional[int] = None, method: str = "linear", seed: int = 0, batch_size: int = 4,
                  height: Optional[int] = None, width: Optional[int] = None, **meta) -> Dict[int, TransportMap]:
    """EXPERIMENTAL: one map per denoising step ``k`` of the model's own schedule, fitted on
    unsteered activations recorded at step ``k`` (UNet modules only). Use with :func:`generate`."""
    d = pipeline_defaults(pipe)
    steps = steps or d["steps"]
    modules = resolve_modules(layers, sdxl_canonical_names(pipe), PRESETS)
    bad = [n for n in modules if not n.startswith("unet.")]
    if bad:
        raise ValueError(f"per-step maps only cover UNet modules (text encoders run once): {bad[:3]}")
    out = {}
    for k in range(steps):
        runner = SDXLRunner(pipe, batch_size=batch_size, seed=seed, height=height, width=width,
                            collect_step=k, steps=steps)
        out[k] = fit_map(runner, list(source), list(target), modules, method=method,
                         procedure="simultaneous", model_kind=d["kind"], collection=f"step {k} of {steps}", **meta)
    return out


# -- images, grids, metadata -----------------------------------------------------------------------


def sweep_images(pipe, prompts: Sequence[str], tmap, strengths: Sequence[float], seed: int = 0,
                 on_image: Optional[Callable[[int, int], None]] = None, **gen_kwargs) -> List[List[Any]]:
    """``images[row][col]``: prompt ``row`` at strength ``strengths[col]``, same seed along a row."""
    if not prompts:
        raise ValueError("no prompts to sweep")
    if not strengths:
        raise ValueError("no strengths to sweep")
    total, done, rows = len(prompts) * len(strengths), 0, []
    for p in prompts:
        row = []
        for lam in strengths:
            row.append(generate(pipe, p, tmap, strength=float(lam), seed=seed, **gen_kwargs)[0])
            done += 1
            if on_image:
                on_image(done, total)
        rows.append(row)
    return rows


def sweep_grid(pipe, prompts: Sequence[str], tmap, strengths: Sequence[float], seed: int = 0, **gen_kwargs):
    """A labelled grid image: rows = prompts, columns = strengths λ, same seed in every cell of a row."""
    rows = sweep_images(pipe, prompts, tmap, strengths, seed, **gen_kwargs)
    return label_grid(rows, [f"λ={float(s):g}" for s in strengths], list(prompts))


__all__ = [
    "ARCHITECTURE", "KINDS", "DEFAULTS", "load_sdxl", "SDXLRunner", "fit_sdxl_map", "fit_style_map",
    "fit_negation_map", "fit_step_maps", "generate", "sweep_images", "sweep_grid", "pipeline_defaults",
]
