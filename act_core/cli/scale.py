"""What every fitting subcommand shares for large fits: resumable caches, the chunked causal
procedure, and running under ``torchrun`` / ``accelerate launch``.

Under a launcher (``WORLD_SIZE > 1``) a fit command runs distributed
(:mod:`act_core.distributed`): each rank takes its share of the prompts on its own device
(``cuda:LOCAL_RANK`` when there is CUDA and no ``--device``), progress is printed by rank 0,
and only rank 0 writes the map, after every rank succeeded. A failure on one rank ends every
rank with a one-line error naming the failing rank.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Optional

from .common import CLIError, positive_int


def add_scale_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--cache", help="folder for a resumable activation cache: a killed fit started again with the same "
                                   "arguments reuses every finished shard (not with --procedure causal)")
    g.add_argument("--chunk-size", type=positive_int, default=None,
                   help="--procedure causal_chunked: inputs per chunk (default: --batch-size)")
    g.add_argument("--state-dir", help="--procedure causal_chunked: keep the chunks' intermediate states in this folder "
                                       "instead of CPU memory")


class FitLaunch:
    """One fit command's view of the launcher (create it before loading the model)."""

    def __init__(self, args: argparse.Namespace):
        from ..distributed import is_main, launched, local_device

        self.distributed = launched()
        self.main = is_main()
        if self.distributed and getattr(args, "device", None) is None:
            args.device = local_device()
        self.args = args

    def progress(self, fn: Optional[Callable]) -> Optional[Callable]:
        """``fn`` on rank 0, None elsewhere."""
        return fn if self.main else None

    def options(self) -> Dict[str, Any]:
        """Keyword arguments for ``fit_map`` (through the wings' fit functions)."""
        a = self.args
        if a.procedure != "causal_chunked" and (a.chunk_size is not None or a.state_dir is not None):
            raise CLIError("--chunk-size and --state-dir belong to --procedure causal_chunked")
        out: Dict[str, Any] = {}
        if self.distributed:
            out["distributed"] = True
        if a.cache:
            out["cache"] = a.cache
        if a.chunk_size is not None:
            out["chunk_size"] = a.chunk_size
        if a.state_dir is not None:
            out["state_dir"] = a.state_dir
        return out

    def fit(self, fn: Callable[[], Any]) -> Any:
        """Run the fit; another rank's failure becomes a one-line user error."""
        from ..distributed import RankFailed

        try:
            return fn()
        except RankFailed as e:
            raise CLIError(str(e)) from None
