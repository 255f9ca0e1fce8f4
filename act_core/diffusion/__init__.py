"""The diffusion wing: steer image diffusion models with transport maps.

- :mod:`.families`: one module per model family (SD1.5/SD2, SDXL, SD3.5, FLUX.1: canonical layer
  names, their diffusers and ComfyUI counterparts, layer presets, the collection pass) and the
  generic path for other models (ComfyUI's own names);
- :mod:`.pipeline`: diffusers pipelines of every family (load, fit style / negation maps,
  generate, sweep);
- :mod:`.prompts`: shipped prompt data (captions, styles, concepts) and prompt pairs;
- :mod:`.images`, :mod:`.evaluate`, :mod:`.single_file`: PNG grids, CLIP evaluation,
  single-file checkpoints;
- :mod:`.miniworld`: the miniature SDXL trained in this repository, and its judges.

Imports the core (``act_core``), never :mod:`act_core.llm` or :mod:`act_core.cli`. diffusers
and transformers are imported inside the functions that need them.
"""
