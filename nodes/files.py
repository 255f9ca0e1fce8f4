"""Save / Load transport maps in ComfyUI's ``models/act_maps`` folder (see comfy_compat).

Save writes ``<prefix>_00001_.safetensors``, ``<prefix>_00002_.safetensors``, ... (the next
free number after the highest one present, as ComfyUI's Save Image does): never an
overwrite. The prefix may name subfolders (``styles/watercolor``); every part is a plain
name that Windows accepts too (no device names such as ``CON`` or ``NUL``). The file is
written through :func:`act_core.files.write_new_file_in`: a symbolic link planted inside the
maps folder cannot redirect the write outside it.
"""

from __future__ import annotations

import os
import re

from act_core.files import write_new_file_in
from act_core.mapfile import MapFileError, MapWriteError, TransportMap

from . import comfy_compat as cc
from .comfy_compat import TransportMapType, io, ui
from .info import describe
from .steering import check_architecture

CATEGORY = "steering/act"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,127}$")
#: names Windows reserves for devices, with or without an extension ("nul.safetensors" too)
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
MAX_SUBFOLDERS = 4
EXT = ".safetensors"


def _name_problem(part: str) -> str:
    if not part or not _SAFE.match(part) or ".." in part:
        return ("use letters, digits, spaces, '_', '-' and '.', starting with a letter or digit, at most 128 "
                "characters, no '..'")
    if part[-1] in ". ":
        return "a name may not end with '.' or a space (Windows drops them)"
    if part.split(".")[0].rstrip(" ").upper() in RESERVED:
        return f"{part.split('.')[0]!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    return ""


def safe_map_name(name: str) -> str:
    """A plain file name ending in .safetensors, or ValueError (no folders, no '..', no hidden
    files, no Windows device names)."""
    name = (name or "").strip()
    if name and not name.endswith(EXT):
        name += EXT
    stem = name[: -len(EXT)]
    problem = "no folders" if "/" in name or "\\" in name else _name_problem(stem)
    if problem:
        raise ValueError(f"invalid map file name {name!r}: {problem} (e.g. 'watercolor_sdxl')")
    return name


def prefix_parts(filename_prefix: str):
    """``filename_prefix`` split into checked parts: subfolders, then the file-name prefix."""
    text = (filename_prefix or "").strip()
    if text.endswith(EXT):
        text = text[: -len(EXT)]
    parts = [p.strip() for p in re.split(r"[/\\]", text)]
    if not text or len(parts) > MAX_SUBFOLDERS + 1:
        raise ValueError(f"invalid filename_prefix {filename_prefix!r}: give a name such as 'watercolor' or "
                         f"'styles/watercolor' (at most {MAX_SUBFOLDERS} subfolders)")
    for p in parts:
        problem = _name_problem(p)
        if problem:
            raise ValueError(f"invalid filename_prefix {filename_prefix!r}: part {p!r}: {problem}")
    return parts


def next_name(prefix: str, existing) -> str:
    """``<prefix>_NNNNN_.safetensors`` with NNNNN one above the highest number present for this
    prefix (compared without case, as on Windows and macOS)."""
    pattern = re.compile(re.escape(prefix) + r"_(\d+)_" + re.escape(EXT) + "$", re.IGNORECASE)
    numbers = [int(m.group(1)) for m in map(pattern.match, existing) if m]
    return f"{prefix}_{max(numbers, default=0) + 1:05d}_{EXT}"


def save_map(tmap: TransportMap, filename_prefix: str) -> str:
    """Write ``tmap`` as the next ``<filename_prefix>_NNNNN_.safetensors`` in models/act_maps and
    return its path; never overwrites a file, never writes outside the folder."""
    parts = prefix_parts(filename_prefix)
    data = tmap._encode()  # MapWriteError for a map that cannot be stored, before anything is created
    folder = cc.maps_save_dir()
    try:
        return write_new_file_in(folder, parts, lambda existing: next_name(parts[-1], existing), data)
    except OSError as e:
        raise MapWriteError.wrap(os.path.join(folder, *parts[:-1], parts[-1] + "_NNNNN_" + EXT), e) from e


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
            description="Writes the map to models/act_maps/<prefix>_00001_.safetensors (the next free number, as Save "
                        "Image does; never overwrites; atomically). The same file works in diffusers and the act-steer CLI.",
            inputs=[
                TransportMapType.Input("transport_map", tooltip="The map to save."),
                io.String.Input("filename_prefix", default="my_style_map",
                                tooltip="File name prefix; '_00001_.safetensors' (the next free number) is added. "
                                        "May start with subfolders of models/act_maps, e.g. 'styles/watercolor'."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the map was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, transport_map, filename_prefix) -> io.NodeOutput:
        path = save_map(transport_map, filename_prefix)
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
