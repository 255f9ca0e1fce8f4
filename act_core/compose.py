"""Combine several transport maps into one (e.g. a style plus a concept negation).

Semantics (what the ComfyUI "Combine maps" node and ``combine_maps`` promise):

Each input map ``i`` comes with a strength ``s_i``; its per-unit map at that strength is
``T_i(x) = a_i x + c_i`` with ``a_i = 1 + s_i (ω_i - 1)`` and ``c_i = s_i β_i``.

- **Shared modules** (present in several maps) are composed *sequentially in map order*:
  ``C = T_n ∘ … ∘ T_2 ∘ T_1``, i.e. ``ω = a_n ⋯ a_1`` and
  ``β = a_n(⋯(a_2 c_1 + c_2)⋯) + c_n``. The composed unit keeps the *first* map's support bands
  (they describe the module's unsteered input, which is where the band test is evaluated);
  the later maps' bands are not used.
- **Other modules** (in one map only) are taken over with their strength folded in:
  ``ω = a_i``, ``β = c_i``, bands unchanged.

The result stores the folded maps with ``default_strength = 1``. Applying it at strength
``λ`` gives ``(1 - λ) x + λ C(x)``: ``λ = 1`` is exactly the composition above, ``λ = 0`` the
identity. Module order is the first map's order, then new modules of later maps in their order.
All maps must share architecture (when recorded), and on shared modules units, layout and
output index. Composition is exact for support ``"all"``; with a band, the values inside the
first map's band (tested per element, or on each channel's spatial mean for 4-D maps) get the
composed map, the others pass through. A composed unit keeps the first map's ``method`` label
and default support; the map's metadata lists every part's method.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .mapfile import MapFileError, TransportMap
from .transport import UnitTransport


def _folded(t: UnitTransport, strength: float) -> Tuple[torch.Tensor, torch.Tensor]:
    lam = float(strength)
    return 1.0 + lam * (t.omega.double() - 1.0), lam * t.beta.double()


def combine_maps(maps: Sequence[TransportMap], strengths: Sequence[float]) -> TransportMap:
    """Compose ``maps`` (in order) at ``strengths`` into one map; see the module docstring."""
    maps, strengths = list(maps), [float(s) for s in strengths]
    if not maps:
        raise ValueError("combine_maps needs at least one map")
    if len(strengths) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(strengths)} strengths; give one strength per map")
    archs = {m.architecture for m in maps if m.architecture}
    if len(archs) > 1:
        raise MapFileError(
            f"cannot combine maps fitted on different architectures ({', '.join(sorted(archs))}); "
            "combine maps fitted on the same model type"
        )
    order: List[str] = []
    for m in maps:
        order.extend(n for n in m.maps if n not in order)
    out = TransportMap()
    for name in order:
        first = None
        omega = beta = None
        for i, (m, s) in enumerate(zip(maps, strengths)):
            if name not in m.maps:
                continue
            t = m.maps[name]
            if first is None:
                first = (i, t, m.layouts[name], m.output_index[name])
                omega, beta = _folded(t, s)
                continue
            _, t0, layout0, index0 = first
            if t.units != t0.units:
                raise MapFileError(f"module {name!r}: map {i + 1} has {t.units} units, map {first[0] + 1} has {t0.units}")
            if m.layouts[name] != layout0 or m.output_index[name] != index0:
                raise MapFileError(
                    f"module {name!r}: map {i + 1} uses layout {m.layouts[name]!r}/output {m.output_index[name]} "
                    f"but map {first[0] + 1} uses {layout0!r}/output {index0}; such maps cannot be composed"
                )
            a, c = _folded(t, s)
            omega, beta = a * omega, a * beta + c
        _, t0, layout0, index0 = first
        unit = UnitTransport(
            omega.float(), beta.float(), t0.bands.clone(), t0.flags.clone(),
            method=t0.method, default_support=t0.default_support,
        )
        out.add(name, unit, layout0, index0)
    methods = {m.meta.get("method") for m in maps}
    out.meta = {
        "method": methods.pop() if len(methods) == 1 else "mixed",
        "pooling": maps[0].meta.get("pooling", "mean"),
        "procedure": "combined",
        "architecture": archs.pop() if archs else None,
        "default_support": maps[0].meta.get("default_support") or next(iter(out.maps.values())).default_support,
        "default_strength": 1.0,
        "composition": {
            "rule": "sequential in map order on shared modules, union elsewhere; strengths folded in",
            "parts": [
                {"strength": s, "modules": len(m), "method": m.meta.get("method"),
                 **{k: m.meta[k] for k in ("style", "concept", "tags", "name") if k in m.meta}}
                for m, s in zip(maps, strengths)
            ],
        },
    }
    return out


__all__ = ["combine_maps"]
