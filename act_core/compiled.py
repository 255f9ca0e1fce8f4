"""Opt-in compiled steering: norm + band test + affine map in one ``torch.compile`` region.

``steer(model, tmap, compile=True)`` (or ``compile="<backend>"``) steers every mapped module
by replacing its ``forward`` (an instance attribute, deleted on removal, like the run-time
fusion of :mod:`act_core.fused_norms`) with a function written only in plain tensor
operations, so that ``torch.compile`` can fuse it:

- a plain ``torch.nn.LayerNorm`` / ``GroupNorm`` is computed *inside* the compiled function
  together with the transport: one fused kernel normalises, tests the band and applies
  ``a x + c``, where the eager path runs the norm and then four elementwise passes (the banded
  kernel of :meth:`UnitTransport.kernel`);
- any other module (a Linear, a conv, a custom norm returning a tensor) runs as usual and only
  the transport is compiled (one fused elementwise kernel).

The math is the eager kernel's, operation for operation (:mod:`act_core.transport`): for the
per-token layout and a band, ``d = clamp(y, lo', hi')``, ``inside = (d == y)``,
``y + inside · ((a − 1) d + c)`` with ``lo'``, ``hi'`` the closest values of ``y``'s dtype
strictly inside the stored band (the strict test ``lo < y < hi``); the unbounded support is
``a y + c``; the spatial-mean and per-pixel layouts test the band on each channel's spatial
mean, in float32 or wider. Half-precision activations are transported in float32 and
saturated to the dtype's range (the eager path saturates too). Results equal the eager kernel
up to float rounding: the compiler may contract ``d (a − 1) + c`` into one fused multiply-add
and its normalisation kernels sum in another order.

When the whole model is compiled as well (``torch.compile(unet)``), the steered forwards are
traced into the model's graph (the inner compiled functions are inlined), so the band test
and the affine map fuse into the neighbouring kernels; attaching or removing steering changes
the modules the graph was traced with and causes one recompilation.

Not supported here (the eager path of :mod:`act_core.hooks` covers them): modules whose
output is a tuple (a map with an output index), and ``fuse`` / ``inplace`` (the compiled
region writes one fresh output). ``gate`` works: rows it does not select are left alone with
``torch.where``; so does ``mask`` (``lerp(x, T(x), w)``, outside the compiled region). The eager kernel stays the default: see bench/RESULTS.md for when compiling pays.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F

from .fold import effective_support
from .hookguard import ForwardOverride, GuardedHooks, GuardedOwner
from .mapfile import TransportMap, find_module
from .transport import _closed_band, _subnormal, _wide, normalize_support, ordinary_tensors
from .trees import module_tree

DEFAULT_BACKEND = "inductor"

# -- the transports, in plain tensor operations (compiled once per backend) -----------------------


def _tokens(y, lo, hi, am1, c):
    """Per-token band test and affine map: ``y + inside · ((a − 1) clamp(y) + c)``."""
    d = torch.clamp(y, lo, hi)
    return y + (d == y).to(y.dtype) * (d * am1 + c)


def _tokens_compared(y, lo, hi, am1, c):
    """The band test as two comparisons (a subnormal bound: see transport._subnormal)."""
    inside = ((y > lo) & (y < hi)).to(y.dtype)
    return y + inside * (torch.clamp(y, lo, hi) * am1 + c)


def _affine(y, lo, hi, a, c):
    """The unbounded support: ``a y + c`` (per unit along the last axis, or ``a``, ``c`` already
    shaped for the channel axis)."""
    return y * a + c


def _spatial_mean(y, lo, hi, am1, c):
    m = y.mean(dim=(2, 3), dtype=am1.dtype)
    shift = m * am1 + c
    if lo is not None:
        shift = torch.where((m <= lo) | (m >= hi), torch.zeros_like(shift), shift)
    return y + shift.to(y.dtype)[:, :, None, None]


def _per_pixel(y, lo, hi, am1, c):
    m = y.mean(dim=(2, 3), keepdim=True, dtype=lo.dtype)
    inside = ((lo < m) & (m < hi)).to(y.dtype)
    return y * (1 + inside * am1) + inside * c


_LAYOUTS = {"tokens": _tokens, "tokens_compared": _tokens_compared, "affine": _affine,
            "spatial_mean": _spatial_mean, "per_pixel": _per_pixel}


def _transport(y, kind, lo, hi, am1, c, limit):
    if limit is not None:  # half precision: transport in float32, saturate, cast back
        out = _LAYOUTS[kind](y.float(), lo, hi, am1, c)
        return out.clamp(-limit, limit).to(y.dtype)
    return _LAYOUTS[kind](y, lo, hi, am1, c)


def _layer_norm_transport(x, weight, bias, eps, kind, lo, hi, am1, c, limit):
    return _transport(F.layer_norm(x, x.shape[-1:], weight, bias, eps), kind, lo, hi, am1, c, limit)


def _group_norm_transport(x, groups, weight, bias, eps, kind, lo, hi, am1, c, limit):
    return _transport(F.group_norm(x, groups, weight, bias, eps), kind, lo, hi, am1, c, limit)


_COMPILED: Dict[tuple, Callable] = {}


def compiled(fn: Callable, backend: str, variant: Any = None) -> Callable:
    """``torch.compile(fn, backend=backend)``, one per function, backend and ``variant``.

    torch.compile keeps its compiled graphs per code object and recompiles a function at most
    8 times (``torch._dynamo.config.recompile_limit``) before running it eagerly; a model's norms
    come in many widths. Each ``variant`` (the steered module's unit count) therefore gets its own
    copy of ``fn``'s code, compiled for its shapes once."""
    key = (fn, backend, variant)
    if key not in _COMPILED:
        f = fn
        if variant is not None:
            code = fn.__code__.replace(co_name=f"{fn.__name__}_{variant}")
            f = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        _COMPILED[key] = torch.compile(f, backend=backend)
    return _COMPILED[key]


# -- per-module parameters ------------------------------------------------------------------------


class _Params:
    """The tensors one module's transport needs, per strength, dtype, device and layout (cached;
    built ahead of the first call by :meth:`prepare`, so a compiled model never traces the
    building, which tests values)."""

    def __init__(self, t, support: str, layout: str):
        self.t, self.support, self.layout = t, support, layout
        self._cache: Dict[tuple, tuple] = {}

    def _resolve(self, ndim: int) -> str:
        return self.layout if self.layout != "auto" else ("spatial_mean" if ndim == 4 else "tokens")

    def prepare(self, lam: float, dtype: torch.dtype, device: torch.device) -> None:
        for ndim in ((3, 4) if self.layout == "auto" else (4 if self.layout != "tokens" else 3,)):
            self.get(lam, dtype, device, ndim)

    def get(self, lam: float, y_dtype: torch.dtype, device: torch.device, ndim: int) -> tuple:
        layout = self._resolve(ndim)
        key = (lam, y_dtype, device, layout)
        hit = self._cache.get(key)
        if hit is None:
            if layout != "tokens" and ndim != 4:
                raise ValueError(f"layout {layout!r} needs a 4-D (B, C, H, W) output, got {ndim} dimensions")
            with ordinary_tensors():
                hit = self._cache[key] = self._build(lam, y_dtype, device, layout)
        return hit

    def _build(self, lam, y_dtype, device, layout):
        """``(kind, lo, hi, k, c, limit)``: the eager kernel's tensors (transport._build_kernel_native)."""
        t = self.t
        half = torch.finfo(y_dtype).max < 1e10
        dtype = torch.float32 if half else y_dtype  # the dtype the transport runs in
        limit = torch.finfo(y_dtype).max if half else None
        a, c = t.coefficients(lam, dtype, device)
        wide = _wide(dtype)
        exact = t.bounds(self.support, wide, device)  # the stored bounds
        if layout == "tokens":
            if exact is None:
                return "affine", None, None, a, c, limit
            lo, hi, am1, cc = _closed_band(*exact, dtype, a - 1, c)
            if _subnormal(*t.bounds(self.support, dtype, device), lo, hi):
                return "tokens_compared", exact[0], exact[1], a - 1, c, limit
            return "tokens", lo, hi, am1, cc, limit
        view = (1, -1, 1, 1)
        if layout == "spatial_mean":
            aw, cw = t.coefficients(lam, wide, device)
            return "spatial_mean", *(exact or (None, None)), aw - 1, cw, limit
        if exact is None:
            return "affine", None, None, a.view(view), c.view(view), limit
        return "per_pixel", exact[0].view(view), exact[1].view(view), (a - 1).view(view), c.view(view), limit


# -- the handle ---------------------------------------------------------------------------------


def _norm_kind(module: torch.nn.Module) -> Optional[str]:
    """'layer' / 'group' for a plain LayerNorm (1-D shape) / GroupNorm whose class keeps torch's forward."""
    for kind, base in (("layer", torch.nn.LayerNorm), ("group", torch.nn.GroupNorm)):
        if isinstance(module, base) and type(module).forward is base.forward:
            if kind == "layer" and len(module.normalized_shape) != 1:
                return None
            return kind
    return None


class CompiledSteerHandle(GuardedOwner):
    """Steering through compiled forwards (see the module docstring); the interface of
    :class:`act_core.hooks.SteerHandle`: ``attach()``, ``remove()``, ``set_strength()``,
    a context manager. Created by ``steer(..., compile=...)`` / ``attach(..., compile=...)``.

    Attaching and removing go through the same guarded path as the eager hooks
    (:mod:`act_core.hookguard`): all or nothing under any exception (a Ctrl-C included), one
    steering thread per model object, and copies or pickles of a steered model carry no
    replaced ``forward``."""

    def __init__(
        self,
        model: torch.nn.Module,
        tmap: TransportMap,
        strength: Union[float, Mapping[str, float], None] = None,
        support: Optional[str] = None,
        name_map: Optional[Callable[[str], str]] = None,
        gate: Optional[Callable[[str, torch.Tensor], Any]] = None,
        layout: Optional[str] = None,
        backend: Union[bool, str] = True,
        inplace: bool = True,
        fuse: bool = True,
        mask: Optional[Callable[[str, torch.Tensor], Any]] = None,
    ):
        if not isinstance(tmap, TransportMap):
            raise TypeError(f"expected a TransportMap, got {type(tmap).__name__} (load one with TransportMap.load(path))")
        self.backend = DEFAULT_BACKEND if backend is True else str(backend)
        self.model, self.tmap, self.gate, self.mask, self.name_map = module_tree(model), tmap, gate, mask, name_map
        if support is not None:
            normalize_support(support)
        indexed = [n for n in tmap.maps if tmap.output_index.get(n) is not None]
        if indexed:
            raise ValueError(f"compile=True steers modules that return a tensor; {indexed[0]!r} is element "
                             f"{tmap.output_index[indexed[0]]} of a tuple output: steer this map without compile")
        self.tmap.check_model(self.model, name_map=name_map)
        self.params = {n: _Params(t, effective_support(t, support), layout or tmap.layouts.get(n, "auto"))
                       for n, t in tmap.maps.items()}
        self.set_strength(strength)
        self._guard = GuardedHooks(self, "steered")

    def set_strength(self, strength: Union[float, Mapping[str, float], None]) -> None:
        self.strengths = self.tmap.module_strengths(strength)

    def _forward(self, name: str, module: torch.nn.Module):
        params, backend = self.params[name], self.backend
        width = params.t.units
        norm = _norm_kind(module)
        plain = type(module).forward
        on = [True]  # switched off by removal (act_core.hooks._ForwardOverride)

        def forward(layer, *args, **kwargs):
            lam = self.strengths[name]
            if layer is not module or lam == 0 or not on[0]:  # a deep copy, λ = 0, or removed
                return plain(layer, *args, **kwargs)
            x = args[0] if args else None
            if (norm is not None and self.gate is None and self.mask is None and isinstance(x, torch.Tensor)
                    and not kwargs and len(args) == 1):
                kind, lo, hi, am1, c, limit = params.get(lam, x.dtype, x.device, x.ndim)
                if norm == "layer":
                    return compiled(_layer_norm_transport, backend, width)(
                        x, module.weight, module.bias, module.eps, kind, lo, hi, am1, c, limit)
                return compiled(_group_norm_transport, backend, width)(
                    x, module.num_groups, module.weight, module.bias, module.eps, kind, lo, hi, am1, c, limit)
            y = plain(layer, *args, **kwargs)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"compile=True steers modules that return a tensor; {name!r} returned "
                                f"{type(y).__name__}: steer this map without compile")
            rows = True if self.gate is None else self.gate(name, y)
            if rows is False:
                return y
            kind, lo, hi, am1, c, limit = params.get(lam, y.dtype, y.device, y.ndim)
            out = compiled(_transport, backend, width)(y, kind, lo, hi, am1, c, limit)
            if rows is not True:
                out = torch.where(torch.as_tensor(rows, device=y.device).view(-1, *([1] * (y.ndim - 1))), out, y)
            w = None if self.mask is None else self.mask(name, y)
            if w is not None:  # lerp(x, T(x), w), as the eager hooks
                out = torch.lerp(y, out, w.to(out.dtype))
            return out

        forward._act_on = on
        return types.MethodType(forward, module)  # bound, so copy.deepcopy rebinds it to the copy

    def attach(self) -> "CompiledSteerHandle":
        """Replace the mapped modules' forwards (all or none, through act_core.hookguard)."""
        local = self.name_map or (lambda n: n)
        pairs = []
        for n in self.tmap.maps:
            module = find_module(self.model, local(n))
            ref = next(module.parameters(), None)
            ref = next(self.model.parameters(), None) if ref is None else ref
            if ref is not None and self.strengths[n] != 0:  # built before any compiled call traces it
                self.params[n].prepare(self.strengths[n], ref.dtype, ref.device)
            pairs.append((module, self._forward(n, module), "forward"))
        self._guard.attach(pairs, self.model, ForwardOverride)
        return self



__all__ = ["CompiledSteerHandle", "compiled", "DEFAULT_BACKEND"]
