"""Folding a fixed-strength map into a module's own parameters: the one implementation.

At a fixed strength λ and the unbounded support, a map on a module's output is, per unit,
the affine change ``y -> a ⊙ y + c`` with ``a = 1 + λ(ω − 1)`` and ``c = λβ``
(:meth:`UnitTransport.coefficients`). When the module's output is itself affine per unit in
its parameters, ``y = g ⊙ core + b`` (the rows of a Linear's weight, a conv's output
channels, a norm's elementwise gain), the change folds into them exactly::

    a ⊙ (g ⊙ core + b) + c  =  (a ⊙ g) ⊙ core + (a ⊙ b + c)
    weight' = a ⊙ weight  (along the output-unit axis),     bias' = a ⊙ bias + c

A norm whose gain is stored as an offset, ``y = x̂ ⊙ (k + w)`` (Gemma's RMSNorm: ``k = 1``),
folds as ``w' = a ⊙ w + (a − 1)·k``. A missing gain counts as 1 and a missing bias as 0, so
an affine-free LayerNorm folds to ``w' = a``, ``b' = c``. Every folded parameter is
``p' = scale ⊙ p + shift`` with ``(scale, shift)`` from :func:`fold_factors`.

Exact only when (otherwise :class:`FoldError` says why, and the caller keeps a hook):

- the support is ``all`` (a quantile band makes the map depend on each value);
- a 4-D map in the reference's ``spatial_mean`` layout has ``a = 1`` (Mean-AcT): the shift
  ``(a − 1)·m + c`` depends on each input's spatial mean ``m`` otherwise;
- the module's output-unit count equals the map's;
- the module has a bias, or ``c = 0``, or the caller can add one (``missing_bias="add"``).

Used by :mod:`act_core.bake` (parameters rewritten in place), :mod:`act_core.fused_norms`
(norms called with folded parameters at run time), the LLM wing's exports and the ComfyUI
pack's weight patches. The support rule, :func:`effective_support`, is the one
:mod:`act_core.hooks` uses, so a fold always equals what steering does.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .transport import UNBOUNDED, UnitTransport, normalize_support

Factors = Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]
_PER_PIXEL_MODULES = (torch.nn.Conv2d, torch.nn.GroupNorm)


class FoldError(ValueError):
    """A map cannot be folded exactly into a module's parameters (the message says why)."""


def effective_support(t: UnitTransport, support: Optional[str] = None) -> str:
    """The support a map acts with: ``support`` when given, else the map's own default (the
    rule of :class:`act_core.hooks.SteerHandle`, bake, fused norms and every export)."""
    return normalize_support(t.default_support if support is None else support)


def output_axis(module: torch.nn.Module) -> int:
    """Axis of ``module.weight`` that indexes output units: 0, except Hugging Face's ``Conv1D``
    (GPT-2), whose weight is stored transposed as ``(in, out)``."""
    return -1 if type(module).__name__ == "Conv1D" else 0


def fold_factors(
    module: torch.nn.Module,
    t: UnitTransport,
    strength: float,
    support: Optional[str] = None,
    layout: str = "auto",
    gain_offset: float = 0.0,
    missing_bias: str = "refuse",
) -> Factors:
    """How ``T_λ`` on ``module``'s output folds into its parameters, or :class:`FoldError`.

    Returns ``{"weight": (scale, shift), "bias": (scale, shift)}`` (float64, CPU) so that each
    folded parameter is ``p' = scale ⊙ p + shift`` (see :func:`folded`). ``weight``'s scale is
    ``a`` viewed along the output-unit axis of the module's weight; ``bias`` is ``(a, c)``,
    ``(D,)``. A module without a weight tensor (an affine-free norm) gets ``(a, None)`` for
    its implicit gain 1. ``bias`` is present when the module has one; when it has none and
    ``c ≠ 0`` it is present only with ``missing_bias="add"`` (the caller creates it: ``p = 0``),
    else FoldError. ``gain_offset``: ``k`` of a gain stored as ``k + w``.
    """
    if missing_bias not in ("refuse", "add"):
        raise ValueError(f"missing_bias must be 'refuse' or 'add', got {missing_bias!r}")
    sup = effective_support(t, support)
    if sup != UNBOUNDED:
        raise FoldError(f"support {sup!r} is a band (only 'all' folds exactly)")
    a, c = t.coefficients(float(strength), torch.float64, torch.device("cpu"))
    spatial = isinstance(module, _PER_PIXEL_MODULES) or layout in ("spatial_mean", "per_pixel")
    if spatial and layout in ("spatial_mean", "auto") and not bool(torch.all(a == 1)):
        raise FoldError("the spatial-mean shift depends on the input unless ω = 1 (use Mean-AcT or layout 'per_pixel')")
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    has_w, has_b = isinstance(w, torch.Tensor), isinstance(b, torch.Tensor)
    out: Factors = {}
    if has_w:
        axis = output_axis(module)
        if w.ndim == 0 or w.shape[axis] != t.units:
            raise FoldError(f"weight has {w.shape[axis] if w.ndim else 0} output units but the map has {t.units}")
        view = [1] * w.ndim
        view[axis] = -1
        out["weight"] = (a.view(view), None if gain_offset == 0 else (a - 1).view(view) * gain_offset)
    elif _is_affine_free_norm(module):
        out["weight"] = (a, None)
    else:
        raise FoldError(f"{type(module).__name__} has no weight to fold into")
    if has_b:
        if b.shape != (t.units,):
            raise FoldError(f"bias has shape {tuple(b.shape)} but the map has {t.units} units")
        out["bias"] = (a, c)
    elif bool(torch.any(c != 0)):
        if missing_bias == "refuse":
            raise FoldError(f"{type(module).__name__} has no bias, so the offset λβ cannot be folded")
        out["bias"] = (a, c)
    return out


def _is_affine_free_norm(module: torch.nn.Module) -> bool:
    return (isinstance(module, torch.nn.LayerNorm) and not module.elementwise_affine) or (
        isinstance(module, torch.nn.GroupNorm) and not module.affine)


def folded(p: Optional[torch.Tensor], scale: torch.Tensor, shift: Optional[torch.Tensor], identity: float = 0.0,
           device=None) -> torch.Tensor:
    """``p' = scale ⊙ p + shift`` in float64 (on ``p``'s device, or ``device``); a missing ``p``
    (no gain, no bias) counts as ``identity`` (1 for a gain, 0 for a bias)."""
    dev = p.device if p is not None else (device or scale.device)
    base = torch.full(scale.shape, identity, dtype=torch.float64, device=dev) if p is None else p.detach().double()
    v = base * scale.to(dev)
    return v if shift is None else v + shift.to(dev)


def fold_delta(p: torch.Tensor, scale: torch.Tensor, shift: Optional[torch.Tensor]) -> torch.Tensor:
    """``p' − p = (scale − 1) ⊙ p + shift`` in float64 on ``p``'s device (an additive weight patch)."""
    d = p.detach().double() * (scale.to(p.device) - 1)
    return d if shift is None else d + shift.to(p.device)


__all__ = ["FoldError", "Factors", "effective_support", "output_axis", "fold_factors", "folded", "fold_delta"]
