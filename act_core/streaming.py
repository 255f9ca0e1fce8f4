"""Bounded-memory statistics of pooled activations, for fits on large prompt sets.

The exact estimators keep every pooled sample: ``(samples, D)`` float32 per module. These
accumulators keep a bounded summary instead and are updated batch by batch:

``Moments``
    Count, mean, sum of squared deviations (Chan et al.'s parallel update, float64), min,
    max. Exact for Mean-AcT and Gaussian OT; memory ``O(D)``.
``QuantileSketch``
    A deterministic KLL-style compactor per unit: level ``j`` holds values of weight
    ``2^j``; a level that reaches ``2k`` rows is sorted and every other row (alternating
    offset) moves up one level. Memory ``O(k · log2(N / k) · D)``; rank error of the
    quantile function ``O(log2(N / k) / k)``. Min and max are kept exactly, so the
    ``q_0_100`` band is exact.

:func:`fit_transport_streaming` fits a map from two sketches: Linear-AcT regresses the
target's quantile function on the source's at ``k`` levels ``(i + ½)/k`` (the same least
squares as the exact estimator, on a quantile grid instead of the sorted samples);
Mean-AcT and Gaussian use the exact moments. ``bench/bench_memory.py`` reports the error
against the exact sort.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .estimators import fit_transport
from .transport import BAND_PERCENTS, UnitTransport


class Moments:
    """Streaming count / mean / M2 / min / max per unit (float64)."""

    def __init__(self):
        self.n = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None
        self.min: Optional[torch.Tensor] = None
        self.max: Optional[torch.Tensor] = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            self.min, self.max = x.amin(0), x.amax(0)
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.min, self.max = torch.minimum(self.min, x.amin(0)), torch.maximum(self.max, x.amax(0))
        self.n = n

    def merge(self, other: "Moments") -> "Moments":
        """Fold ``other``'s statistics into these (Chan et al.'s pairwise combination); returns self."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = other.n, other.mean, other.m2, other.min, other.max
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.min, self.max = torch.minimum(self.min, other.min), torch.maximum(self.max, other.max)
        self.n = n
        return self

    def std(self) -> torch.Tensor:
        return (self.m2 / max(self.n - 1, 1)).sqrt()


class QuantileSketch:
    """Per-unit streaming quantiles with bounded memory (see module docstring)."""

    def __init__(self, k: int = 1024):
        if k < 8:
            raise ValueError(f"quantile sketch size k must be at least 8, got {k}")
        self.k = k
        self.levels: List[torch.Tensor] = []
        self.flips: List[int] = []
        self.moments = Moments()

    @property
    def n(self) -> int:
        return self.moments.n

    @property
    def exact(self) -> bool:
        """True while nothing was compacted: every row seen is still held (``levels[0]``)."""
        return len(self.levels) == 1

    @property
    def rows(self) -> int:
        """Rows held in memory (each a ``(D,)`` float32 vector)."""
        return sum(level.shape[0] for level in self.levels)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().cpu()
        self.moments.update(x)
        if not self.levels:
            self.levels, self.flips = [x[:0]], [0]
        self.levels[0] = torch.cat([self.levels[0], x])
        self._compact()

    def _compact(self) -> None:
        j = 0
        while j < len(self.levels):
            if self.levels[j].shape[0] >= 2 * self.k:
                s = torch.sort(self.levels[j], dim=0).values
                keep = s[self.flips[j] :: 2]
                self.flips[j] ^= 1
                if j + 1 == len(self.levels):
                    self.levels.append(keep[:0])
                    self.flips.append(0)
                self.levels[j + 1] = torch.cat([self.levels[j + 1], keep])
                self.levels[j] = s[:0]
            j += 1

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        """Fold ``other`` (a sketch of other rows, e.g. another rank's) into this one; returns self.

        Level ``j`` of both holds rows of weight ``2^j``; the levels are concatenated and
        compacted as in :meth:`update`, so the merged sketch has the guarantees of one sketch
        over all rows (rank error ``O(log2(N / k) / k)``; exact min, max and moments). Merging
        sketches that dropped nothing keeps every row, in order (``self``'s rows first)."""
        if other.k != self.k:
            raise ValueError(f"cannot merge quantile sketches of different sizes (k = {self.k} and {other.k})")
        if other.n == 0:
            return self
        self.moments.merge(other.moments)
        for j, level in enumerate(other.levels):
            if j == len(self.levels):
                self.levels.append(level[:0])
                self.flips.append(0)
            self.levels[j] = torch.cat([self.levels[j], level])
        self._compact()
        return self

    def quantiles(self, probs: torch.Tensor) -> torch.Tensor:
        """``(len(probs), D)`` float64 quantiles by linear interpolation of the weighted CDF."""
        if self.n == 0:
            raise ValueError("the sketch has seen no samples")
        values = torch.cat(self.levels).double()
        weights = torch.cat([torch.full((lv.shape[0],), float(2**j), dtype=torch.float64)
                             for j, lv in enumerate(self.levels)])
        order = torch.argsort(values, dim=0)
        sv = torch.gather(values, 0, order)
        cw = torch.cumsum(weights[order], dim=0) - 0.5 * weights[order]  # mid-point ranks
        total = weights.sum()
        r = (probs.double() * total).view(-1, 1).expand(-1, sv.shape[1]).contiguous()
        idx = torch.searchsorted(cw.T.contiguous(), r.T.contiguous()).T  # (P, D)
        hi = idx.clamp(max=sv.shape[0] - 1)
        lo = (idx - 1).clamp(min=0)
        c_lo, c_hi = torch.gather(cw, 0, lo), torch.gather(cw, 0, hi)
        v_lo, v_hi = torch.gather(sv, 0, lo), torch.gather(sv, 0, hi)
        frac = torch.where(c_hi > c_lo, (r - c_lo) / (c_hi - c_lo), torch.zeros_like(r)).clamp(0, 1)
        q = v_lo + frac * (v_hi - v_lo)
        # the extremes are tracked exactly
        q = torch.where(probs.view(-1, 1) <= 0, self.moments.min.unsqueeze(0), q)
        return torch.where(probs.view(-1, 1) >= 1, self.moments.max.unsqueeze(0), q)

    def grid(self) -> torch.Tensor:
        """Quantiles at the ``k`` mid-point levels ``(i + ½)/k``, float32 ``(k, D)``."""
        p = (torch.arange(self.k, dtype=torch.float64) + 0.5) / self.k
        return self.quantiles(p).float()

    def bands(self) -> torch.Tensor:
        out = []
        for lo, hi in BAND_PERCENTS.values():
            out.append(self.quantiles(torch.tensor([lo / 100.0, hi / 100.0], dtype=torch.float64)))
        return torch.stack(out).float()


def fit_transport_streaming(source: QuantileSketch, target: QuantileSketch, method: str = "linear",
                            support: Optional[str] = None) -> UnitTransport:
    """Fit from two sketches; see the module docstring for what is exact and what is not."""
    for name, s in (("source", source), ("target", target)):
        if s.n < 2:
            raise ValueError(f"{name} has {s.n} sample(s); fitting needs at least 2 per set")
    if source.exact and target.exact:  # nothing was dropped: the exact fit on the rows held
        return fit_transport(source.levels[0], target.levels[0], method, support)
    t = fit_transport(source.grid(), target.grid(), method, support)
    if method in ("mean", "gaussian"):
        ma, mb = source.moments.mean, target.moments.mean
        sa, sb = source.moments.std(), target.moments.std()
        const = t.degenerate
        omega = torch.ones_like(ma) if method == "mean" else sb / torch.where(const, torch.ones_like(sa), sa)
        omega = torch.where(const, torch.ones_like(omega), omega)
        t.omega = omega.float()
        t.beta = (mb - omega * ma).float()
        t._cache.clear()
    t.bands = source.bands()
    return t
