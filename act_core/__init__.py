"""act_core: Activation Transport (AcT, Linear-AcT) for any torch model.

Fit per-unit transport maps between two sets of activations, store them as one portable
safetensors file, and apply them with a strength λ through forward hooks::

    from act_core import fit_transport
    t = fit_transport(source, target, method="linear")   # (N, D), (M, D)
    y = t.apply(x, strength=1.0, support="q_0_100")

The package is a house with a core and wings:

- the core (this folder's modules): estimators, transport maps and how they are applied,
  the map file, hooks, fitting procedures, folding into weights; torch, numpy and
  safetensors only, and it imports no wing;
- :mod:`act_core.diffusion`: diffusion models (families, diffusers pipelines, prompt data,
  evaluation, the miniature SDXL);
- :mod:`act_core.llm`: language models through transformers (presets, tasks, evaluation,
  exports);
- :mod:`act_core.cli`: the ``act-steer`` command line, thin over the wings.

Wings import the core and never each other. Importing act_core imports no wing.
"""

from ._version import __version__

from .estimators import ESTIMATORS, auroc, fit_aura, fit_gaussian, fit_linear, fit_mean, fit_transport
from .fitting import PROCEDURES, collect, fit_map
from .hooks import ActivationCollector, SteerHandle, StopForward, attach, count_hooks, run_until_stop, steer
from .mapfile import MapFileError, TransportMap
from .pooling import POOLINGS, pool
from .selection import select_modules
from .transport import BAND_NAMES, SUPPORT_CHOICES, UnitTransport
from .trees import module_tree, register_tree_adapter


def _diffusers_pipeline_tree(pipe):
    from .diffusion.families import pipeline_tree  # the diffusion wing, imported on first use

    return pipeline_tree(pipe)


# a diffusers pipeline can be passed wherever a model is (steer, attach, bake, check_model)
register_tree_adapter(lambda obj: type(obj).__module__.startswith("diffusers."), _diffusers_pipeline_tree)

__all__ = [
    "__version__",
    "fit_transport", "fit_linear", "fit_mean", "fit_gaussian", "fit_aura", "auroc", "ESTIMATORS",
    "fit_map", "collect", "PROCEDURES",
    "ActivationCollector", "SteerHandle", "StopForward", "attach", "steer", "count_hooks", "run_until_stop",
    "TransportMap", "MapFileError", "pool", "POOLINGS", "select_modules",
    "UnitTransport", "BAND_NAMES", "SUPPORT_CHOICES", "module_tree",
]
