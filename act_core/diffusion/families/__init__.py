"""Diffusion model families, one module each (:mod:`.sdxl`)."""


def pipeline_tree(pipe):
    """The canonical-name module tree of a diffusers pipeline (SDXL family: :func:`.sdxl.sdxl_module_tree`)."""
    from .sdxl import sdxl_module_tree

    if not all(hasattr(pipe, c) for c in ("unet", "text_encoder_2")):
        raise TypeError(f"{type(pipe).__name__} is not an SDXL-family pipeline; steering it directly is not supported yet")
    return sdxl_module_tree(pipe)
