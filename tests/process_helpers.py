"""Helpers for tests that start child processes (torchrun, accelerate launch, python -c)."""

import os


def child_env(**extra):
    """os.environ for a child process without the variables torch.compile leaves in this process
    (``_TORCHINDUCTOR_*``: an address here; a torchrun child that inherits it aborts with "terminate
    called without an active exception"), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("_TORCHINDUCTOR")}
    env.update(extra)
    return env
