"""Fixtures for the ComfyUI tests: a real ComfyUI 0.3.75 (tools/comfyui_setup.py), imported in-process.

``ACT_COMFYUI_VERSION=0.3.52`` runs the whole ComfyUI suite against another version
(``comfyui_setup.VERSIONS``); tests/comfy/test_versions.py always runs a smoke test on the oldest.

The setup runs once (idempotent, stamped). When it cannot run (no network and no prepared
``.comfyui/``) the tests skip with the setup's error as the reason, except in CI (``CI=true``),
where a missing ComfyUI is a failure.
"""

import os
import shutil
import time
import subprocess
import sys
from pathlib import Path

import pytest

TINY = "tiny_sdxl.safetensors"

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tools" / "comfy_shim"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import comfy_harness as server  # noqa: E402


sys.path.insert(0, str(ROOT / "tools"))
try:
    import comfyui_setup  # noqa: E402
finally:
    sys.path.pop(0)
_load_file_module = comfyui_setup.load_file_module
VERSION = os.environ.get("ACT_COMFYUI_VERSION") or comfyui_setup.COMFYUI_VERSION


def comfyui_dir(version: str = VERSION) -> Path:
    if not comfyui_setup.ready(version):
        done = subprocess.run([sys.executable, str(ROOT / "tools" / "comfyui_setup.py"), "--version", version],
                              capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            if os.environ.get("CI") == "true":
                pytest.fail(f"ComfyUI setup failed in CI: {why[0]}")
            pytest.skip(f"no ComfyUI for the node-pack tests (tools/comfyui_setup.py failed: {why[0]}); "
                        "it needs network access to PyPI once")
    return comfyui_setup.comfyui_dir(version)


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    """Import ComfyUI in this process (CPU), with models/ under a temporary folder."""
    import torch

    torch.set_num_threads(1)
    comfy_dir = comfyui_dir()
    _load_file_module("act_comfy_shim", SHIM / "sitecustomize.py").install()
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths

    base = tmp_path_factory.mktemp("comfy_base")
    folder_paths.models_dir = str(base / "models")
    folder_paths.set_temp_directory(str(base / "temp")) if hasattr(folder_paths, "set_temp_directory") else None
    folder_paths.output_directory = str(base / "output")
    import comfy.model_management  # noqa: F401  (device setup with args.cpu)
    import nodes  # noqa: F401  (ComfyUI's nodes.py: registers the stock nodes)

    return {"dir": comfy_dir, "base": base}


@pytest.fixture(scope="session")
def pack(comfy_env):
    """The node pack imported as ComfyUI imports it: the repository root as a package."""
    return _load_file_module("act_steering_pack", ROOT / "__init__.py", ROOT)


@pytest.fixture(scope="session")
def tiny_pack(comfy_env):
    return _load_file_module("act_tiny_sdxl", HERE / "act_tiny_sdxl" / "__init__.py", HERE / "act_tiny_sdxl")


@pytest.fixture()
def tiny(tiny_pack):
    """A fresh tiny SDXL (MODEL, CLIP); seeded, so every build is identical."""
    return tiny_pack.build(seed=0)


@pytest.fixture(scope="session")
def comfy_server(comfy_env, tiny_pack, tmp_path_factory):
    base = tmp_path_factory.mktemp("server_base")
    server.install_pack(base / "custom_nodes")
    shutil.copytree(Path(__file__).parent / "act_tiny_sdxl", base / "custom_nodes" / "act_tiny_sdxl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    tiny_pack.save_tiny_checkpoint(base / "models" / "checkpoints" / TINY)
    # a second act_maps folder, as a user's extra_model_paths.yaml would add it
    (base / "extra_maps").mkdir()
    (base / "extra_model_paths.yaml").write_text(f"act_tests:\n  base_path: {base}\n  act_maps: extra_maps\n")
    s = server.ComfyServer(comfy_env["dir"], base, pythonpath=comfyui_setup.pythonpath(VERSION))
    t0 = time.time()
    s.start(extra_args=["--extra-model-paths-config", str(base / "extra_model_paths.yaml")])
    print(f"ComfyUI server answered after {time.time() - t0:.1f} s")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def interrupt_on_call(monkeypatch, target, name: str, after: int = 1):
    """Make ``target.<name>`` set ComfyUI's interrupt flag (as Cancel / ``POST /interrupt`` does)
    on its ``after``-th call, then call through; returns the call counter ``[n]``."""
    import comfy.model_management as mm

    original, calls = getattr(target, name), [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == after:
            mm.interrupt_current_processing(True)
        return original(*a, **k)

    monkeypatch.setattr(target, name, wrapped)
    return calls

