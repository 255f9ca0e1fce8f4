"""Bounded-memory statistics: exact moments, sketch quantiles close to the exact sort."""

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
