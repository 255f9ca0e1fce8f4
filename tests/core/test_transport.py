"""Applying a UnitTransport: support bands, strict inequality, strength, layouts."""

import pytest
import torch

from act_core import BAND_NAMES, fit_transport
from act_core.transport import BAND_PERCENTS

from reference_math import reference_apply, reference_bands, reference_linear


@pytest.fixture
def fitted(rng):
    src = torch.randn(1001, 8, generator=rng) * 2 + 1
    dst = torch.randn(1001, 8, generator=rng) * 0.5 - 3
    return src, dst, fit_transport(src, dst, "linear")


def test_bands_match_torch_quantile(fitted):
    src, _, t = fitted
    for k, name in enumerate(BAND_NAMES):
        lo, hi = reference_bands(src, *BAND_PERCENTS[name])
        assert torch.allclose(t.bands[k, 0], lo, atol=1e-6, rtol=1e-6), name
        assert torch.allclose(t.bands[k, 1], hi, atol=1e-6, rtol=1e-6), name
    assert torch.equal(t.bands[0, 0], src.min(0).values) and torch.equal(t.bands[0, 1], src.max(0).values)


def test_strict_inequality_and_pass_through(fitted):
    src, _, t = fitted
    lo, hi = t.band("q_5_95")
    x = torch.stack([lo, hi, (lo + hi) / 2, lo - 1, hi + 1])  # (5, D)
    y = t.apply(x, 1.0, "q_5_95")
    assert torch.equal(y[0], x[0]) and torch.equal(y[1], x[1])  # on the bounds: not transported
    assert torch.equal(y[3], x[3]) and torch.equal(y[4], x[4])  # outside: unchanged, not clamped
    assert torch.allclose(y[2], t.omega * x[2] + t.beta, atol=1e-5)
    everything = t.apply(x, 1.0, "all")
    assert torch.allclose(everything, t.omega * x + t.beta, atol=1e-5)


def test_matches_reference_forward(fitted):
    src, dst, t = fitted
    w, b = reference_linear(src, dst)
    lo, hi = reference_bands(src, 0, 100)
    z = torch.randn(4, 7, 8) * 2 + 1
    for lam in (0.3, 1.0, 2.5, -0.7):
        ours = t.apply(z, lam, "q_0_100")
        ref = reference_apply(z, w, b, lo, hi, lam)
        assert torch.allclose(ours, ref, atol=2e-6, rtol=1e-6), lam


def test_zero_strength_is_bit_exact_identity(fitted):
    _, _, t = fitted
    x = torch.randn(3, 5, 8)
    x[0, 0, 0] = -0.0
    y = t.apply(x, 0.0, "all")
    assert torch.equal(y, x) and y.data_ptr() == x.data_ptr()
    assert torch.equal(torch.signbit(y), torch.signbit(x))


def test_strength_interpolates(fitted):
    _, _, t = fitted
    x = torch.randn(50, 8, dtype=torch.float64)
    full = t.omega.double() * x + t.beta.double()
    for lam in (-1.0, 0.25, 1.0, 3.0):
        assert torch.allclose(t.apply(x, lam, "all"), (1 - lam) * x + lam * full, atol=1e-9)


def test_spatial_mean_layout_shifts_channel_mean(fitted):
    _, _, t = fitted
    x = torch.randn(2, 8, 5, 6) + 1
    y = t.apply(x, 1.0, "all")  # auto -> spatial_mean for 4-D
    m = x.mean((2, 3))
    assert torch.allclose(y.mean((2, 3)), t.omega * m + t.beta, atol=1e-5)
    assert torch.allclose(y - y.mean((2, 3), keepdim=True), x - x.mean((2, 3), keepdim=True), atol=1e-5)
    # band test on the spatial mean: a channel whose mean is outside passes through untouched
    lo, hi = t.band("q_40_60")
    x2 = x.clone()
    x2[0, 0] = x2[0, 0] - x2[0, 0].mean() + hi[0] + 5
    y2 = t.apply(x2, 1.0, "q_40_60")
    assert torch.equal(y2[0, 0], x2[0, 0])


def test_per_pixel_layout(fitted):
    _, _, t = fitted
    x = torch.randn(2, 8, 3, 3)
    y = t.apply(x, 0.5, "all", layout="per_pixel")
    a = 1 + 0.5 * (t.omega - 1)
    assert torch.allclose(y, a.view(1, -1, 1, 1) * x + 0.5 * t.beta.view(1, -1, 1, 1), atol=1e-6)


def test_half_precision_stays_finite(fitted):
    _, _, t = fitted
    x = (torch.randn(4, 8) * 1000).half()
    y = t.apply(x, 1.0, "all")
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_apply_errors(fitted):
    _, _, t = fitted
    with pytest.raises(ValueError, match="has 7 units.*map has 8"):
        t.apply(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="unknown support 'q_3_97'"):
        t.apply(torch.zeros(2, 8), support="q_3_97")
    with pytest.raises(ValueError, match="unknown layout"):
        t.apply(torch.zeros(2, 8), layout="pixels")
    with pytest.raises(ValueError, match="4-D"):
        t.apply(torch.zeros(2, 8), layout="spatial_mean")
    with pytest.raises(TypeError, match="floating-point"):
        t.apply(torch.zeros(2, 8, dtype=torch.long))


def test_q_all_alias(fitted):
    _, _, t = fitted
    x = torch.randn(3, 8) * 100
    assert torch.equal(t.apply(x, 1.0, "q_all"), t.apply(x, 1.0, "all"))


def test_band_at_zero_with_flush_denormal(rng):
    """ReLU-like units have q_0_100 lower bound exactly 0; with denormals flushed to zero the
    band (0, hi) must still leave exact zeros alone (strict inequality)."""
    src = torch.relu(torch.randn(500, 4, generator=rng))
    t = fit_transport(src, torch.relu(torch.randn(500, 4, generator=rng)) * 2 + 0.3, "linear")
    lo, hi = t.band("q_0_100")
    assert torch.all(lo == 0)
    x = torch.relu(torch.randn(2, 6, 4, generator=rng))
    want = torch.where((x > lo) & (x < hi), x + ((t.omega - 1) * x + t.beta), x)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        y = t.apply(x, 1.0, "q_0_100", "tokens")
    finally:
        torch.set_flush_denormal(False)
    assert torch.equal(y[x == 0], x[x == 0])
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_half_precision_band_never_turns_outside_values_into_nan():
    t = fit_transport(torch.linspace(-1000, 1000, 101)[:, None], torch.linspace(-1000, 1000, 101)[:, None] * 23, "linear")
    x = torch.tensor([[5.0], [999.0], [2000.0], [-3000.0]]).half()
    y = t.apply(x, 3.0, "q_0_100", "tokens")
    assert not torch.isnan(y).any()
    assert torch.equal(y[2:], x[2:])  # outside the band: unchanged


def test_non_finite_numbers_are_refused_at_construction(fitted):
    from act_core.transport import UnitTransport

    _, _, t = fitted
    for field in ("omega", "beta", "bands"):
        bad = {k: getattr(t, k).clone() for k in ("omega", "beta", "bands")}
        bad[field].view(-1)[0] = float("inf") if field == "bands" else float("nan")
        with pytest.raises(ValueError, match=f"{field} holds NaN or inf"):
            UnitTransport(bad["omega"], bad["beta"], bad["bands"], t.flags, t.method, t.default_support)
