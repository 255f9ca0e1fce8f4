"""ComfyUI entry point of the act-steering node pack (the repository root is the node folder).

ComfyUI imports this file as a package; nodes are defined in ./nodes and loaded through the
V3 ``comfy_entrypoint``. Outside ComfyUI (e.g. when pytest imports the repository root)
nothing here runs.
"""

try:
    from .nodes import comfy_entrypoint  # noqa: F401
except ImportError as _e:  # pragma: no cover - only outside ComfyUI
    # No parent package: pytest imported this file as a plain module because the checkout's
    # folder name is not a Python identifier (e.g. "act-steering"); nothing to load then.
    if "comfy" not in str(_e) and __package__:
        raise
