"""Per-unit affine transport maps and how they are applied.

A :class:`UnitTransport` holds, for ``D`` independent units, the affine map
``T(a) = omega * a + beta`` together with the *support*: quantile bands of the
source distribution inside which a value is transported. Values outside the
chosen band pass through unchanged (the reference's strict-inequality rule,
``lo < a < hi``); ``support="all"`` transports everything.

Strength ``λ`` interpolates between identity and the full map (McCann
interpolation, paper Eq. 1)::

    T_λ(a) = (1 - λ) a + λ (ω a + β) = (1 + λ(ω - 1)) a + λ β

``λ = 0`` returns the input unchanged, bit for bit. Any real ``λ`` with ``|λ| ≤
STRENGTH_LIMIT`` (1000) is accepted; a larger or non-finite one is refused.

Ranges (what a transport may hold; the estimators, the map writer and the strict reader all
keep them): ``|ω| ≤ OMEGA_LIMIT`` (1e8: a steeper slope means a source spread below 1e-8 of
the target's, a unit the estimators treat as constant), ``|β| ≤ BETA_LIMIT`` (1e15), band
bounds any finite float32 with ``lower ≤ upper``. Then for ``|λ| ≤ 1000`` the coefficients
``a = 1 + λ(ω − 1)`` (``|a| ≤ 1e11``) and ``c = λβ`` (``|c| ≤ 1e18``) are finite in float32
and so is ``a x + c`` for every activation below 1e26 in magnitude; float16 results saturate
at ±65504 (see :meth:`UnitTransport.kernel`).

Layouts (``x`` is the activation tensor):

``"tokens"``
    ``x`` has shape ``(..., D)``; every element along the leading axes (every
    token, every sample) is transported independently.
``"spatial_mean"``
    ``x`` has shape ``(B, D, H, W)`` (a conv feature map). As in the reference,
    the unit value is each channel's spatial mean ``m``; the band test and the
    map are evaluated on ``m`` and the whole channel is shifted by
    ``T_λ(m) - m``: the spatial pattern is kept, its mean is transported.
``"per_pixel"``
    ``x`` has shape ``(B, D, H, W)``; the affine map is applied to every pixel
    of the channel, the band test still uses the channel's spatial mean (the
    bands were estimated on spatial means).
``"auto"``
    ``"spatial_mean"`` for 4-D inputs, ``"tokens"`` otherwise.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

#: Quantile bands stored for every map, as (lower %, upper %) of the source.
BAND_PERCENTS: Dict[str, Tuple[float, float]] = {
    "q_0_100": (0.0, 100.0),
    "q_0.5_99.5": (0.5, 99.5),
    "q_1_99": (1.0, 99.0),
    "q_2_98": (2.0, 98.0),
    "q_5_95": (5.0, 95.0),
    "q_10_90": (10.0, 90.0),
    "q_20_80": (20.0, 80.0),
    "q_30_70": (30.0, 70.0),
    "q_40_60": (40.0, 60.0),
}
BAND_NAMES: Tuple[str, ...] = tuple(BAND_PERCENTS)
#: The unbounded support (paper's Q_∞); ``"q_all"`` is the reference's spelling.
UNBOUNDED = "all"
SUPPORT_CHOICES: Tuple[str, ...] = BAND_NAMES + (UNBOUNDED,)
LAYOUTS = ("auto", "tokens", "spatial_mean", "per_pixel")

#: The largest |λ| accepted anywhere (apply, steer, bake, a map's default strength).
STRENGTH_LIMIT = 1000.0
#: The largest |ω| a transport may hold (see the module docstring).
OMEGA_LIMIT = 1e8
#: The largest |β| a transport may hold.
BETA_LIMIT = 1e15

#: Bit flags per unit, stored in map files.
FLAG_CONSTANT_SOURCE = 1
FLAG_CONSTANT_TARGET = 2


def normalize_support(support: Optional[str]) -> str:
    """Return the canonical support name, or raise a ValueError that lists the choices."""
    if support is not None and not isinstance(support, str):
        raise ValueError(f"support must be a name such as 'q_0_100' or 'all', got {type(support).__name__}")
    if support in (UNBOUNDED, "q_all", "inf", None):
        return UNBOUNDED
    if support in BAND_PERCENTS:
        return support
    raise ValueError(
        f"unknown support {support!r}: choose one of {', '.join(SUPPORT_CHOICES)} "
        "(a quantile band of the source, or 'all' for the unbounded support)"
    )


def check_strength(strength, what: str = "strength") -> float:
    """``strength`` as a float if it is a finite number with ``|λ| ≤ STRENGTH_LIMIT``, else a
    ValueError that names the range."""
    try:
        lam = float(strength)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be a number, got {strength!r}") from None
    if not math.isfinite(lam):
        raise ValueError(f"{what} must be a finite number, got {strength!r}")
    if abs(lam) > STRENGTH_LIMIT:
        raise ValueError(f"{what} {lam:g} is outside the supported range ±{STRENGTH_LIMIT:g}: such a strength "
                         "turns activations into meaningless values (use |λ| of a few units; 1 is the full map)")
    return lam


def range_problem(omega: torch.Tensor, beta: torch.Tensor, bands: torch.Tensor) -> Optional[str]:
    """None when ω, β and the bands are within the ranges of the module docstring, else what is
    wrong, naming the first offending unit."""
    for what, v, limit in (("omega", omega, OMEGA_LIMIT), ("beta", beta, BETA_LIMIT), ("bands", bands, None)):
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            unit = int((~finite).flatten().nonzero()[0, 0]) % max(v.shape[-1], 1)
            return (f"{what} holds NaN or inf (unit {unit}): a transport needs finite numbers (for 'everywhere' use "
                    "support 'all' instead of infinite band bounds)")
        if limit is not None and v.numel() and float(v.abs().max()) > limit:
            flat = int((v.abs() > limit).flatten().nonzero()[0, 0])
            return (f"{what} of unit {flat % v.shape[-1]} is {float(v.flatten()[flat]):.4g}, outside the supported "
                    f"range ±{limit:g} (no fitted map comes near it)")
    if bands.ndim == 3 and bands.shape[1] == 2 and bool((bands[:, 0] > bands[:, 1]).any()):
        k, unit = (bands[:, 0] > bands[:, 1]).nonzero()[0].tolist()
        return f"support band {BAND_NAMES[k]!r} of unit {unit} has its lower bound above its upper bound"
    return None


@dataclass(eq=False)
class UnitTransport:
    """Affine per-unit transport ``a -> ω a + β`` for ``D`` units.

    Attributes:
        omega: ``(D,)`` float32 slopes ω.
        beta: ``(D,)`` float32 offsets β.
        bands: ``(len(BAND_NAMES), 2, D)`` float32 source quantiles; ``bands[k, 0]``
            is the lower and ``bands[k, 1]`` the upper bound of band ``BAND_NAMES[k]``.
        flags: ``(D,)`` uint8 bit flags (``FLAG_CONSTANT_SOURCE``, ``FLAG_CONSTANT_TARGET``).
        method: the estimator that produced the map.
        default_support: the support used when ``apply`` is given none.
    """

    omega: torch.Tensor
    beta: torch.Tensor
    bands: torch.Tensor
    flags: torch.Tensor
    method: str = "linear"
    default_support: str = "q_0_100"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        d = self.omega.shape
        if self.omega.ndim != 1 or self.beta.shape != d:
            raise ValueError(f"omega and beta must both have shape (D,), got {tuple(self.omega.shape)} and {tuple(self.beta.shape)}")
        if self.bands.shape != (len(BAND_NAMES), 2, d[0]):
            raise ValueError(f"bands must have shape ({len(BAND_NAMES)}, 2, {d[0]}), got {tuple(self.bands.shape)}")
        if self.flags.shape != d:
            raise ValueError(f"flags must have shape ({d[0]},), got {tuple(self.flags.shape)}")
        problem = range_problem(self.omega, self.beta, self.bands)
        if problem:
            raise ValueError(problem)
        self.default_support = normalize_support(self.default_support)

    @classmethod
    def _checked(cls, omega, beta, bands, flags, method: str, default_support: str) -> "UnitTransport":
        """Build without re-checking: for callers that have checked shapes and ranges in bulk
        (the map reader checks every module of a file in a few passes)."""
        t = cls.__new__(cls)
        t.omega, t.beta, t.bands, t.flags = omega, beta, bands, flags
        t.method, t.default_support, t._cache = method, default_support, {}
        return t

    @property
    def units(self) -> int:
        return int(self.omega.shape[0])

    @property
    def degenerate(self) -> torch.Tensor:
        """``(D,)`` bool: units whose source was constant (mapped by a pure shift)."""
        return (self.flags & FLAG_CONSTANT_SOURCE) != 0

    def band(self, support: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Return ``(lo, hi)`` of a named band, or None for the unbounded support."""
        support = normalize_support(support)
        if support == UNBOUNDED:
            return None
        k = BAND_NAMES.index(support)
        return self.bands[k, 0], self.bands[k, 1]

    # -- application ---------------------------------------------------------------------------

    def coefficients(self, strength: float, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(a, c)`` with ``T_λ(x) = a x + c``: ``a = 1 + λ(ω-1)``, ``c = λβ`` (computed in float64)."""
        key = ("coef", float(strength), dtype, device)
        hit = self._cache.get(key)
        if hit is None:
            lam = check_strength(strength)
            with ordinary_tensors():
                a = 1.0 + lam * (self.omega.double() - 1.0)
                c = lam * self.beta.double()
                hit = (a.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype))
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def bounds(self, support: str, dtype: torch.dtype, device: torch.device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        key = ("band", support, dtype, device)
        if key not in self._cache:
            b = self.band(support)
            with ordinary_tensors():
                self._cache[key] = None if b is None else (b[0].to(device=device, dtype=dtype), b[1].to(device=device, dtype=dtype))
        return self._cache[key]

    def apply(self, x: torch.Tensor, strength: float = 1.0, support: Optional[str] = None, layout: str = "auto") -> torch.Tensor:
        """Transport ``x`` with strength ``λ``; see the module docstring for layouts and support.

        The computation runs in ``x``'s dtype on ``x``'s device; the map is cast once and cached.
        Returns a new tensor (``x`` itself when ``strength == 0``).
        """
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"activations must be a floating-point tensor, got {x.dtype}")
        if x.ndim == 0:
            raise ValueError("cannot transport a 0-D tensor: activations need a unit axis, e.g. shape (D,) or (B, D)")
        support = normalize_support(self.default_support if support is None else support)
        if layout == "auto":
            layout = "spatial_mean" if x.ndim == 4 else "tokens"
        channel_dim = 1 if layout in ("spatial_mean", "per_pixel") else -1
        if layout != "tokens" and x.ndim != 4:
            raise ValueError(f"layout {layout!r} needs a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[channel_dim] != self.units:
            raise ValueError(
                f"activation has {x.shape[channel_dim]} units on dim {channel_dim} (shape {tuple(x.shape)}) "
                f"but the map has {self.units}"
            )
        strength = check_strength(strength)
        if strength == 0:
            return x
        return self.kernel(strength, support, layout, x.dtype, x.device)(x, False)

    def kernel(self, strength: float, support: str, layout: str, dtype: torch.dtype, device: torch.device):
        """The hot path: ``f(x, inplace) -> y`` for a fixed strength, support, layout, dtype, device.

        Cached per argument tuple, so steering hooks pay no Python set-up per call. With
        ``inplace=True`` the result is written into ``x`` (callers guarantee ``x`` is not an
        alias of anything else). Outside the band the value is ``x + 0`` (unchanged).
        """
        key = ("kernel", float(strength), support, layout, dtype, device)
        k = self._cache.get(key)
        if k is None:
            with ordinary_tensors():
                k = self._build_kernel(float(strength), normalize_support(support), layout, dtype, device)
            self._cache[key] = k
        return k

    def _build_kernel(self, strength, support, layout, dtype, device):
        limit = torch.finfo(dtype).max
        if limit < 1e10:  # float16: saturate instead of overflowing to inf
            a64, c64 = self.coefficients(strength, torch.float64, torch.device("cpu"))
            band = self.band(support)
            # the banded kernels compute (a - 1)·v + c for v up to the band's bounds, also for
            # values outside the band (multiplied by 0 afterwards: an inf there would be NaN)
            reach = 0.0 if band is None else float(
                ((a64 - 1).abs() * torch.maximum(band[0].abs(), band[1].abs()).double()).max() + c64.abs().max())
            if (a64.abs().max() * 2 > limit) or (c64.abs().max() * 2 > limit) or not reach < limit / 2:
                wide = self._build_kernel(strength, support, layout, torch.float32, device)

                def upcast(x, inplace):
                    y = wide(x.float(), True).clamp_(-limit, limit).to(dtype)
                    return x.copy_(y) if inplace else y

                return upcast
            base = self._build_kernel_native(strength, support, layout, dtype, device)
            return lambda x, inplace: base(x, inplace).clamp_(-limit, limit)
        return self._build_kernel_native(strength, support, layout, dtype, device)

    def _build_kernel_native(self, strength, support, layout, dtype, device):
        a, c = self.coefficients(strength, dtype, device)
        bounds = self.bounds(support, dtype, device)
        a_minus_1 = a - 1
        if layout == "tokens":
            if bounds is None:
                return lambda x, inplace: torch.addcmul(c, x, a, out=x) if inplace else torch.addcmul(c, x, a)
            exact = self.bounds(support, _wide(dtype), device)  # the stored (float32) bounds
            lo, hi, am1_in, c_in = _closed_band(*exact, dtype, a_minus_1, c)
            if _subnormal(*bounds, lo, hi):  # e.g. a bound of exactly 0 (ReLU units): see _subnormal
                return _banded_by_comparison(*exact, a_minus_1, c)

            def banded(x, inplace):
                # lo < x < hi  <=>  lo' <= x <= hi'  (lo', hi' = the next floats inward)
                #              <=>  clamp(x, lo', hi') == x   (False for NaN)
                # so one clamp gives both the band test (written as a float 0/1 mask: much
                # faster than a bool mask with where / masked_fill on CPU) and a value that is
                # finite outside the band: y = x + inside * ((a - 1) clamp(x) + c)
                d = torch.clamp(x, lo, hi)
                if x.requires_grad and torch.is_grad_enabled():  # out= does not support autograd
                    return torch.addcmul(x, torch.eq(d, x).to(x.dtype), torch.addcmul(c_in, d, am1_in))
                inside = torch.eq(d, x, out=torch.empty_like(x))
                torch.addcmul(c_in, d, am1_in, out=d)
                return torch.addcmul(x, inside, d, out=x) if inplace else torch.addcmul(x, inside, d)

            return banded
        view = (1, -1, 1, 1)
        # spatial means (B, C) are small: computed and band-tested at float32 or wider, against
        # the stored bounds, as the reference does after casting activations to float32
        wide = _wide(dtype)
        exact = self.bounds(support, wide, device)
        if layout == "spatial_mean":
            aw, cw = self.coefficients(strength, wide, device)
            amw = aw - 1

            def spatial(x, inplace):
                m = x.mean(dim=(2, 3), dtype=wide)
                shift = torch.addcmul(cw, m, amw)
                if exact is not None:
                    shift.masked_fill_((m <= exact[0]) | (m >= exact[1]), 0)
                shift = shift.to(x.dtype)[:, :, None, None]
                return x.add_(shift) if inplace else x + shift

            return spatial
        av, cv, amv = a.view(view), c.view(view), a_minus_1.view(view)
        if bounds is None:
            return lambda x, inplace: torch.addcmul(cv, x, av, out=x) if inplace else torch.addcmul(cv, x, av)
        lov, hiv = exact[0].view(view), exact[1].view(view)

        def per_pixel(x, inplace):
            m = x.mean(dim=(2, 3), keepdim=True, dtype=wide)
            inside = ((lov < m) & (m < hiv)).to(x.dtype)  # (B, C, 1, 1): small
            a_eff = torch.addcmul(torch.ones_like(inside), inside, amv)  # 1 outside the band
            c_eff = inside * cv  # 0 outside the band
            return torch.addcmul(c_eff, x, a_eff, out=x) if inplace else torch.addcmul(c_eff, x, a_eff)

        return per_pixel

    # -- helpers -------------------------------------------------------------------------------

    def folded(self, strength: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``(a, c)`` of the fixed-λ map ``x -> a x + c`` (exact only with ``support='all'``)."""
        return self.coefficients(strength, torch.float32, torch.device("cpu"))

    def to_tensors(self) -> Dict[str, torch.Tensor]:
        return {"omega": self.omega, "beta": self.beta, "bands": self.bands, "flags": self.flags}


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision activations (the reference tests bands in float32), else the dtype."""
    return torch.promote_types(dtype, torch.float32)


def _closed_band(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype, a_minus_1: torch.Tensor, c: torch.Tensor):
    """The open band ``(lo, hi)`` (stored precision) as the closed ``[lo', hi']`` of ``dtype``
    values strictly inside it: ``lo'`` is the smallest ``dtype`` value above ``lo``, ``hi'`` the
    largest below ``hi``, so ``lo < x < hi  <=>  lo' <= x <= hi'`` for every ``x`` of ``dtype``
    (the float32 test of the reference, also for float16 / bfloat16 activations). ``a - 1``
    and ``c`` are zeroed on units whose band holds no value at all (``lo' > hi'``, e.g. a
    constant source unit, or a band beyond the range of ``dtype``), and their bounds set to
    ``[0, 0]`` (finite): there the map is the identity whatever the test says."""
    r_lo, r_hi = lo.to(dtype), hi.to(dtype)
    up = torch.nextafter(r_lo, torch.full_like(r_lo, float("inf")))
    down = torch.nextafter(r_hi, torch.full_like(r_hi, float("-inf")))
    lo2 = torch.where(r_lo.to(lo.dtype) > lo, r_lo, up)
    hi2 = torch.where(r_hi.to(hi.dtype) < hi, r_hi, down)
    empty = lo2 > hi2
    if bool(empty.any()):
        a_minus_1 = a_minus_1.masked_fill(empty, 0)
        c = c.masked_fill(empty, 0)
        # a band beyond the dtype's range gives an infinite bound here (float16: a band below
        # -65504); clamp would return it and 0 * inf is NaN, so an empty band becomes [0, 0]
        lo2, hi2 = lo2.masked_fill(empty, 0), hi2.masked_fill(empty, 0)
    return lo2, hi2, a_minus_1, c


def _subnormal(*bounds: torch.Tensor) -> bool:
    """True when a bound is a subnormal number. With flush-to-zero / denormals-are-zero on
    (``torch.set_flush_denormal(True)``, some GPU kernels) such a value compares as 0, so the
    next-float-inward rewrite of ``lo < x < hi`` would let ``x == 0`` into a band ``(0, hi)``."""
    for b in bounds:  # read the bits: under denormals-are-zero a float test would see 0
        int_dtype, exponent = _EXPONENT_BITS[b.dtype]
        bits = b.contiguous().view(int_dtype)
        magnitude = bits & torch.iinfo(int_dtype).max  # without the sign bit
        if bool(((bits & exponent) == 0).logical_and(magnitude != 0).any()):
            return True
    return False


_EXPONENT_BITS = {
    torch.float64: (torch.int64, 0x7FF0000000000000),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80),
}


def _banded_by_comparison(lo, hi, a_minus_1, c):
    """The band test as two comparisons (``lo < x < hi`` literally; two more passes than the
    clamp form, used when a bound is subnormal)."""
    def banded(x, inplace):
        if x.requires_grad and torch.is_grad_enabled() or x.dtype != lo.dtype:
            w = x if x.dtype == lo.dtype else x.to(lo.dtype)  # test at the bounds' precision
            inside = ((w > lo) & (w < hi)).to(x.dtype)
        else:
            inside = torch.gt(x, lo, out=torch.empty_like(x))
            inside.mul_(torch.lt(x, hi, out=torch.empty_like(x)))
        delta = torch.addcmul(c, torch.clamp(x, lo.to(x.dtype), hi.to(x.dtype)), a_minus_1)
        return torch.addcmul(x, inside, delta, out=x) if inplace else torch.addcmul(x, inside, delta)

    return banded


def ordinary_tensors():
    """Cached constants are built as ordinary tensors even when the first call runs under
    ``torch.inference_mode()`` (inference tensors could not be saved for a later backward)."""
    return torch.inference_mode(False)

