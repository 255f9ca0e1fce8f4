"""The diffusion wing: steer image diffusion models with transport maps.

- :mod:`.families`: one module per model family (canonical layer names, their diffusers and
  ComfyUI counterparts, layer presets);
- :mod:`.pipeline`: diffusers pipelines (load, fit style / negation maps, generate, sweep);
- :mod:`.prompts`: shipped prompt data (captions, styles, concepts) and prompt pairs;
- :mod:`.images`, :mod:`.evaluate`, :mod:`.single_file`: PNG grids, CLIP evaluation,
  single-file checkpoints;
- :mod:`.miniworld`: the miniature SDXL trained in this repository, and its judges.

Imports the core (``act_core``), never :mod:`act_core.llm` or :mod:`act_core.cli`. diffusers
and transformers are imported inside the functions that need them.
"""
