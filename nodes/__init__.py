"""ComfyUI nodes of act-steering (category "steering/act"); no math here: everything calls act_core.

Loaded by ComfyUI through :func:`comfy_entrypoint` (V3 schema, ``comfy_api.latest``).
"""

from __future__ import annotations

from .comfy_compat import ComfyExtension, register_maps_folder


def node_list():
    from . import apply, combine, files, fit, info, prompts, sweep

    return [*prompts.NODES, *fit.NODES, *apply.NODES, *files.NODES, *combine.NODES, *info.NODES, *sweep.NODES]


class ActSteeringExtension(ComfyExtension):
    async def get_node_list(self):
        return node_list()


async def comfy_entrypoint() -> ActSteeringExtension:
    register_maps_folder()
    return ActSteeringExtension()
