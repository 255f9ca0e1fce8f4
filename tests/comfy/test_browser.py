"""The served ComfyUI frontend (comfyui-frontend-package 1.32.9) in headless Debian Chromium, via CDP.

Checks that the pack's nodes are in the node library under steering/act, that its workflows are
offered in the template browser, and that an example workflow loads without errors and
converts (frontend graphToPrompt) to the same API prompt as tests/comfy/ui2api.py.
A screenshot is kept in tests/_artifacts/.
"""

import json
import time
from pathlib import Path

import pytest

import cdp
import comfy_harness as srv
import ui2api

from conftest import VERSION, comfyui_setup  # noqa: E402

pytestmark = [pytest.mark.comfy, pytest.mark.slow,
              pytest.mark.skipif(VERSION != comfyui_setup.COMFYUI_VERSION,
                                 reason="drives the DOM of ComfyUI 0.3.75's frontend (1.32.9); ACT_COMFYUI_VERSION picks another")]


ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "_artifacts"
DISPLAY_NAMES = ["Prompt pairs (AcT)", "Fit transport map (AcT)", "Apply transport map to model (AcT)",
                 "Apply transport map to CLIP (AcT)", "Save transport map (AcT)", "Load transport map (AcT)",
                 "Combine transport maps (AcT)", "Transport map info (AcT)", "Strength sweep (AcT)"]

CLICK_TEXT = """(() => {{ const el = Array.from(document.querySelectorAll('span,div,button'))
  .find(e => e.childElementCount === 0 && e.innerText && e.innerText.trim() === {text!r});
  if (!el) return false; el.click(); return true; }})()"""


def _real_errors(errors):
    # the sandbox has no internet: the frontend's calls to api.comfy.org fail by design
    return [e for e in errors if "net::ERR_" not in e]


@pytest.fixture(scope="module")
def browser(comfy_server):
    if cdp.chromium_path() is None:
        pytest.fail("chromium is missing: tools/bootstrap.sh installs it (apt-get) when CI=true or ACT_INSTALL_BROWSER=1")
    b = cdp.Browser(srv.free_port()).start()
    yield b
    b.close()


def test_frontend_lists_nodes_and_loads_a_workflow(comfy_server, object_info, browser):
    b = browser
    b.call("Page.navigate", url=comfy_server.url)
    b.wait_for("!!(window.app && window.app.graph && window.LiteGraph && document.querySelector('canvas'))", 120)
    version = b.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || ''")
    assert version == "1.32.9"
    registered = b.evaluate("Object.keys(LiteGraph.registered_node_types).filter(k => k.startsWith('Act'))")
    assert sorted(registered) == sorted(k for k in object_info if k.startswith("Act"))

    # first start opens the template browser: our workflows are offered under the pack's name
    b.wait_for("!!document.querySelector('.p-dialog') && document.querySelector('.p-dialog').innerText.includes('act-steering')", 60)
    assert b.evaluate(CLICK_TEXT.format(text="act-steering"))
    b.wait_for("document.querySelector('.p-dialog').innerText.toLowerCase().includes('act style control')"
               " || document.querySelector('.p-dialog').innerText.includes('act_style_control')", 30)
    b.evaluate("document.querySelector('.p-dialog button i.pi-times').closest('button').click()")
    b.wait_for("!document.querySelector('.p-dialog')", 30)

    # node library: steering -> act holds every node
    b.evaluate("document.querySelector('button[aria-label^=\"Node Library\"]').click()")
    b.wait_for(CLICK_TEXT.format(text="steering"), 30)
    b.wait_for(CLICK_TEXT.format(text="act"), 30)
    text = b.wait_for(f"(() => {{ const t = document.body.innerText; return {json.dumps(DISPLAY_NAMES)}.every(n => t.includes(n)) ? t : ''; }})()", 30)
    assert all(n in text for n in DISPLAY_NAMES)
    b.screenshot(ARTIFACTS / "comfyui_node_library.png")

    # load an example workflow: every node known, no new page errors, same API prompt as ui2api
    before = len(b.errors())
    wf = json.loads((ROOT / "workflows" / "act_style_control.json").read_text())
    b.evaluate(f"app.loadGraphData({json.dumps(wf)})")
    time.sleep(1.0)
    types = b.evaluate("app.graph._nodes.map(n => n.type)")
    assert sorted(types) == sorted(n["type"] for n in wf["nodes"])
    assert b.evaluate("app.graph._nodes.every(n => !!LiteGraph.registered_node_types[n.type] && !n.has_errors)")
    assert not b.evaluate("!!document.querySelector('.p-dialog') && document.querySelector('.p-dialog').innerText.toLowerCase().includes('missing')")
    prompt = b.evaluate("app.graphToPrompt().then(r => r.output)")
    for v in prompt.values():
        v.pop("_meta", None)
    assert prompt == ui2api.convert(wf, object_info)
    b.evaluate("document.querySelector('button[aria-label^=\"Node Library\"]').click()")  # close the library
    b.evaluate("app.canvas.ds.scale = 0.62, app.canvas.ds.offset = [10, 60], app.canvas.setDirty(true, true)")
    time.sleep(0.5)
    shot = b.screenshot(ARTIFACTS / "comfyui_act_style_control.png")
    assert shot.stat().st_size > 10_000
    new = _real_errors(b.errors()[before:])
    assert not new, new


LAYOUT = """(() => {
  const nodes = app.graph._nodes.map(n => ({id: n.id, type: n.type, b: Array.from(n.getBounding()),
      size: Array.from(n.size), min: Array.from(n.computeSize())}));
  const groups = (app.graph._groups || app.graph.groups || []).map(g => ({title: g.title, b: Array.from(g._bounding || g.bounding)}));
  return {nodes, groups};
})()"""


def test_every_template_is_drawn_without_overlaps(comfy_server, browser):
    """As the frontend draws them: each node is at least its computed minimum size (so the saved size
    is what is drawn), no two node rectangles overlap, and groups hold their nodes."""
    from test_workflows import rects_overlapping

    b = browser
    b.call("Page.navigate", url=comfy_server.url)
    b.wait_for("!!(window.app && window.app.graph && window.LiteGraph && document.querySelector('canvas'))", 120)
    for path in sorted((ROOT / "workflows").glob("*.json")):
        b.evaluate(f"app.loadGraphData({path.read_text()})")
        time.sleep(0.5)
        drawn = b.evaluate(LAYOUT)
        small = [(n["type"], n["size"], n["min"]) for n in drawn["nodes"]
                 if n["size"][0] + 0.5 < n["min"][0] or n["size"][1] + 0.5 < n["min"][1]]
        assert not small, (path.name, small)
        rects = [(f"{n['id']}:{n['type']}", (n["b"][0], n["b"][1], n["b"][0] + n["b"][2], n["b"][1] + n["b"][3]))
                 for n in drawn["nodes"]]
        assert not rects_overlapping(rects), (path.name, rects_overlapping(rects))
        assert len(drawn["groups"]) == len(json.loads(path.read_text()).get("groups", [])), path.name
