"""act_core: Activation Transport (AcT, Linear-AcT) for any torch model.

Fit per-unit transport maps between two sets of activations, store them as one portable
safetensors file, and apply them with a strength λ through forward hooks::

    from act_core import fit_transport
    t = fit_transport(source, target, method="linear")   # (N, D), (M, D)
    y = t.apply(x, strength=1.0, support="q_0_100")

Importing act_core needs only torch, numpy and safetensors; the diffusers and transformers
adapters are imported lazily from their own modules.
"""

__version__ = "0.1.0"

from .estimators import ESTIMATORS, auroc, fit_aura, fit_gaussian, fit_linear, fit_mean, fit_transport
from .fitting import PROCEDURES, collect, fit_map
from .hooks import ActivationCollector, SteerHandle, StopForward, attach, count_hooks, run_until_stop, steer
from .mapfile import MapFileError, TransportMap
from .pooling import POOLINGS, pool
from .selection import select_modules
from .transport import BAND_NAMES, SUPPORT_CHOICES, UnitTransport

__all__ = [
    "__version__",
    "fit_transport", "fit_linear", "fit_mean", "fit_gaussian", "fit_aura", "auroc", "ESTIMATORS",
    "fit_map", "collect", "PROCEDURES",
    "ActivationCollector", "SteerHandle", "StopForward", "attach", "steer", "count_hooks", "run_until_stop",
    "TransportMap", "MapFileError", "pool", "POOLINGS", "select_modules",
    "UnitTransport", "BAND_NAMES", "SUPPORT_CHOICES",
]
