"""Runtime fusion: steer a norm layer by calling it with transported parameters.

A LayerNorm or GroupNorm computes ``y = x̂ ⊙ w + b`` per unit (the normalised last axis, or
the channel). With the unbounded support and a per-unit layout, a map at fixed strength λ
is ``y -> a ⊙ y + c`` (``a = 1 + λ(ω − 1)``, ``c = λβ``), so the steered output is::

    a ⊙ (x̂ ⊙ w + b) + c  =  x̂ ⊙ (a ⊙ w) + (a ⊙ b + c)

i.e. the same norm called with ``w' = a ⊙ w`` and ``b' = a ⊙ b + c`` (``w = 1``, ``b = 0``
for a layer without affine parameters): the fold of :mod:`act_core.fold`, which decides
whether a map folds at all. :class:`FusedNorm` builds a ``forward`` that calls
``F.layer_norm`` / ``F.group_norm`` with ``w', b'`` (computed in float64 once per λ, dtype,
device and parameter version, then cached): no extra pass over the activations and no hook
dispatch, and the layer's parameters are never written. :mod:`act_core.hooks` installs it as
an instance attribute and deletes it on removal, so the class's own forward runs again.

:func:`fusible` decides; a module is fused only when all of these hold:

- it is exactly a ``torch.nn.LayerNorm`` (1-D ``normalized_shape``) or ``torch.nn.GroupNorm``:
  its class does not override ``forward`` (ComfyUI's casting norms, RMSNorms and other custom
  norms keep hooks), and no other code has replaced its ``forward`` already;
- the support is ``all`` (a band makes the map depend on each value);
- the layout acts per unit with fixed coefficients: ``tokens`` for a LayerNorm; ``per_pixel``
  for a GroupNorm (never ``tokens``: its units are on axis 1, the hook path refuses that map), or the reference's ``spatial_mean`` when ``ω = 1`` for every unit
  (Mean-AcT: the shift is then the constant ``c``);
- the map's unit count equals the layer's.

Per call the fused path also steps aside (the caller runs the layer and its hook instead)
while autograd is on and the layer's parameters require gradients (the fused parameters are
detached copies), when a gate selects rows, and in float16 when the fused output could overflow: a standardised group of ``n`` values has
``|x̂| ≤ √(n − 1)``, so the output is finite when ``max|w'| · √(n − 1) + max|b'| < 65504``;
the hook path saturates instead. Results equal the hook path up to float rounding (one
multiply-add inside the norm instead of one after it).

The cached ``w', b'`` follow the layer's parameters through their identity, version counter,
dtype and device: in-place updates (``p.mul_()``, ``load_state_dict``), ``.to()`` and new
tensors are seen; a write through ``p.data`` bypasses the version counter and is not (remove
the handle and steer with a new one after such a write).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .fold import FoldError, fold_factors, folded
from .transport import UnitTransport, ordinary_tensors

_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm)


def fusible(module: torch.nn.Module, t: UnitTransport, support: Optional[str], layout: str) -> bool:
    """True when ``t`` on ``module``'s output can run inside the module's own norm call."""
    cls = type(module)
    if cls not in _NORMS and not any(
        isinstance(module, base) and cls.forward is base.forward for base in _NORMS
    ):
        return False
    if "forward" in module.__dict__:  # somebody else has already replaced this module's forward
        return False
    if isinstance(module, torch.nn.LayerNorm):
        if layout not in ("tokens", "auto") or tuple(module.normalized_shape) != (t.units,):
            return False
    elif module.num_channels != t.units or layout == "tokens":  # a GroupNorm's units are on axis 1
        return False
    try:  # the band and layout rules (at λ = 1: the fold is the same at every λ ≠ 0 for ω and the band)
        fold_factors(module, t, 1.0, support, layout, missing_bias="add")
    except FoldError:
        return False
    return True


class FusedNorm:
    """The steered call of one LayerNorm/GroupNorm: ``norm(x; a ⊙ w, a ⊙ b + c)``.

    ``params(λ, x)`` returns ``(w', b')`` in the layer's dtype and device, or None when the
    fused output could overflow float16 (the caller then uses the hook path).
    """

    def __init__(self, module: torch.nn.Module, t: UnitTransport, layout: str = "auto"):
        self.module, self.t = module, t
        self.is_layer_norm = isinstance(module, torch.nn.LayerNorm)
        self.layout = layout
        # the inputs the hook would transport the same way: GroupNorm maps act on (B, C, H, W);
        # a LayerNorm map in layout 'auto' reads a 4-D output as (B, C, H, W), not as tokens
        self.any_rank = self.is_layer_norm and layout == "tokens"
        self._cache: dict = {}

    def takes(self, x: torch.Tensor) -> bool:
        """True when the fused call transports ``x`` as the hook would (else use the hook)."""
        return self.any_rank or ((x.ndim != 4) if self.is_layer_norm else (x.ndim == 4))

    @property
    def trains(self) -> bool:
        """True when the layer's parameters want gradients (the fused call would cut them off,
        so the caller keeps the hook path while autograd is on)."""
        return any(p is not None and p.requires_grad for p in (self.module.weight, self.module.bias))

    def _key(self, lam: float, x: torch.Tensor) -> tuple:
        w, b = self.module.weight, self.module.bias
        return (lam, x.dtype, x.device,
                None if w is None else (w.data_ptr(), w._version, w.dtype),
                None if b is None else (b.data_ptr(), b._version, b.dtype))

    def prepare(self, lam: float) -> None:
        """Build the parameters for ``λ`` and the layer's own dtype and device ahead of the
        first call (so attaching, not the first forward, pays for it)."""
        w = self.module.weight
        if lam != 0 and w is not None:
            self.params(lam, torch.empty(0, dtype=w.dtype, device=w.device))

    def params(self, lam: float, x: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        key = self._key(lam, x)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 8:
                self._cache.clear()
            with ordinary_tensors():
                hit = self._cache[key] = self._build(lam, x)
        w, b, peak = hit
        if peak is not None and peak[0] * math.sqrt(max(self._group_size(x) - 1, 0)) + peak[1] >= torch.finfo(x.dtype).max:
            return None
        return w, b

    def _build(self, lam: float, x: torch.Tensor):
        factors = fold_factors(self.module, self.t, lam, "all", self.layout, missing_bias="add")
        w0, b0 = self.module.weight, self.module.bias
        cpu = torch.device("cpu")
        w = folded(None if w0 is None else w0.to(cpu), *factors["weight"], identity=1.0, device=cpu)
        bias = factors.get("bias")  # absent when the layer has no bias and c = 0
        b = folded(None if b0 is None else b0.to(cpu), *bias, device=cpu) if bias else torch.zeros_like(w)
        dtype = x.dtype if w0 is None else w0.dtype
        device = x.device if w0 is None else w0.device
        wt, bt = w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)
        # float16: remember max|w'| and max|b'| for the per-call overflow test
        peak = (w.abs().max().item(), b.abs().max().item()) if torch.finfo(x.dtype).max < 1e10 else None
        return wt, bt, peak

    def _group_size(self, x: torch.Tensor) -> int:
        if self.is_layer_norm:
            return self.t.units
        return x.numel() // max(x.shape[0] * self.module.num_groups, 1)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.is_layer_norm:
            return F.layer_norm(x, m.normalized_shape, w, b, m.eps)
        return F.group_norm(x, m.num_groups, w, b, m.eps)
