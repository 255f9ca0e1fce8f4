"""Map info node: what a map steers and how it was made."""

from __future__ import annotations

from collections import Counter

from act_core.diffusion import families
from act_core.diffusion.families import generic
from act_core.mapfile import TransportMap

from .comfy_compat import TransportMapType, io, ui

CATEGORY = "steering/act"


def describe(tmap: TransportMap) -> str:
    """Human-readable summary: layers, units, method, prompts, recommended strength."""
    s = tmap.summary()
    meta = tmap.meta
    groups = Counter(".".join(n.split(".")[:2]) if n.startswith(("unet.", "transformer.", "diffusion_model.")) else n.split(".")[0]
                     for n in tmap.maps)
    prompts = meta.get("prompts") or {}
    goal = meta.get("style") or meta.get("concept") or meta.get("goal") or "-"
    arch = meta.get("architecture")
    fam = families.for_architecture(arch)
    if fam is not None:
        kind = f"{fam.title} (canonical layer names; works in ComfyUI and diffusers)"
    elif generic.is_generic(arch):
        kind = f"ComfyUI {generic.model_class(arch)} (generic path: ComfyUI's module names; this model type only)"
    else:
        kind = arch or "unknown"
    lines = [
        f"architecture: {kind}",
        f"method: {meta.get('method')}  procedure: {meta.get('procedure', '-')}  support: {meta.get('default_support')}",
        f"layers: {s['modules']}  units: {s['units']}  (degenerate units: {s['degenerate_units']})",
        "by block: " + ", ".join(f"{k} {v}" for k, v in groups.items()),
        f"goal: {'negate ' if meta.get('concept') else ''}{goal}" + (f"  tags: {meta['tags']}" if meta.get("tags") else ""),
        f"prompts: {prompts.get('source_count', '?')} source / {prompts.get('target_count', '?')} target",
        f"recommended strength λ: {tmap.default_strength:g} (0 = off, 1 = full transport; try 0.5-1.5)",
        "first layers: " + ", ".join(s["first_modules"]),
    ]
    if meta.get("composition"):
        parts = meta["composition"]["parts"]
        lines.append("combined from: " + "; ".join(
            f"{p.get('style') or p.get('concept') or p.get('method')} @ {p['strength']:g}" for p in parts))
    if meta.get("library_version"):
        lines.append(f"act-steering {meta['library_version']}")
    return "\n".join(lines)


class MapInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActMapInfo",
            display_name="Transport map info (AcT)",
            category=CATEGORY,
            description="Shows a map's layers, unit count, method, prompts and recommended strength.",
            inputs=[TransportMapType.Input("transport_map", tooltip="The map to describe.")],
            outputs=[io.String.Output(display_name="info", tooltip="The description as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, transport_map) -> io.NodeOutput:
        text = describe(transport_map)
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES = [MapInfo]
