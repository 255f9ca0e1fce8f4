"""The installed distribution holds act_core only (never a top-level `nodes`), with its data."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_only_act_core_and_its_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("act_steering-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "act_core" in tops and all(t == "act_core" or t.endswith(".dist-info") for t in tops), tops
    assert "nodes" not in tops and not any(n.startswith("nodes/") for n in names)
    for data in ("act_core/diffusion/prompts/data/captions.txt", "act_core/diffusion/prompts/data/styles.json",
                 "act_core/llm/data/lm_toxicity.json"):
        assert data in names, data
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and b"act-steer = act_core.cli:main" in zipfile.ZipFile(wheel).read(entry[0])


def test_comfy_requirements_never_install_torch():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    reqs = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert reqs, "requirements.txt lists nothing"
    assert not any(r.lower().startswith(("torch", "torchvision", "torchaudio")) for r in reqs)


def test_license_matches_pyproject_and_no_placeholder_url():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "MIT" }' in text and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "example.invalid" not in text


def test_no_absolute_machine_paths_in_tracked_files():
    """Docs, code and reports speak of the project alone: paths are relative to the repository."""
    import re

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    pattern = re.compile(rb"(^|[^A-Za-z0-9_.])/(work|root|home/[a-z]+)/[A-Za-z]")
    bad = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue
        bad += [f"{name.decode()}: {m.group(0)!r}" for m in pattern.finditer(data)]
    assert not bad, bad[:10]
