"""Diffusion model families, one module each (:mod:`.sdxl`)."""
