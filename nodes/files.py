"""Save / Load transport maps in ComfyUI's ``models/act_maps`` folder (see comfy_compat)."""

from __future__ import annotations

import os
import re

from act_core.mapfile import MapFileError, TransportMap

from . import comfy_compat as cc
from .comfy_compat import TransportMapType, io, ui
from .info import describe
from .steering import check_architecture

CATEGORY = "steering/act"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,127}$")


def safe_map_name(name: str) -> str:
    """A plain file name ending in .safetensors, or ValueError (no folders, no '..', no hidden files)."""
    name = (name or "").strip()
    if name and not name.endswith(".safetensors"):
        name += ".safetensors"
    stem = name[: -len(".safetensors")]
    if not stem or not _SAFE.match(name) or ".." in name or "/" in name or "\\" in name:
        raise ValueError(
            f"invalid map file name {name!r}: use letters, digits, spaces, '_', '-' and '.', starting with a letter "
            "or digit, no folders (e.g. 'watercolor_sdxl')"
        )
    return name


def save_map(tmap: TransportMap, name: str) -> str:
    name = safe_map_name(name)
    path = os.path.join(cc.maps_save_dir(), name)
    tmap.save(path)  # atomic: temp file + rename
    return path


def load_map(name: str) -> TransportMap:
    if name not in cc.list_maps():
        safe_map_name(name)  # a traversal attempt gets the name error
        raise FileNotFoundError(f"no map {name!r} in models/act_maps; put .safetensors maps there or save one first")
    tmap = TransportMap.load(cc.map_path(name))
    check_architecture(tmap)
    return tmap


class SaveMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActSaveMap",
            display_name="Save transport map (AcT)",
            category=CATEGORY,
            description="Writes the map to models/act_maps/<name>.safetensors (atomically; the same file works in diffusers and the act-steer CLI).",
            inputs=[
                TransportMapType.Input("transport_map", tooltip="The map to save."),
                io.String.Input("name", default="my_style_map", tooltip="File name (no folders); '.safetensors' is added."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the map was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, transport_map, name) -> io.NodeOutput:
        path = save_map(transport_map, name)
        return io.NodeOutput(path, ui=ui.PreviewText(f"saved {os.path.basename(path)}\n" + describe(transport_map)))


class LoadMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActLoadMap",
            display_name="Load transport map (AcT)",
            category=CATEGORY,
            description="Loads a map from models/act_maps (and act_maps folders of extra_model_paths.yaml); shows its metadata.",
            inputs=[io.Combo.Input("map_name", options=cc.list_maps(), tooltip="A .safetensors map in models/act_maps.")],
            outputs=[TransportMapType.Output(display_name="transport_map", tooltip="The loaded map."),
                     io.String.Output(display_name="info", tooltip="The map's metadata as text.")],
        )

    @classmethod
    def fingerprint_inputs(cls, map_name):
        try:
            st = os.stat(cc.map_path(map_name))
            return f"{st.st_mtime_ns}:{st.st_size}"
        except Exception:
            return float("nan")

    @classmethod
    def validate_inputs(cls, map_name):
        # any file listed from models/act_maps (subfolders, spaces, unicode) loads; the list is
        # also what keeps a name inside those folders
        names = cc.list_maps()
        if map_name in names:
            return True
        if not names:
            return (f"invalid map file name {map_name!r}: there are no maps in models/act_maps yet; fit one and save "
                    "it with 'Save transport map (AcT)'")
        return (f"invalid map file name {map_name!r}: it is not one of the maps in models/act_maps "
                "(refresh the node to see the current files)")

    @classmethod
    def execute(cls, map_name) -> io.NodeOutput:
        try:
            tmap = load_map(map_name)
        except MapFileError as e:
            raise MapFileError(f"{map_name}: {e}") from None
        text = describe(tmap)
        return io.NodeOutput(tmap, text, ui=ui.PreviewText(text))


NODES = [SaveMap, LoadMap]
