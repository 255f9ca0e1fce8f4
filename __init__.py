"""ComfyUI entry point of the act-steering node pack (the repository root is the node folder).

ComfyUI imports this file as a package; nodes are defined in ./nodes and loaded through the
V3 ``comfy_entrypoint``. Outside ComfyUI (e.g. when pytest imports the repository root)
nothing here runs.
"""

if __package__:  # pytest may import this file on its own (no parent package): then do nothing
    try:
        from .nodes import comfy_entrypoint  # noqa: F401
    except ImportError as _e:  # pragma: no cover - only outside ComfyUI
        if "comfy" not in str(_e):
            raise
