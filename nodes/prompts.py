"""Prompt pairs node: source/target prompt lists for a style or a concept to negate."""

from __future__ import annotations

from act_core.diffusion import prompts as act_prompts

from . import comfy_compat as cc
from .comfy_compat import PromptPairsType, io, ui

CATEGORY = "steering/act"
CUSTOM_STYLE = "style: (my own tags)"
OWN_LISTS = "(my own source/target lists)"


def choices():
    return ([f"style: {s}" for s in act_prompts.list_styles()] + [CUSTOM_STYLE]
            + [f"negate: {c}" for c in act_prompts.list_concepts()] + [OWN_LISTS])


def _lines(text: str):
    return [s.strip() for s in (text or "").splitlines() if s.strip()]


def build_pairs(goal: str, count: int, seed: int, tags: str = "", captions: str = "",
                source_prompts: str = "", target_prompts: str = "") -> dict:
    """``{"source": [...], "target": [...], "meta": {...}}`` for the chosen goal (see the node description)."""
    caps = _lines(captions) or None
    if goal == OWN_LISTS:
        src, tgt = _lines(source_prompts), _lines(target_prompts)
        if len(src) < 2 or len(tgt) < 2:
            raise ValueError("with '(my own source/target lists)' give at least 2 source and 2 target prompts, one per line")
        return {"source": src, "target": tgt, "meta": {"goal": "custom"}}
    kind, _, name = goal.partition(": ")
    if kind == "style":
        if goal == CUSTOM_STYLE:
            if not tags.strip():
                raise ValueError("'style: (my own tags)' needs tags, e.g. 'watercolor, soft washes, paper texture'")
            src, tgt = act_prompts.style_pairs("custom", n=count, seed=seed, captions=caps, tags=tags)
            return {"source": src, "target": tgt, "meta": {"goal": "style", "style": "custom", "tags": tags.strip()}}
        src, tgt = act_prompts.style_pairs(name, n=count, seed=seed, captions=caps, tags=tags.strip() or None)
        meta = {"goal": "style", "style": name}
        if tags.strip():
            meta["tags"] = tags.strip()
        return {"source": src, "target": tgt, "meta": meta}
    if kind == "negate":
        src, tgt = act_prompts.negation_pairs(name, n=count, seed=seed, captions=caps)
        return {"source": src, "target": tgt, "meta": {"goal": "negation", "concept": name}}
    raise ValueError(f"unknown goal {goal!r}; choose one of the listed styles, concepts or own lists")


class PromptPairs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ActPromptPairs",
            display_name="Prompt pairs (AcT)",
            category=CATEGORY,
            description=(
                "Builds the two prompt lists a transport map is fitted on. Style: plain captions (source) -> the same "
                "captions with the style's tags (target). Negate: captions with the concept (source) -> the plain "
                "captions (target). Uses the shipped captions unless you paste your own."
            ),
            inputs=[
                io.Combo.Input("goal", options=choices(), default="style: watercolor",
                               tooltip="A shipped style, your own style tags, a shipped concept to remove, or your own two prompt lists."),
                io.Int.Input("count", default=32, min=2, max=1024,
                             tooltip="Number of prompt pairs (the paper uses 64-512; more is slower to fit but steadier)."),
                io.Int.Input("seed", default=0, min=0, max=cc.MAX_SEED, tooltip="Seed for drawing captions and style tags."),
                io.String.Input("tags", default="", multiline=False, optional=True,
                                tooltip="Comma-separated style tags; replaces the shipped tags of the chosen style."),
                io.String.Input("captions", default="", multiline=True, optional=True,
                                tooltip="Your own captions, one per line; empty uses the shipped captions."),
                io.String.Input("source_prompts", default="", multiline=True, optional=True,
                                tooltip="Only for '(my own source/target lists)': prompts to steer away from, one per line."),
                io.String.Input("target_prompts", default="", multiline=True, optional=True,
                                tooltip="Only for '(my own source/target lists)': prompts to steer toward, one per line."),
            ],
            outputs=[PromptPairsType.Output(display_name="prompt_pairs", tooltip="Source and target prompt lists."),
                     io.String.Output(display_name="preview", tooltip="The first pairs as text.")],
        )

    @classmethod
    def execute(cls, goal, count, seed, tags="", captions="", source_prompts="", target_prompts="") -> io.NodeOutput:
        pairs = build_pairs(goal, count, seed, tags or "", captions or "", source_prompts or "", target_prompts or "")
        lines = [f"{len(pairs['source'])} source / {len(pairs['target'])} target prompts"]
        for s, t in list(zip(pairs["source"], pairs["target"]))[:3]:
            lines += [f"- {s}", f"+ {t}"]
        text = "\n".join(lines)
        return io.NodeOutput(pairs, text, ui=ui.PreviewText(text))


NODES = [PromptPairs]
