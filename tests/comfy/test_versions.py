"""The declared ComfyUI range: pyproject.toml's ``requires-comfyui`` names the oldest ComfyUI the
tests run, and the pack works there.

Every ComfyUI test runs against 0.3.75 (the default of tools/comfyui_setup.py); the whole suite
runs against another version with ``ACT_COMFYUI_VERSION=<version> pytest tests/comfy``. This file
always runs the pack on the oldest supported version (a real server: the nodes load, the shipped
style and mask templates run, fused mode runs) and checks the declaration where ComfyUI and
comfy-cli read it (``comfy_config``, the registry's parser, vendored in ComfyUI).
"""

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

import comfy_harness as srv
import ui2api
from conftest import TINY, VERSION, comfyui_dir, comfyui_setup

pytestmark = pytest.mark.comfy

ROOT = Path(__file__).resolve().parents[2]
OLDEST = comfyui_setup.OLDEST
SMALL = {"ckpt_name": TINY, "width": 64, "height": 64, "steps": 2, "count": 4}


def test_requires_comfyui_is_the_oldest_tested_version(comfy_env):
    assert list(comfyui_setup.VERSIONS)[0] == comfyui_setup.COMFYUI_VERSION  # the default is the newest tested
    from comfy_config import config_parser  # what ComfyUI and comfy-cli read from a node folder

    config = config_parser.extract_node_configuration(str(ROOT))
    assert config.project.supported_comfyui_version == f">={OLDEST}"
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name


@pytest.fixture(scope="module")
def oldest_server(request, tiny_pack, tmp_path_factory):
    """A server of the oldest supported ComfyUI with the pack and the tiny-model pack installed
    (the session's own server when the suite already runs on that version)."""
    if VERSION == OLDEST:
        yield request.getfixturevalue("comfy_server")
        return
    comfy = comfyui_dir(OLDEST)
    base = tmp_path_factory.mktemp("oldest_base")
    srv.install_pack(base / "custom_nodes")
    shutil.copytree(Path(__file__).parent / "act_tiny_sdxl", base / "custom_nodes" / "act_tiny_sdxl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    tiny_pack.save_tiny_checkpoint(base / "models" / "checkpoints" / TINY)
    s = srv.ComfyServer(comfy, base, pythonpath=comfyui_setup.pythonpath(OLDEST))
    t0 = time.time()
    s.start()
    print(f"ComfyUI {OLDEST} answered after {time.time() - t0:.1f} s", file=sys.stderr)
    yield s
    s.stop()


@pytest.mark.slow
def test_the_pack_on_the_oldest_supported_comfyui(oldest_server):
    s = oldest_server
    assert s.get("/system_stats")["system"]["comfyui_version"] == OLDEST
    pack_lines = [line for line in s.log().splitlines() if "act-steering" in line]
    assert pack_lines and not any("IMPORT FAILED" in line for line in pack_lines), "\n".join(pack_lines)
    info = s.get("/object_info")
    ids = ["ActPromptPairs", "ActFitTransportMap", "ActApplyToModel", "ActApplyToClip", "ActSaveMap", "ActLoadMap",
           "ActCombineMaps", "ActMapInfo", "ActStrengthSweep"]
    assert all(i in info for i in ids), [i for i in ids if i not in info]
    assert "mask" in info["ActApplyToModel"]["input"]["optional"]
    assert sorted(s.get("/workflow_templates")["act-steering"]) == sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    for name, extra in (("act_style_control", {"mode": "fused (weight patches)", "support": "all", "steer_negative": True}),
                        ("act_masked_style", {})):
        ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
        entry = s.run(ui2api.convert(ui, info, overrides={**SMALL, **extra}), timeout=300, workflow=ui)
        assert entry["status"]["status_str"] == "success", (name, json.dumps(entry["status"])[:3000])
        assert any(img["type"] == "output" for out in entry["outputs"].values() for img in out.get("images", []))
    fused = [line for line in s.log().splitlines() if "AcT fused mode:" in line]
    assert fused and re.search(r"AcT fused mode: [1-9]\d* of", fused[-1]), fused
