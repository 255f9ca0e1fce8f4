"""LLM (transformers) subcommands of ``act-steer``."""


def register(sub) -> None:
    """Add the LLM subcommands (filled in by the transformers adapter)."""
