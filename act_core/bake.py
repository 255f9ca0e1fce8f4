"""Baking: fold a fixed-λ map into the steered modules' own parameters, in place and reversibly.

The fold itself (which modules fold exactly, and how) is :mod:`act_core.fold`: with the
unbounded support, per unit ``y -> a ⊙ y + c`` (``a = 1 + λ(ω − 1)``, ``c = λβ``) becomes
``weight' = a ⊙ weight``, ``bias' = a ⊙ bias + c`` for Linear and conv layers (output-unit
axis) and for norms with an elementwise gain. The support of every module is chosen by
:func:`act_core.fold.effective_support`, the rule steering uses, so a baked model computes
what the steered one does (up to float rounding), or :func:`plan_bake` refuses and names
every module that would differ (a band support, a spatial-mean map with ω ≠ 1, no bias for a
non-zero offset).

:func:`bake` rewrites the parameters in place (all or nothing; the returned handle restores
the originals bit for bit). :func:`plan_bake` returns the new tensors without touching the
model. A diffusers pipeline is accepted wherever a model is (see :mod:`act_core.trees`).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from .fold import FoldError, fold_factors, folded
from .mapfile import TransportMap, find_module
from .transport import check_strength
from .trees import module_tree


#: The error of a fold that would not be exact (kept under its old name).
BakeError = FoldError


def plan_bake(
    model: torch.nn.Module,
    tmap: TransportMap,
    strength: Optional[float] = None,
    support: Optional[str] = None,
    name_map: Optional[Callable[[str], str]] = None,
) -> Dict[str, torch.Tensor]:
    """New values for every parameter that the fold changes: ``{"<module>.weight": tensor, …}``.

    ``support`` overrides every module's own default support, as in :func:`act_core.hooks.steer`.
    Raises BakeError listing every module that cannot be folded exactly, and why; the map is
    checked against the model first (``TransportMap.check_model``).
    """
    lam = check_strength(tmap.default_strength if strength is None else strength)  # finite, |λ| ≤ 1000
    model = module_tree(model)
    tmap.check_model(model, name_map=name_map)
    out: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    for name, t in tmap.maps.items():
        local = name_map(name) if name_map else name
        module = find_module(model, local)
        try:
            if tmap.output_index.get(name) is not None:
                raise FoldError("the steered output is an element of a tuple, not the layer's affine output")
            factors = fold_factors(module, t, lam, support, tmap.layouts.get(name, "auto"))
        except FoldError as e:
            problems.append(f"{local}: {e}")
            continue
        for attr, (scale, shift) in factors.items():
            p = getattr(module, attr, None)
            if not isinstance(p, torch.Tensor):  # an affine-free norm: nothing to rewrite in place
                problems.append(f"{local}: {type(module).__name__} has no {attr} parameter to fold into")
                break
            out[f"{local}.{attr}"] = folded(p, scale, shift).to(p.dtype)
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
    model = module_tree(model)
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
