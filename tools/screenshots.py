#!/usr/bin/env python3
"""Regenerate the ComfyUI pictures in the docs, in the real ComfyUI and its frontend.

    python tools/screenshots.py                # the docs' pictures: the quick start's three templates
                                               # -> docs/images/template_<name>.jpg, and the Strength
                                               # sweep's output -> docs/images/comfyui_sweep_output.png
    python tools/screenshots.py NAME ...       # those templates -> docs/images/template_<name>.jpg
    python tools/screenshots.py --all          # every template -> docs/images/template_<name>.jpg
    python tools/screenshots.py --thumbnails   # every template -> workflows/<name>.jpg (template browser)

The sweep's output is a real run of workflows/act_strength_sweep.json in the test ComfyUI on the
miniature SDXL's 4-step student (a single-file checkpoint written from the package's weights, loaded
through the test-only pack tests/comfy/act_miniworld_sdxl), with the miniature's own prompt pairs and
its sampler settings (4 steps, cfg 1, 128x128); about a minute on 2 CPU cores.

Starts the test ComfyUI (tools/comfyui_setup.py, CPU, loopback) with this pack installed, opens its
frontend in headless Chromium (Debian's package; tools/bootstrap.sh installs it with
ACT_INSTALL_BROWSER=1), loads each workflows/*.json, fits the whole graph into the view and saves a
JPEG (quality 85, about 100-200 KB each). Nothing is sampled: these are pictures of the graphs.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"

#: Fit every node and group into the canvas (graph units -> screen: (p + offset) * scale).
FIT_VIEW = """(() => {
  const c = app.canvas, r = c.canvas.getBoundingClientRect();
  c._lowQualityZoomThreshold = 0.05;
  let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
  const add = b => { x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]);
                     x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]); };
  for (const n of app.graph._nodes) add(n.getBounding());
  for (const g of (app.graph._groups || app.graph.groups || [])) add(g._bounding || g.bounding);
  const m = 30, s = Math.min(r.width / (x1 - x0 + 2 * m), r.height / (y1 - y0 + 2 * m), 1.0);
  c.ds.scale = s;
  c.ds.offset = [(r.width / s - (x1 - x0)) / 2 - x0, (r.height / s - (y1 - y0)) / 2 - y0];
  c.setDirty(true, true);
  return [x1 - x0, y1 - y0, s];
})()"""

#: Only the canvas: close the first-start template dialog, hide the menus (focus mode), the minimap and
#: the canvas info, and draw text at every zoom (LiteGraph drops it below a zoom threshold).
CLEAR = """(async () => {
  document.querySelectorAll('.p-dialog button i.pi-times').forEach(i => i.closest('button').click());
  const em = app.extensionManager;
  for (const [k, v] of [['Comfy.Minimap.Visible', false], ['Comfy.Graph.CanvasInfo', false]]) {
    try { await em.setting.set(k, v); } catch (e) {} }
  if (!em.focusMode) em.toggleFocusMode();
  app.canvas._lowQualityZoomThreshold = 0.05;
  app.canvas.setDirty(true, true);
  return true;
})()"""


#: Thumbnails: also hide the canvas' own controls (the zoom toolbar and the menu button).
HIDE_CONTROLS = """(() => {
  let e = document.querySelector('[data-testid="zoom-controls-button"]');
  while (e && e.parentElement && !['absolute', 'fixed'].includes(getComputedStyle(e).position)) e = e.parentElement;
  if (e) e.style.visibility = 'hidden';
  document.querySelectorAll('.comfy-menu-hamburger').forEach(h => { h.style.visibility = 'hidden'; });
  return !!e;
})()"""


def _browser_session():
    sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests" / "comfy")]
    import cdp
    import comfy_harness
    import comfyui_setup

    if not comfyui_setup.ready():
        comfyui_setup.main([])
    return cdp, comfy_harness, comfyui_setup


def capture(names, out: Path = OUT, width: int = 1600, height: int = 900, quality: int = 85,
            filename: str = "template_{name}.jpg", hide_controls: bool = False):
    cdp, harness, setup = _browser_session()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as base:
        harness.install_pack(Path(base) / "custom_nodes")
        server = harness.ComfyServer(setup.comfyui_dir(), Path(base)).start()
        browser = cdp.Browser(harness.free_port()).start()
        try:
            browser.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            browser.call("Page.navigate", url=server.url)
            browser.wait_for("!!(window.app && window.app.graph && document.querySelector('canvas'))", 120)
            time.sleep(2.0)
            browser.evaluate(CLEAR)
            for name in names:
                wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
                browser.evaluate(f"app.loadGraphData({json.dumps(wf)})")
                time.sleep(0.8)
                browser.evaluate(CLEAR)
                if hide_controls:
                    browser.evaluate(HIDE_CONTROLS)
                browser.evaluate(FIT_VIEW)
                time.sleep(0.8)
                data = browser.call("Page.captureScreenshot", format="jpeg", quality=quality)["data"]
                path = out / filename.format(name=name)
                path.write_bytes(base64.b64decode(data))
                written.append(path)
                print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")
        finally:
            browser.close()
            server.stop()
    return written


#: the templates the docs' quick start shows, in its order: fit and save, load and apply, fit and apply
QUICK_START = ["act_fit_then_save", "act_load_and_apply", "act_style_control"]
SWEEP_CKPT = "miniworld_student_4step.safetensors"


def sweep_output(out: Path = OUT / "comfyui_sweep_output.png", style: str = "poster") -> Path:
    """Run the Strength sweep template on the miniature's 4-step student and save its grid (enlarged) as a PNG."""
    import shutil
    from io import BytesIO

    from PIL import Image

    cdp, harness, setup = _browser_session()
    import ui2api

    sys.path.insert(0, str(ROOT))
    from act_core.diffusion import miniworld as MW
    from act_core.diffusion.miniworld import experiments as E
    from act_core.files import atomic_write_bytes

    src, tgt = E.style_pairs(style, 32)
    caption = "a large blue circle and a small red triangle on a plain background"
    with tempfile.TemporaryDirectory() as base:
        base = Path(base)
        harness.install_pack(base / "custom_nodes")
        shutil.copytree(ROOT / "tests" / "comfy" / "act_miniworld_sdxl", base / "custom_nodes" / "act_miniworld_sdxl",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (base / "models" / "checkpoints").mkdir(parents=True)
        MW.single_file(base / "models" / "checkpoints" / SWEEP_CKPT, student=4)
        server = harness.ComfyServer(setup.comfyui_dir(), base).start()
        try:
            info = server.get("/object_info")
            ui = json.loads((ROOT / "workflows" / "act_strength_sweep.json").read_text())
            prompt = ui2api.convert(ui, info, overrides={
                "ckpt_name": SWEEP_CKPT, "width": 128, "height": 128, "steps": 4, "cfg": 1.0, "scheduler": "simple",
                "goal": "(my own source/target lists)", "source_prompts": "\n".join(src),
                "target_prompts": "\n".join(tgt), "strengths": "0, 0.5, 1, 1.5, 2", "columns": 5})
            for node in prompt.values():  # the positive prompt: a caption of the miniature's world
                if node["class_type"] == "CLIPTextEncode" and node["inputs"].get("text", "").startswith("a portrait"):
                    node["inputs"]["text"] = caption
                elif node["class_type"] == "CLIPTextEncode":
                    node["inputs"]["text"] = ""
            entry = server.run(prompt, timeout=600)
            imgs = [i for o in entry["outputs"].values() for i in o.get("images", [])]
            img = imgs[0]
            grid = Image.open(base / img["type"] / img.get("subfolder", "") / img["filename"]).convert("RGB")
        finally:
            server.stop()
    k = max(1, 720 // grid.width)  # the miniature draws 32x32 images: enlarge, pixel for pixel
    grid = grid.resize((grid.width * k, grid.height * k), Image.NEAREST)
    buf = BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(out, buf.getvalue())
    print(f"{out.relative_to(ROOT)}: {out.stat().st_size // 1024} KB, {grid.width}x{grid.height}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="template names (default: every workflows/*.json)")
    ap.add_argument("--thumbnails", action="store_true",
                    help="write the template browser's thumbnails instead: workflows/<name>.jpg, 640x640")
    ap.add_argument("--all", action="store_true", help="every template -> docs/images/template_<name>.jpg")
    args = ap.parse_args(argv)
    every = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    if not (args.names or args.all or args.thumbnails):
        capture(QUICK_START)
        sweep_output()
        return 0
    names = args.names or every
    if args.thumbnails:  # the frontend shows a pack's template <name>.json with the <name>.jpg next to it
        capture(names, out=ROOT / "workflows", width=640, height=640, quality=80, filename="{name}.jpg",
                hide_controls=True)
    else:
        capture(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
