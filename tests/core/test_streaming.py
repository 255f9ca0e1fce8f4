"""Bounded-memory statistics: exact moments, sketch quantiles close to the exact sort."""

import pytest
import torch

from act_core import fit_transport
from act_core.streaming import Moments, QuantileSketch, fit_transport_streaming


def test_moments_are_exact(rng):
    x = torch.randn(1000, 5, generator=rng, dtype=torch.float64) * 3 + 2
    m = Moments()
    for chunk in x.split(77):
        m.update(chunk)
    assert torch.allclose(m.mean, x.mean(0), atol=1e-12) and torch.allclose(m.std(), x.std(0), atol=1e-12)
    assert torch.equal(m.min, x.amin(0)) and torch.equal(m.max, x.amax(0))


def test_sketch_quantiles_and_bounded_memory(rng):
    x = torch.empty(40000, 3).exponential_(1.0, generator=rng)
    s = QuantileSketch(k=256)
    for chunk in x.split(500):
        s.update(chunk)
    assert s.rows < 256 * 2 * 8  # bounded: levels of < 2k rows, log2(N/k) levels
    p = torch.tensor([0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0], dtype=torch.float64)
    exact = torch.quantile(x.double(), p, dim=0)
    approx = s.quantiles(p)
    # rank error: the sketch's quantile lies within a few percent of rank of the truth
    ranks = (x.double().unsqueeze(0) <= approx.unsqueeze(1)).double().mean(1)
    assert (ranks - p.view(-1, 1)).abs().max() < 0.03
    assert torch.equal(approx[0], exact[0]) and torch.equal(approx[-1], exact[-1])


def test_streaming_fit_close_to_exact(rng):
    src = torch.empty(20000, 4).exponential_(1.0, generator=rng)
    dst = torch.randn(20000, 4, generator=rng) * 2 + 5
    exact = fit_transport(src, dst, "linear")
    a, b = QuantileSketch(512), QuantileSketch(512)
    for cs, ct in zip(src.split(1000), dst.split(1000)):
        a.update(cs)
        b.update(ct)
    approx = fit_transport_streaming(a, b, "linear")
    assert torch.allclose(approx.omega, exact.omega, rtol=0.02)
    assert torch.allclose(approx.beta, exact.beta, atol=0.05)
    assert torch.equal(approx.bands[0], exact.bands[0])  # min/max exact
    for method in ("mean", "gaussian"):
        e, s = fit_transport(src, dst, method), fit_transport_streaming(a, b, method)
        assert torch.allclose(s.omega, e.omega, rtol=1e-5) and torch.allclose(s.beta, e.beta, atol=1e-5), method


def test_a_sketch_that_dropped_nothing_gives_the_exact_fit():
    from act_core import fit_transport
    from act_core.streaming import QuantileSketch, fit_transport_streaming

    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(40, 5, generator=g).exp(), torch.randn(60, 5, generator=g) * 3
    a, b = QuantileSketch(1024), QuantileSketch(1024)
    for chunk in src.split(7):
        a.update(chunk)
    b.update(tgt)
    assert a.exact and b.exact
    for method in ("linear", "mean", "gaussian"):
        got, want = fit_transport_streaming(a, b, method), fit_transport(src, tgt, method)
        assert torch.equal(got.omega, want.omega) and torch.equal(got.beta, want.beta) and torch.equal(got.bands, want.bands)


def test_merged_moments_are_exact(rng):
    x = torch.randn(900, 4, generator=rng, dtype=torch.float64) * 2 - 1
    parts = [Moments() for _ in range(3)]
    for m, chunk in zip(parts, x.split(300)):
        for c in chunk.split(41):
            m.update(c)
    merged = parts[0].merge(parts[1]).merge(Moments()).merge(parts[2])
    assert merged.n == 900
    assert torch.allclose(merged.mean, x.mean(0), atol=1e-12) and torch.allclose(merged.std(), x.std(0), atol=1e-12)
    assert torch.equal(merged.min, x.amin(0)) and torch.equal(merged.max, x.amax(0))


def test_merging_sketches_that_dropped_nothing_keeps_every_row_in_order():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 3, generator=g)
    a, b = QuantileSketch(64), QuantileSketch(64)
    a.update(x[:20])
    b.update(x[20:])
    merged = a.merge(b)
    assert merged.exact and torch.equal(merged.levels[0], x)


def test_merged_sketch_keeps_the_single_sketch_guarantees(rng):
    """Four 'ranks' sketch 10,000 rows each; the merged sketch's quantiles have the rank error
    of one sketch over all 40,000 rows (a few percent at k = 256), min / max exact."""
    x = torch.empty(40000, 3).exponential_(1.0, generator=rng)
    parts = []
    for chunk in x.split(10000):
        s = QuantileSketch(k=256)
        for c in chunk.split(500):
            s.update(c)
        parts.append(s)
    merged = parts[0]
    for s in parts[1:]:
        merged.merge(s)
    assert merged.n == 40000 and merged.rows < 256 * 2 * 8
    p = torch.tensor([0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0], dtype=torch.float64)
    approx = merged.quantiles(p)
    ranks = (x.double().unsqueeze(0) <= approx.unsqueeze(1)).double().mean(1)
    assert (ranks - p.view(-1, 1)).abs().max() < 0.03
    exact = torch.quantile(x.double(), p, dim=0)
    assert torch.equal(approx[0], exact[0]) and torch.equal(approx[-1], exact[-1])
    with pytest.raises(ValueError, match="different sizes"):
        merged.merge(QuantileSketch(128))
