"""The shipped templates (workflows/*.json) are laid out for people: no two node rectangles overlap as
the frontend draws them (title bar above ``pos``), grouped nodes sit inside their group, groups do not
overlap, and every template carries a note that says which model it expects and what to change first.
The browser test (tests/comfy/test_browser.py) checks the same on the rectangles the real frontend
computes."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar is drawn above a node's pos
NOTES = ("Note", "MarkdownNote")


def node_rect(n):
    (x, y), (w, h) = n["pos"], n["size"]
    return (x, y - TITLE, x + w, y + h)


def overlap(a, b, margin=0):
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def rects_overlapping(named):
    """Pairs of names whose rectangles overlap (``named``: ``[(name, (x0, y0, x1, y1))]``)."""
    return [(a, b) for i, (a, ra) in enumerate(named) for b, rb in named[i + 1:] if overlap(ra, rb)]


def test_there_are_templates():
    assert len(WORKFLOWS) >= 6


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_do_not_overlap_and_sit_in_their_groups(path):
    wf = json.loads(path.read_text())
    nodes = [(f"{n['id']}:{n['type']}", node_rect(n)) for n in wf["nodes"]]
    assert not rects_overlapping(nodes), rects_overlapping(nodes)
    groups = [(g["title"], (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                             g["bounding"][1] + g["bounding"][3])) for g in wf.get("groups", [])]
    assert not rects_overlapping(groups)
    for name, r in nodes:  # a node is either wholly inside one group or outside every group
        inside = [g for g, b in groups if b[0] <= r[0] and b[1] <= r[1] and r[2] <= b[2] and r[3] <= b[3]]
        touching = [g for g, b in groups if overlap(r, b)]
        assert len(inside) == len(touching) <= 1, (name, inside, touching)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_template_has_groups_and_a_note_for_people(path):
    wf = json.loads(path.read_text())
    notes = [n for n in wf["nodes"] if n["type"] in NOTES]
    assert len(notes) == 1, "one note per template"
    text = notes[0]["widgets_values"][0]
    assert "Expects" in text and "Change first" in text, text
    assert any(f in text for f in ("SDXL", "SD1.5", "SD 1.5", "SD3", "FLUX", "Flux", "miniature")), text
    groups = [g["bounding"] for g in wf.get("groups", [])]
    assert groups, "a template groups its steps (fit / apply / sample)"
    for n in wf["nodes"]:  # every step is in a group; only the note and model loaders stand alone
        if n["type"] in NOTES or n["type"].endswith(("Loader", "LoaderSimple")):
            continue
        r = node_rect(n)
        assert any(b[0] <= r[0] and b[1] <= r[1] and r[2] <= b[0] + b[2] and r[3] <= b[1] + b[3] for b in groups), n["type"]
