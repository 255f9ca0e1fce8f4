"""``act-steer bake``: a map folded into the weights at a fixed strength, as a checkpoint that
loads without act_core.

    act-steer bake --model sdxl-base/ --map watercolor.safetensors --strength 0.8 --out sdxl_watercolor.safetensors
    act-steer bake --model ./my-llm --map tox.safetensors --strength 1 --out ./my-llm-detox/

The fold is :mod:`act_core.fold` (through :func:`act_core.bake.bake` for diffusion models and
:func:`act_core.llm.export.fold_map` for language models) with the unbounded support: per unit
``y -> a y + c`` becomes ``weight' = a weight``, ``bias' = a bias + c``. A map that cannot be
folded exactly (a quantile band is only an issue of the support, which baking sets to ``all``;
a spatial-mean map with ω ≠ 1, e.g. Linear-AcT on GroupNorms; a module without a bias for a
non-zero offset) is refused with every module named: a baked checkpoint equals the steered
model or is not written.

Diffusion models (the map's architecture is a diffusion family) are written as ONE
original-layout single file (:func:`act_core.diffusion.single_file.save_single_file`), which
ComfyUI's Load Checkpoint and diffusers' ``from_single_file`` read. Language models are written
as a transformers folder (config, weights, tokenizer) that ``from_pretrained`` loads
(:func:`act_core.llm.export.save_folded_model`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import CLIError, finite_float

DIFFUSION_ARCHITECTURES = ("sdxl",)


def register(sub) -> None:
    p = sub.add_parser(
        "bake", help="fold a map at a fixed strength into the weights: a checkpoint that loads without act_core",
        description="Fold a transport map at a fixed strength (unbounded support) into the model's weights and write "
                    "a checkpoint: an SDXL single file for ComfyUI's Load Checkpoint / diffusers, or a transformers "
                    "folder for language models. Example: act-steer bake --model sdxl-base/ --map watercolor.safetensors "
                    "--strength 0.8 --out sdxl_watercolor.safetensors")
    p.add_argument("--map", required=True, help="transport map (.safetensors)")
    p.add_argument("--strength", type=finite_float, default=None, help="λ to bake in (default: the map's default strength)")
    p.add_argument("--out", required=True, help="the checkpoint: a .safetensors file (diffusion) or a folder (language model)")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="the model the map was fitted on: an SDXL diffusers folder or single "
                                                  "file, or a transformers language-model folder")
    g.add_argument("--config", help="SDXL single files: a local diffusers SDXL folder with the configs (offline)")
    g.add_argument("--unet", help="SDXL: diffusers-format UNet weights to load on --model first (e.g. Lightning)")
    g.add_argument("--dtype", default="auto", help="float32 (CPU default) | float16 (CUDA default) | bfloat16: the "
                                                   "precision the model is loaded, baked and written in")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:1 … (default: cuda if available)")
    p.set_defaults(handler=_bake)


def _bake(args) -> int:
    from ..mapfile import TransportMap

    tmap = TransportMap.load(args.map)
    lam = tmap.default_strength if args.strength is None else args.strength
    if tmap.architecture in DIFFUSION_ARCHITECTURES:
        return _bake_diffusion(args, tmap, lam)
    return _bake_llm(args, tmap, lam)


def _note_support(tmap) -> None:
    from ..fold import effective_support

    bands = sorted({effective_support(t) for t in tmap.maps.values()} - {"all"})
    if bands:
        print(f"note: the map's default support is {', '.join(bands)}; a fixed-weight checkpoint applies it with the "
              "unbounded support 'all' (a band depends on each value and cannot be folded)", file=sys.stderr)


def _bake_diffusion(args, tmap, lam: float) -> int:
    from ..bake import BakeError, bake
    from ..diffusion.single_file import save_single_file
    from .image import _load

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must be a .safetensors single file for a diffusion model, got {out.name!r}")
    if not out.parent.is_dir():
        raise CLIError(f"output folder {str(out.parent)!r} does not exist; create it first")
    args.kind, args.family = "auto", "auto"
    pipe = _load(args)
    from ..diffusion.pipeline import family_of

    family = family_of(pipe)
    if family.name not in ("sdxl", "sd15"):
        raise CLIError(f"bake writes SDXL and SD1.x single-file checkpoints; {args.model!r} is "
                       f"{family.title}: steer it with the map instead (act-steer generate --map ...)")
    _note_support(tmap)
    try:
        bake(pipe, tmap, lam, support="all")
    except BakeError as e:
        raise CLIError(f"{e}. A baked checkpoint must equal the steered model; fit a map that folds (Mean-AcT, or "
                       "layers without spatial-mean GroupNorm maps, e.g. --layers with LayerNorms only) or steer "
                       "with hooks") from None
    save_single_file(pipe, out)
    print(f"wrote {out}: {len(tmap)} modules folded at λ = {lam:g} (support all); load it with ComfyUI's Load "
          "Checkpoint or diffusers' from_single_file, no act_core needed")
    return 0


def _bake_llm(args, tmap, lam: float) -> int:
    from ..llm import export
    from ..llm.adapter import load_lm

    save = getattr(export, "save_folded_model", None)
    if save is None:
        raise CLIError("baking a language model into a from_pretrained folder needs act_core.llm.export."
                       "save_folded_model, which this version does not have; `act-steer lm-export --fold` writes the "
                       "folded weights as a state dict")
    out = Path(args.out)
    if out.suffix == ".safetensors":
        raise CLIError(f"--out must be a folder for a language model, got the file name {out.name!r}")
    model, tok = load_lm(args.model, device=args.device)
    tmap.check_model(model)
    _note_support(tmap)
    result = export.fold_map(model, tmap, lam, support="all")
    save(model, tok, result, out, tmap=tmap)
    print(f"wrote {out}: {len(tmap)} modules folded at λ = {lam:g} (support all); load it with "
          "AutoModelForCausalLM.from_pretrained, no act_core needed")
    return 0
