"""The Save / Load map nodes under attack (issue 13) in a real ComfyUI 0.3.75 (in-process).

Save never writes outside ``models/act_maps`` whatever links are planted in it, never
overwrites (``<prefix>_00001_.safetensors``, the next free number), refuses Windows device
names, and cleans stale temporary files of killed saves; Load turns a hostile file (deep JSON)
into a MapFileError naming it. A tiny two-module map: no model is needed.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from act_core import TransportMap, fit_transport
from act_core.files import STALE_AFTER_DEAD_OWNER
from act_core.mapfile import MapFileError

pytestmark = pytest.mark.comfy
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(pack):
    from act_steering_pack.nodes import comfy_compat, files

    files.cc = comfy_compat
    return files


@pytest.fixture(scope="module")
def maps_dir(files):
    return Path(files.cc.maps_save_dir())


def small_map(shift=1.0) -> TransportMap:
    g = torch.Generator().manual_seed(0)
    tmap = TransportMap(meta={"architecture": "sdxl", "style": "test"})
    for name, d in (("unet.mid_block.resnets.0.norm1", 4), ("unet.mid_block.resnets.0.norm2", 3)):
        tmap.add(name, fit_transport(torch.randn(16, d, generator=g), torch.randn(16, d, generator=g) + shift),
                 "spatial_mean")
    return tmap


def _save(files, tmap, prefix):
    return files.SaveMap.execute(tmap, prefix).result[0]


def test_save_counts_up_and_never_overwrites(files, maps_dir):
    """Issue 12: a filename_prefix with a counter like Save Image (before: one name, silently overwritten)."""
    a, b = small_map(1.0), small_map(2.0)
    first = _save(files, a, "rel_count")
    second = _save(files, b, "rel_count")
    assert Path(first).name == "rel_count_00001_.safetensors" and Path(second).name == "rel_count_00002_.safetensors"
    assert Path(first).read_bytes() == a.to_bytes() and Path(second).read_bytes() == b.to_bytes()
    (maps_dir / "REL_COUNT_00007_.safetensors").write_bytes(b"not a map")  # case-insensitive, as on Windows
    assert Path(_save(files, a, "rel_count")).name == "rel_count_00008_.safetensors"
    assert (maps_dir / "REL_COUNT_00007_.safetensors").read_bytes() == b"not a map"
    assert Path(_save(files, a, "rel_count.safetensors")).name == "rel_count_00009_.safetensors"
    back = files.load_map("rel_count_00002_.safetensors")
    k = next(iter(b.maps))
    assert torch.equal(back[k].omega, b[k].omega)


def test_a_prefix_may_name_subfolders_and_the_loader_lists_them(files, maps_dir):
    path = Path(_save(files, small_map(), "rel_styles/deep/watercolor"))
    assert path == maps_dir / "rel_styles" / "deep" / "watercolor_00001_.safetensors"
    assert "rel_styles/deep/watercolor_00001_.safetensors" in files.cc.list_maps()
    assert files.LoadMap.validate_inputs("rel_styles/deep/watercolor_00001_.safetensors") is True
    assert len(files.load_map("rel_styles/deep/watercolor_00001_.safetensors")) == 2


def test_a_link_planted_in_the_maps_folder_never_redirects_a_save(files, maps_dir, tmp_path):
    """Before: saving through a symlink planted in models/act_maps overwrote the file it points to
    (or created one outside the folder)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.safetensors"
    victim.write_bytes(b"precious")
    for name in ("rel_link.safetensors", "rel_link_00001_.safetensors"):  # the old and the new target name
        os.symlink(victim, maps_dir / name)
    os.symlink(outside / "created.safetensors", maps_dir / "rel_link_00002_.safetensors")  # dangling
    os.symlink(outside, maps_dir / "rel_evil")  # a subfolder that leads outside
    try:
        path = Path(_save(files, small_map(), "rel_link"))
        assert path == maps_dir / "rel_link_00003_.safetensors" and not path.is_symlink()
        with pytest.raises(OSError, match="link or a file, not a folder"):
            _save(files, small_map(), "rel_evil/style")
        assert victim.read_bytes() == b"precious"
        assert sorted(p.name for p in outside.iterdir()) == ["victim.safetensors"]
        assert len(TransportMap.load(path)) == 2
    finally:
        for name in ("rel_link.safetensors", "rel_link_00001_.safetensors", "rel_link_00002_.safetensors", "rel_evil"):
            (maps_dir / name).unlink()


@pytest.mark.parametrize("name", ["NUL", "con", "Prn.txt", "aux", "COM1", "lpt9", "nul.safetensors", "rel_ok/CON/x",
                                  "Con.tar.gz", "trailing."])
def test_windows_device_names_are_refused(files, maps_dir, name):
    """Before: 'NUL', 'CON', ... were accepted as map names (on Windows: a device, not a file)."""
    before = sorted(p.name for p in maps_dir.iterdir())
    with pytest.raises(ValueError, match="device name on Windows|may not end with"):
        files.SaveMap.execute(small_map(), name)
    if "/" not in name:
        with pytest.raises(ValueError, match="invalid map file name"):
            files.safe_map_name(name)
    assert sorted(p.name for p in maps_dir.iterdir()) == before


def test_com10_and_names_that_only_contain_a_device_name_are_fine(files):
    for name in ("COM10", "console", "nullable", "my_con"):
        assert Path(_save(files, small_map(), name)).name == f"{name}_00001_.safetensors"


def test_stale_temporary_files_of_killed_saves_are_removed_by_later_saves(files, maps_dir):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = maps_dir / f".rel_killed.safetensors.{p.pid}-0a1b2c3d.tmp"
    fresh = maps_dir / f".rel_killed.safetensors.{p.pid}-0a1b2c3e.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"\0" * 4096)
    old = time.time() - STALE_AFTER_DEAD_OWNER - 60
    os.utime(stale, (old, old))
    _save(files, small_map(), "rel_other")
    assert not stale.exists() and fresh.exists()  # a recent one may belong to a save that is still running
    fresh.unlink()


def test_a_deeply_nested_map_file_fails_clearly_in_the_load_node(files, maps_dir):
    """Before: RecursionError through the ComfyUI Load node."""
    meta = small_map().to_metadata()
    text = json.dumps(meta)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
    from safetensors.torch import save

    bad = maps_dir / "rel_deep.safetensors"
    bad.write_bytes(save({"w": torch.zeros(1)}, metadata={"act": text}))
    try:
        with pytest.raises(MapFileError, match=r"rel_deep.safetensors: .*nested 5001 levels deep"):
            files.LoadMap.execute("rel_deep.safetensors")
    finally:
        bad.unlink()


def test_saved_workflows_widgets_match_the_save_node(files):
    schema = files.SaveMap.define_schema()
    widgets = [i.id for i in schema.inputs if i.get_io_type() == "STRING"]
    assert widgets == ["filename_prefix"]
    for wf in sorted((ROOT / "workflows").glob("*.json")):
        for node in json.loads(wf.read_text())["nodes"]:
            if node["type"] == "ActSaveMap":
                assert len(node["widgets_values"]) == len(widgets), wf.name
                files.prefix_parts(node["widgets_values"][0])  # a valid prefix
            if node["type"] == "ActLoadMap":
                assert node["widgets_values"][0] == "watercolor_sdxl_00001_.safetensors", wf.name
