"""ComfyUI entry point of the act-steering node pack (the repository root is the node folder).

ComfyUI imports this file as a package (``custom_nodes/<folder>/__init__.py``); the nodes live
in ./nodes and are loaded through the V3 ``comfy_entrypoint``. When the file is imported
outside a package (pytest collecting the repository root) nothing here runs.
"""

if __package__:
    from .nodes import comfy_entrypoint  # noqa: F401
