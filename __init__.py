"""ComfyUI entry point of the act-steering node pack (the repository root is the node folder).

ComfyUI imports this file as a package; nodes are defined in ./nodes and loaded through the
V3 ``comfy_entrypoint``. Imported any other way (pytest walking the repository, a plain
``import`` without a parent package) it does nothing.
"""

if __package__:
    try:
        from .nodes import comfy_entrypoint  # noqa: F401
    except ImportError as _e:  # outside ComfyUI there is no comfy_api to build nodes with
        if "comfy" not in str(_e):
            raise
