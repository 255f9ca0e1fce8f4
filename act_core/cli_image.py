"""Image (SDXL / diffusers) subcommands of ``act-steer``."""


def register(sub) -> None:
    """Add the image subcommands (filled in by the diffusers adapter)."""
