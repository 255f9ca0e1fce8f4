"""Fused ("baked") steering: fold a fixed-λ map into the steered module's own weights.

For a fixed strength λ and the unbounded support, a map on a module's output is the affine
change ``y -> a ⊙ y + c`` with ``a = 1 + λ(ω − 1)``, ``c = λβ`` (per unit). When the module's
output is itself affine in its parameters per unit, the change folds into them exactly:

=========================================  ==============================================
module (output unit axis)                  folded parameters
=========================================  ==============================================
Linear ``y = W x + b`` (last axis)         ``W' = a[:, None] ⊙ W``, ``b' = a ⊙ b + c``
Conv ``y = W * x + b`` (channel axis)      ``W' = a ⊙ W`` (per output channel), ``b' = a ⊙ b + c``
LayerNorm / GroupNorm / any norm with      ``w' = a ⊙ w``, ``b' = a ⊙ b + c``
elementwise ``w ⊙ x̂ + b``
norm without bias (RMSNorm)                exact only when ``c = 0``
=========================================  ==============================================

It is *not* exact, and :func:`plan_bake` refuses (keep hooks instead), when

- the support is a band (values outside it must pass through unchanged),
- a 4-D map uses the reference's ``spatial_mean`` layout and ``a ≠ 1`` (the shift
  ``(a − 1)·m + c`` depends on the input's spatial mean ``m``); with ``a = 1`` (Mean-AcT) it
  is the constant shift ``c`` and folds into the bias,
- the module has no bias but ``c ≠ 0``, or no per-unit parameters at all.

:func:`bake` rewrites the parameters in place (use it on a copy, or restore with the
returned handle: the original tensors are kept and copied back bit for bit).
:func:`plan_bake` returns the new tensors without touching the model;
:func:`fold_factors` decides one module (``p' = scale ⊙ p + shift`` or BakeError) and
:func:`fold_delta` gives ``p' − p`` (what an additive ComfyUI weight patch needs).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

from .mapfile import TransportMap
from .transport import UNBOUNDED, normalize_support


class BakeError(ValueError):
    """A map cannot be folded exactly into the model's weights."""


def _unit_axis_params(module: torch.nn.Module) -> Tuple[str, Optional[str]]:
    """(weight attr, bias attr or None) whose first axis is the output unit."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise BakeError(f"{type(module).__name__} has no weight to fold into")
    b = getattr(module, "bias", None)
    return "weight", ("bias" if isinstance(b, torch.Tensor) else None)


def _output_axis(module: torch.nn.Module) -> int:
    """Axis of ``weight`` that indexes output units: 0, except Hugging Face's ``Conv1D`` (GPT-2),
    whose weight is stored transposed as ``(in, out)``."""
    return -1 if type(module).__name__ == "Conv1D" else 0


def fold_factors(
    module: torch.nn.Module, t, strength: float, support: Optional[str], layout: str = "auto"
) -> Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """How ``T_λ`` of one module folds into its parameters, or BakeError with the reason.

    Returns ``{attr: (scale, shift)}`` (float64, CPU) so that the folded parameter is
    ``p' = scale ⊙ p + shift``: ``weight -> (a viewed along the output-unit axis, None)`` and
    ``bias -> (a, c)`` with ``a = 1 + λ(ω − 1)``, ``c = λβ`` of shape ``(D,)``.
    ``support`` is the support the hooks would use (None means ``t.default_support``).
    """
    sup = normalize_support(t.default_support if support is None else support)
    if sup != UNBOUNDED:
        raise BakeError(f"support {sup!r} is a band (only 'all' folds exactly)")
    a, c = t.coefficients(float(strength), torch.float64, torch.device("cpu"))
    is_4d = isinstance(module, (torch.nn.Conv2d, torch.nn.GroupNorm)) or layout in ("spatial_mean", "per_pixel")
    if is_4d and layout in ("spatial_mean", "auto") and not torch.all(a == 1):
        raise BakeError("the spatial-mean shift depends on the input unless ω = 1 (use Mean-AcT or layout 'per_pixel')")
    wname, bname = _unit_axis_params(module)
    w = getattr(module, wname)
    axis = _output_axis(module)
    if w.shape[axis] != t.units:
        raise BakeError(f"weight has {w.shape[axis]} output units but the map has {t.units}")
    if bname is None and torch.any(c != 0):
        raise BakeError(f"{type(module).__name__} has no bias, so the offset λβ cannot be folded")
    view = [1] * w.ndim
    view[axis] = -1
    out = {wname: (a.view(view), None)}
    if bname is not None:
        out[bname] = (a, c)
    return out


def fold_delta(p: torch.Tensor, scale: torch.Tensor, shift: Optional[torch.Tensor]) -> torch.Tensor:
    """``p' − p = (scale − 1) ⊙ p + shift`` in float64 on ``p``'s device (an additive weight patch)."""
    d = p.detach().double() * (scale.to(p.device) - 1)
    return d if shift is None else d + shift.to(p.device)


def plan_bake(
    model: torch.nn.Module,
    tmap: TransportMap,
    strength: Optional[float] = None,
    support: Optional[str] = None,
    name_map: Optional[Callable[[str], str]] = None,
) -> Dict[str, torch.Tensor]:
    """New values for every parameter that the fold changes: ``{"<module>.weight": tensor, …}``.

    Raises BakeError listing every module that cannot be folded exactly, and why.
    """
    lam = tmap.default_strength if strength is None else float(strength)
    out: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    for name, t in tmap.maps.items():
        local = name_map(name) if name_map else name
        sup = support if support is not None else tmap.default_support or t.default_support
        module = model.get_submodule(local)
        try:
            factors = fold_factors(module, t, lam, sup, tmap.layouts.get(name, "auto"))
        except BakeError as e:
            problems.append(f"{local}: {e}")
            continue
        for attr, (scale, shift) in factors.items():
            p = getattr(module, attr).detach()
            v = p.double() * scale.to(p.device)
            out[f"{local}.{attr}"] = (v if shift is None else v + shift.to(p.device)).to(p.dtype)
    if problems:
        raise BakeError("cannot bake exactly, keep hooks for these modules: " + "; ".join(problems[:6])
                        + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))
    return out


class BakeHandle:
    """Restores the parameters a bake replaced (bit-exact copies of the originals)."""

    def __init__(self, model: torch.nn.Module, originals: Dict[str, torch.Tensor]):
        self.model, self.originals = model, originals

    def restore(self) -> None:
        with torch.no_grad():
            for key, value in self.originals.items():
                self.model.get_parameter(key).copy_(value)
        self.originals = {}

    def __enter__(self) -> "BakeHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def bake(model: torch.nn.Module, tmap: TransportMap, strength: Optional[float] = None, **kwargs) -> BakeHandle:
    """Fold ``tmap`` at ``strength`` into ``model``'s parameters in place; returns a restore handle.

    All-or-nothing: if any module cannot be folded exactly nothing is changed (BakeError).
    """
    plan = plan_bake(model, tmap, strength, **kwargs)
    originals = {k: model.get_parameter(k).detach().clone() for k in plan}
    try:
        with torch.no_grad():
            for key, value in plan.items():
                model.get_parameter(key).copy_(value)
    except BaseException:
        BakeHandle(model, originals).restore()
        raise
    return BakeHandle(model, originals)
