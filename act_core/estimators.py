"""Estimators: fit a per-unit transport from source samples to target samples.

Every unit (column) is fitted independently. ``source`` is the distribution to move
away from, ``target`` the one to move toward; both are ``(N, D)`` / ``(M, D)`` float
tensors of pooled activations (one row per sample).

Methods (paper notation; ``a`` = source, ``b`` = target, per unit):

``linear`` (Linear-AcT)
    Sort ``a`` and ``b`` (1-D optimal transport pairs quantiles), then least squares
    through the quantile pairs, in float64::

        ω = Σ ã(i) b̃(i) / Σ ã(i)²,   β = m_b − ω m_a     (ã, b̃ centred sorted samples)

    With ``N == M`` this is the reference's estimator exactly (without its 1e-8 jitter).
    With ``N != M`` (the reference requires equal sizes) the larger set's empirical quantile
    function is read at the smaller set's ``n`` plotting positions ``(j + ½)/n`` (linear
    interpolation between order statistics), so both sides have ``n`` matched quantiles;
    stretching the smaller set over the larger one's range instead biases ω toward the
    ratio of the two sample ranges.
``mean`` (Mean-AcT)
    ``ω = 1``, ``β = m_b − m_a``.
``gaussian`` (1-D Gaussian OT)
    ``ω = σ_b / σ_a`` (unbiased std), ``β = m_b − ω m_a``; a source unit with ``σ_a ≤ 1e-4``
    (the reference's threshold, below which it leaves units alone) counts as constant.
``aura`` (AurA baseline)
    ``ω = 1 − Gini = 2 (1 − AUROC)`` where the unit's AUROC for "source vs target" is
    above 0.5, else 1; ``β = 0``. Its default support is unbounded.

Degenerate units are handled explicitly, never with jitter: a *constant source* unit
(spread below ``REL_EPS·|m_a|`` or ``ABS_EPS``) gets a pure shift to the target mean
(``ω = 1, β = m_b − m_a``) and is flagged, as is a unit whose slope would exceed
``OMEGA_LIMIT`` (1e8: a source spread below 1e-8 of the target's is numerically constant; see
:mod:`act_core.transport` for the ranges every map keeps); a constant target unit is flagged (Linear-AcT
then maps every in-support value to the constant). No estimator returns NaN or inf.

Every map also stores the source's quantile bands (see :mod:`act_core.transport`).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .transport import (BAND_PERCENTS, FLAG_CONSTANT_SOURCE, FLAG_CONSTANT_TARGET, OMEGA_LIMIT, UNBOUNDED,
                        UnitTransport, normalize_support)

#: A unit whose std is at most ``max(REL_EPS * |mean|, ABS_EPS)`` counts as constant.
REL_EPS = 1e-6
ABS_EPS = 1e-12

DEFAULT_SUPPORT = {"linear": "q_0_100", "mean": UNBOUNDED, "gaussian": UNBOUNDED, "aura": UNBOUNDED}


def _check_pair(source: torch.Tensor, target: torch.Tensor, min_samples: int) -> None:
    for name, z in (("source", source), ("target", target)):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (samples, units), got {type(z).__name__}")
        if z.ndim != 2:
            raise ValueError(f"{name} must have shape (samples, units), got {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise TypeError(f"{name} must be floating point, got {z.dtype}")
        if z.shape[0] < min_samples:
            raise ValueError(
                f"{name} has {z.shape[0]} sample(s); fitting needs at least {min_samples} per set "
                "(add more prompts or texts)"
            )
        bad = (~torch.isfinite(z)).sum().item()
        if bad:
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); check the model's dtype and inputs")
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"source has {source.shape[1]} units but target has {target.shape[1]}: they must come from the same module")


#: Gaussian: a source std at or below this is treated as constant (the reference's std_eps).
GAUSSIAN_STD_EPS = 1e-4


def _constant(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return std <= torch.clamp(REL_EPS * mean.abs(), min=ABS_EPS)


def _at_plotting_positions(sorted_z: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted columns ``(m, D)`` read at the ``n`` levels ``(j + ½)/n`` (float64); the identity
    when ``m == n``. Position of level ``p`` among ``m`` order statistics: ``p·m − ½``."""
    m = sorted_z.shape[0]
    z = sorted_z.double()
    if m == n:
        return z
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) * m / n - 0.5).clamp(0.0, m - 1.0)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    frac = (pos - lo.double()).unsqueeze(1)
    return z[lo] + frac * (z[hi] - z[lo])


def source_bands(sorted_source: torch.Tensor) -> torch.Tensor:
    """``(len(BAND_NAMES), 2, D)`` float32 quantile bands of sorted source columns.

    Linear interpolation between order statistics, as ``torch.quantile`` does;
    ``q_0_100`` is exactly ``[min, max]``.
    """
    n = sorted_source.shape[0]
    z = sorted_source.double()
    out = []
    for lo_pct, hi_pct in BAND_PERCENTS.values():
        pair = []
        for pct in (lo_pct, hi_pct):
            pos = pct / 100.0 * (n - 1)
            i = min(int(pos), n - 1)
            j = min(i + 1, n - 1)
            frac = pos - i
            pair.append(z[i] + frac * (z[j] - z[i]) if frac else z[i])
        out.append(torch.stack(pair))
    return torch.stack(out).float()


def _moments(z: torch.Tensor):
    z = z.double()
    return z.mean(0), z.std(0, unbiased=True) if z.shape[0] > 1 else torch.zeros(z.shape[1], dtype=torch.float64)


def _finish(omega, beta, const_src, const_tgt, m_a, m_b, sorted_source, method) -> UnitTransport:
    # constant source (or a slope beyond OMEGA_LIMIT: numerically constant): a pure shift to the target mean
    const_src = const_src | ~(omega.abs() <= OMEGA_LIMIT)
    omega = torch.where(const_src, torch.ones_like(omega), omega)
    beta = torch.where(const_src, m_b - m_a, beta)
    flags = const_src.to(torch.uint8) * FLAG_CONSTANT_SOURCE | const_tgt.to(torch.uint8) * FLAG_CONSTANT_TARGET
    omega32, beta32 = omega.float(), beta.float()
    if not (torch.isfinite(omega32).all() and torch.isfinite(beta32).all()):
        raise ValueError(
            f"{method} fit overflowed float32 (activations too large?); max |ω| = {omega.abs().max().item():.3g}, "
            f"max |β| = {beta.abs().max().item():.3g}"
        )
    return UnitTransport(
        omega=omega32,
        beta=beta32,
        bands=source_bands(sorted_source),
        flags=flags,
        method=method,
        default_support=DEFAULT_SUPPORT[method],
    )


def fit_linear(source: torch.Tensor, target: torch.Tensor) -> UnitTransport:
    """Linear-AcT: least squares through sorted (quantile-matched) pairs; see module docstring."""
    _check_pair(source, target, 2)
    s = torch.sort(source.float(), dim=0).values
    t = torch.sort(target.float(), dim=0).values
    k = min(s.shape[0], t.shape[0])
    a, b = _at_plotting_positions(s, k), _at_plotting_positions(t, k)
    m_a, m_b = a.mean(0), b.mean(0)
    ac, bc = a - m_a, b - m_b
    saa, sab, sbb = (ac * ac).sum(0), (ac * bc).sum(0), (bc * bc).sum(0)
    const_src = _constant((saa / k).sqrt(), m_a)
    const_tgt = _constant((sbb / k).sqrt(), m_b)
    omega = sab / torch.where(const_src, torch.ones_like(saa), saa)
    beta = m_b - omega * m_a
    return _finish(omega, beta, const_src, const_tgt, m_a, m_b, s, "linear")


def fit_mean(source: torch.Tensor, target: torch.Tensor) -> UnitTransport:
    """Mean-AcT: a shift by the difference of means (``ω = 1``)."""
    _check_pair(source, target, 2)
    (m_a, s_a), (m_b, s_b) = _moments(source), _moments(target)
    const_src, const_tgt = _constant(s_a, m_a), _constant(s_b, m_b)
    s = torch.sort(source.float(), dim=0).values
    return _finish(torch.ones_like(m_a), m_b - m_a, const_src, const_tgt, m_a, m_b, s, "mean")


def fit_gaussian(source: torch.Tensor, target: torch.Tensor) -> UnitTransport:
    """1-D Gaussian OT: ``ω = σ_b/σ_a``, ``β = m_b − ω m_a`` (unbiased std, float64)."""
    _check_pair(source, target, 2)
    (m_a, s_a), (m_b, s_b) = _moments(source), _moments(target)
    # the reference leaves units with a std <= 1e-4 alone: σ_b/σ_a explodes there; here such
    # a source unit gets the constant-source shift (ω = 1, flagged) instead
    const_src, const_tgt = _constant(s_a, m_a) | (s_a <= GAUSSIAN_STD_EPS), _constant(s_b, m_b)
    omega = s_b / torch.where(const_src, torch.ones_like(s_a), s_a)
    beta = m_b - omega * m_a
    s = torch.sort(source.float(), dim=0).values
    return _finish(omega, beta, const_src, const_tgt, m_a, m_b, s, "gaussian")


def auroc(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-unit AUROC of "source (label 1) scores above target (label 0)", ties counted half.

    Equals ``sklearn.metrics.roc_auc_score(labels, z[:, d])``. Returns ``(D,)`` float64.
    """
    t_sorted = torch.sort(target.double().T.contiguous(), dim=1).values  # (D, M)
    s = source.double().T.contiguous()  # (D, N)
    below = torch.searchsorted(t_sorted, s, right=False)
    below_or_equal = torch.searchsorted(t_sorted, s, right=True)
    wins = (below + below_or_equal).double().sum(1) / 2.0
    return wins / (source.shape[0] * target.shape[0])


def fit_aura(source: torch.Tensor, target: torch.Tensor) -> UnitTransport:
    """AurA: damp units that fire more on the source by ``1 − Gini = 2(1 − AUROC)``."""
    _check_pair(source, target, 1)
    auc = auroc(source, target)
    omega = torch.where(auc > 0.5, 2.0 * (1.0 - auc), torch.ones_like(auc))
    (m_a, _), (m_b, s_b) = _moments(source), _moments(target)
    s = torch.sort(source.float(), dim=0).values
    return _finish(
        omega, torch.zeros_like(omega), torch.zeros_like(omega, dtype=torch.bool),
        _constant(s_b, m_b), m_a, m_b, s, "aura",
    )


ESTIMATORS: Dict[str, Callable[[torch.Tensor, torch.Tensor], UnitTransport]] = {
    "linear": fit_linear,
    "mean": fit_mean,
    "gaussian": fit_gaussian,
    "aura": fit_aura,
}


def fit_transport(
    source: torch.Tensor, target: torch.Tensor, method: str = "linear", support: Optional[str] = None
) -> UnitTransport:
    """Fit a per-unit transport from ``source`` ``(N, D)`` to ``target`` ``(M, D)``.

    Args:
        method: ``"linear"`` (Linear-AcT), ``"mean"``, ``"gaussian"`` or ``"aura"``.
        support: default support stored in the map (``"q_0_100"`` … or ``"all"``); the
            method's own default when None. It can be overridden at every ``apply``.
    """
    try:
        fit = ESTIMATORS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(ESTIMATORS)}") from None
    t = fit(source, target)
    if support is not None:
        t.default_support = normalize_support(support)
    return t
