"""ComfyUI nodes of act-steering (no math here: everything calls act_core)."""
