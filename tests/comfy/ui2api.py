"""Convert a UI-format workflow (what the frontend saves) to the API format POST /prompt takes.

Covers the simple graphs the pack ships: links, widget values in the order of the node's
inputs (``/object_info`` ``input_order``: required, then optional), the UI-only
"control after generate" value after seed-like inputs, notes and muted/bypassed nodes
skipped. Not covered: subgraphs, reroutes, primitive nodes, groups of nodes.
"""

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIP_TYPES = {"Note", "MarkdownNote"}


def _is_widget(spec) -> bool:
    t = spec[0]
    return isinstance(t, list) or t in WIDGET_TYPES


def _has_control(name, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(opts.get("control_after_generate")) or (name in ("seed", "noise_seed") and spec[0] == "INT")


def convert(ui: dict, object_info: dict, overrides: dict = None) -> dict:
    """API prompt for ``ui``; ``overrides`` maps an input name to a value set on every node that has it."""
    links = {l[0]: (l[1], l[2]) for l in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in SKIP_TYPES or node.get("mode", 0) in (2, 4):
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not registered on the server")
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {}).get("required", []) + info.get("input_order", {}).get("optional", [])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in order:
            spec = specs[name]
            if _is_widget(spec):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value left for {name!r}")
                v = values.pop(0)
                if _has_control(name, spec) and values and values[0] in ("fixed", "increment", "decrement", "randomize"):
                    values.pop(0)
                if name not in linked:
                    inputs[name] = v
            if name in linked:
                src, slot = linked[name]
                inputs[name] = [str(src), slot]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over: {values}")
        for k, v in (overrides or {}).items():
            if k in inputs and not isinstance(inputs[k], list):
                inputs[k] = v
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
