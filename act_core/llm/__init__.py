"""The LLM wing: steer Hugging Face transformers language models with transport maps.

- :mod:`.adapter`: load models, fit maps from texts, generate, score and measure perplexity;
- :mod:`.presets`: layer presets resolved from the model's structure;
- :mod:`.tasks`: shipped task data (toxicity, concepts, truthfulness);
- :mod:`.evaluate`: judges and sweeps;
- :mod:`.export`: llama.cpp control vectors and folded weights.

Imports the core (``act_core``), never :mod:`act_core.diffusion` or :mod:`act_core.cli`.
transformers is imported inside the functions that need it.
"""
