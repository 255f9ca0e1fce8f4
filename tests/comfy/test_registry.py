"""Registry and template conventions: what `comfy node publish` packs (git-tracked files minus
``.comfyignore``, matched as comfy-cli matches it: gitignore patterns via ``pathspec``), template
thumbnails where ComfyUI 0.3.75's template browser looks for them, and the declared ComfyUI range
(``requires-comfyui``: tests/comfy/test_versions.py)."""

import subprocess
import urllib.request
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def archive_files():
    """The files of the registry archive, as comfy-cli's ``zip_files`` selects them."""
    pathspec = pytest.importorskip("pathspec")
    try:
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the archive is made from git-tracked files")
    lines = (ROOT / ".comfyignore").read_text().splitlines()
    with warnings.catch_warnings():  # comfy-cli's pattern style; newer pathspec calls it "gitignore"
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = pathspec.PathSpec.from_lines("gitwildmatch", [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")])
    return {f for f in tracked.splitlines() if f.strip() and not spec.match_file(f)}


def test_the_registry_archive_holds_the_pack_and_nothing_else():
    files = archive_files()
    for excluded in ("tests/", "bench/", "reports/", "tools/", "docs/images/", ".ci/"):
        assert not [f for f in files if f.startswith(excluded)], excluded
    needed = {"__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "act_core/__init__.py",
              "act_core/_version.py", "docs/comfyui.md"}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "nodes").glob("*.py")}
    needed |= {f"workflows/{t}.{ext}" for t in TEMPLATES for ext in ("json", "jpg")}
    untracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard", "nodes", "act_core",
                                "workflows"], capture_output=True, text=True).stdout.split()
    assert not untracked, f"pack files not in git (the archive would lack them): {untracked}"
    assert needed <= files, sorted(needed - files)
    # every Python module the pack imports at run time ships (act_core is imported by the nodes)
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "act_core").rglob("*.py")} <= files


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_has_a_thumbnail(name):
    """ComfyUI 0.3.75's frontend (1.32.9) shows a pack's template ``<name>.json`` with the picture
    ``<name>.jpg`` next to it (served at /api/workflow_templates/<pack>/<name>.jpg)."""
    jpg = (ROOT / "workflows" / f"{name}.jpg").read_bytes()
    assert jpg[:3] == b"\xff\xd8\xff", "not a JPEG"
    assert 5_000 < len(jpg) < 250_000, len(jpg)
    from PIL import Image
    import io

    with Image.open(io.BytesIO(jpg)) as im:
        assert im.format == "JPEG" and min(im.size) >= 256 and im.size[0] == im.size[1], im.size


def test_the_frontend_asks_for_jpg_thumbnails_of_pack_templates(comfy_env):
    """The pinned frontend builds a pack template's picture URL from its name and the 'jpg' subtype."""
    import comfyui_frontend_package

    assets = Path(comfyui_frontend_package.__file__).parent / "static" / "assets"
    bundles = [p.read_text(errors="ignore") for p in assets.glob("*.js")]
    hits = [b for b in bundles if "/workflow_templates/" in b and 'mediaSubtype:"jpg"' in b]
    assert hits, "the frontend no longer names pack template thumbnails <name>.jpg: check where it looks now"


def test_the_server_serves_the_thumbnails(comfy_server):
    for name in TEMPLATES:
        with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates/act-steering/{name}.jpg", timeout=30) as r:
            assert r.headers.get_content_type() == "image/jpeg"
            assert r.read() == (ROOT / "workflows" / f"{name}.jpg").read_bytes()
