"""The pack always runs its own bundled act_core: registered before anything else imports one, and a
different act_core imported first is refused with a message that names both versions and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.util, sys, types
sys.path.insert(0, {comfy!r})
sys.path.insert(0, {tools!r})
import comfyui_setup
comfyui_setup.load_file_module("act_comfy_shim", {shim!r}).install()
from comfy.cli_args import args
args.cpu = True
{preload}
spec = importlib.util.spec_from_file_location("act_pack_probe", {init!r}, submodule_search_locations=[{root!r}])
mod = importlib.util.module_from_spec(spec)
sys.modules["act_pack_probe"] = mod
try:
    spec.loader.exec_module(mod)
except ImportError as e:
    print("IMPORT-ERROR:", e)
    raise SystemExit(0)
import act_core
print("USES:", act_core.__file__)
"""


def _run(comfy_env, preload=""):
    code = SCRIPT.format(comfy=str(comfy_env["dir"]), init=str(ROOT / "__init__.py"), root=str(ROOT), preload=preload,
                         tools=str(ROOT / "tools"), shim=str(ROOT / "tools" / "comfy_shim" / "sitecustomize.py"))
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_bundled_act_core_is_the_one_the_nodes_use(comfy_env):
    out = _run(comfy_env)
    assert f"USES: {ROOT / 'act_core' / '__init__.py'}" in out, out


def test_another_act_core_of_another_version_is_refused_with_the_fix(comfy_env):
    fake = ("fake = types.ModuleType('act_core'); fake.__version__ = '0.0.9'; "
            "fake.__file__ = '/elsewhere/site-packages/act_core/__init__.py'; sys.modules['act_core'] = fake")
    out = _run(comfy_env, fake)
    assert "IMPORT-ERROR:" in out and "0.0.9" in out and "pip uninstall act-steering" in out, out
    from act_core import __version__

    assert f"bundled act_core {__version__}" in out, out
