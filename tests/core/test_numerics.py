"""Numerics: degenerate units, half precision with large magnitudes, extreme λ, tiny sets."""

import pytest
import torch

from act_core import fit_transport
from act_core.transport import FLAG_CONSTANT_SOURCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lam", [-50.0, -1.0, 0.5, 1.0, 7.0, 100.0])
def test_large_activations_never_overflow_to_inf(dtype, lam, rng):
    src = torch.randn(200, 6, generator=rng) * 3
    dst = torch.randn(200, 6, generator=rng) * 9 + 40
    t = fit_transport(src, dst, "linear", support="all")
    x = (torch.randn(3, 5, 6, generator=rng) * 2e4).clamp(-6e4, 6e4).to(dtype)
    assert torch.isfinite(x).all()
    for layout, xx in (("tokens", x), ("spatial_mean", x.reshape(3, 6, 5, 1)), ("per_pixel", x.reshape(3, 6, 5, 1))):
        y = t.apply(xx, lam, "all", layout)
        assert y.dtype == dtype and torch.isfinite(y).all(), (layout, lam)


def test_huge_slopes_in_half_precision(rng):
    src = torch.randn(100, 3, generator=rng) * 1e-3
    dst = torch.randn(100, 3, generator=rng) * 1e3
    t = fit_transport(src, dst, "gaussian")
    assert t.omega.min() > 1e5  # does not fit float16 coefficients
    y = t.apply(torch.randn(4, 3).half(), 1.0, "all")
    assert torch.isfinite(y).all() and y.dtype == torch.float16
    ref = t.apply(torch.randn(4, 3, generator=rng), 1.0, "all")
    assert torch.isfinite(ref).all()


def test_near_constant_and_all_equal_quantiles(rng):
    base = torch.full((300, 3), 5.0)
    base[:, 1] += torch.randn(300, generator=rng) * 5e-8  # float32 rounding noise only
    base[::2, 2] = 6.0  # two values: all inner quantiles equal on each side
    dst = torch.randn(300, 3, generator=rng)
    for method in ("linear", "gaussian", "mean", "aura"):
        t = fit_transport(base, dst, method)
        assert torch.isfinite(t.omega).all() and torch.isfinite(t.beta).all() and torch.isfinite(t.bands).all()
        for support in ("q_0_100", "q_40_60", "all"):
            assert torch.isfinite(t.apply(base * 3, 2.0, support)).all()
    lin = fit_transport(base, dst, "linear")
    assert bool(lin.flags[0] & FLAG_CONSTANT_SOURCE) and bool(lin.flags[1] & FLAG_CONSTANT_SOURCE)
    assert not bool(lin.flags[2] & FLAG_CONSTANT_SOURCE)


def test_tiny_and_unequal_sets(rng):
    with pytest.raises(ValueError, match="at least 2"):
        fit_transport(torch.zeros(0, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        fit_transport(torch.randn(1, 3), torch.randn(5, 3))
    t = fit_transport(torch.randn(2, 3, generator=rng), torch.randn(97, 3, generator=rng))
    assert torch.isfinite(t.omega).all()
    t = fit_transport(torch.randn(97, 3, generator=rng), torch.randn(2, 3, generator=rng))
    assert torch.isfinite(t.omega).all()
    a = fit_transport(torch.randn(1, 2, generator=rng), torch.randn(3, 2, generator=rng), "aura")
    assert torch.isfinite(a.omega).all()


def test_band_passes_infinite_values_through_without_nan(rng):
    t = fit_transport(torch.randn(100, 4, generator=rng), torch.randn(100, 4, generator=rng) + 2)
    x = torch.randn(3, 4, generator=rng)
    x[0, 0], x[1, 1] = float("inf"), -float("inf")
    for layout, xx in (("tokens", x), ("per_pixel", x.T.reshape(1, 4, 3, 1))):
        y = t.apply(xx, 1.0, "q_0_100", layout)
        assert not torch.isnan(y).any()
    y = t.apply(x, 1.0, "q_0_100")
    assert y[0, 0] == float("inf") and y[1, 1] == -float("inf")
