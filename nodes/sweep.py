"""Strength sweep node: one image per λ, same seed, labelled and laid out as a grid."""

from __future__ import annotations

import math
import re
from typing import List, Sequence

import numpy as np
import torch

from . import comfy_compat as cc
from .apply import HOOKS, MODES, PERCENT, WINDOWS, apply_to_model
from .comfy_compat import TransportMapType, io, ui

CATEGORY = "steering/act"
MAX_STRENGTHS = 16


def parse_strengths(text: str) -> List[float]:
    items = [s for s in re.split(r"[,\s;]+", text or "") if s]
    if not items:
        raise ValueError("give at least one strength, e.g. '0, 0.5, 1, 1.5'")
    try:
        values = [float(s) for s in items]
    except ValueError:
        raise ValueError(f"strengths must be numbers separated by commas, got {text!r}") from None
    bad = [items[i] for i, v in enumerate(values) if not math.isfinite(v) or abs(v) > 10]
    if bad:
        raise ValueError(f"strength {bad[0]!r} is not a finite number between -10 and 10 (the Apply node's range)")
    if len(values) > MAX_STRENGTHS:
        raise ValueError(f"{len(values)} strengths given; a sweep renders at most {MAX_STRENGTHS}")
    return values


def labelled_grid(images: Sequence[torch.Tensor], labels: Sequence[str], columns: int) -> torch.Tensor:
    """Tile ``(H, W, 3)`` images in rows of ``columns`` with a text strip above each; ``(1, H', W', 3)``.

    The text is sized to the strip (a scalable font where Pillow has one) and kept ASCII: Pillow's
    bundled fonts have no Greek, so a "λ" would be drawn as an empty box."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = images[0].shape[:2]
    strip = max(12, min(32, h // 8))
    try:
        font = ImageFont.load_default(size=strip - 4)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    tiles = []
    for img, label in zip(images, labels):
        canvas = Image.new("RGB", (w, h + strip), (255, 255, 255))
        arr = (img.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(arr), (0, strip))
        text = label.replace("λ", "lambda ").encode("ascii", "replace").decode()
        draw = ImageDraw.Draw(canvas)
        if draw.textlength(text, font=font) > w - 4:  # small images: the value alone ("lambda=1.5" -> "1.5")
            text = text.split("=", 1)[-1]
        draw.text((2, 1), text, fill=(0, 0, 0), font=font)
        tiles.append(torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0))
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    blank = torch.ones_like(tiles[0])
    tiles += [blank] * (rows * columns - len(tiles))
    grid = torch.cat([torch.cat(tiles[r * columns:(r + 1) * columns], dim=1) for r in range(rows)], dim=0)
    return grid.unsqueeze(0)


class StrengthSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActStrengthSweep",
            display_name="Strength sweep (AcT)",
            category=CATEGORY,
            description=(
                "Renders the same seed once per strength λ with the map applied to the model exactly as 'Apply transport "
                "map to model' with the same options (window, steer negative, per-block factors, mode) would, decodes "
                "with the VAE and returns a labelled grid plus the images. λ = 0 is the unsteered model."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SDXL-family model."),
                TransportMapType.Input("transport_map", tooltip="A map with UNet layers."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent_image", tooltip="Starting latent (Empty Latent Image)."),
                io.Vae.Input("vae", tooltip="VAE to decode the results."),
                io.String.Input("strengths", default="0, 0.5, 1, 1.5", tooltip="Comma-separated λ values, one image each."),
                io.Int.Input("seed", default=0, min=0, max=cc.MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed, the same for every λ."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.1, tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=cc.sampler_names(), default="euler", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=cc.scheduler_names(), default="normal", tooltip="Scheduler."),
                io.Int.Input("columns", default=4, min=1, max=16, tooltip="Images per grid row."),
                # the options of 'Apply transport map to model', applied at every λ of the sweep
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="As in 'Apply transport map to model': start of the steered window."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="As in 'Apply transport map to model': end of the steered window."),
                io.Boolean.Input("steer_negative", default=False, optional=True,
                                 tooltip="As in 'Apply transport map to model': also steer the negative half when cfg > 1."),
                io.String.Input("per_block", default="", optional=True,
                                tooltip="As in 'Apply transport map to model': per-block factors on λ, e.g. 'down=0, up=1.5'."),
                io.Combo.Input("mode", options=list(MODES), default=HOOKS, optional=True,
                               tooltip="As in 'Apply transport map to model': hooks or fused (weight patches)."),
                io.Combo.Input("window", options=list(WINDOWS), default=PERCENT, optional=True,
                               tooltip="As in 'Apply transport map to model': how start/end are counted."),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="Labelled grid, one tile per λ."),
                     io.Image.Output(display_name="images", tooltip="The images as a batch, in λ order.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, transport_map, positive, negative, latent_image, vae, strengths, seed, steps, cfg,
                sampler_name, scheduler, columns, start_percent=0.0, end_percent=1.0, steer_negative=False, per_block="",
                mode=HOOKS, window=PERCENT) -> io.NodeOutput:
        values = parse_strengths(strengths)
        latent = latent_image["samples"]
        bar = cc.progress_bar(len(values))
        images = []
        for i, lam in enumerate(values):
            cc.check_interrupted()
            m = apply_to_model(model, transport_map, lam, start_percent, end_percent, steer_negative, per_block or "",
                               mode or HOOKS, window or PERCENT)
            out = cc.sample(m, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler,
                            noise_mask=latent_image.get("noise_mask"), batch_index=latent_image.get("batch_index"))
            images.append(cc.decode(vae, out))
            bar.update_absolute(i + 1, len(values))
        batch = torch.cat(images, 0)
        per = images[0].shape[0]
        labels = [f"lambda={lam:g}" + (f" #{k}" if per > 1 else "") for lam in values for k in range(per)]
        grid = labelled_grid(list(batch), labels, columns * per)
        return io.NodeOutput(grid, batch, ui=ui.PreviewImage(grid, cls=cls))


NODES = [StrengthSweep]
