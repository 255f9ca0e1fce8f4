"""Estimators on data whose answer is known."""

import math

import pytest
import torch

from act_core import auroc, fit_transport
from act_core.transport import FLAG_CONSTANT_SOURCE, FLAG_CONSTANT_TARGET

from reference_math import reference_linear


def gauss(n, d, mean, std, g):
    return torch.randn(n, d, generator=g, dtype=torch.float64).mul(std).add(mean).float()


def test_gaussian_to_gaussian_recovers_omega_beta(rng):
    src, dst = gauss(20000, 6, 1.0, 2.0, rng), gauss(20000, 6, 5.0, 0.5, rng)
    for method in ("linear", "gaussian"):
        t = fit_transport(src, dst, method)
        assert torch.allclose(t.omega, torch.full((6,), 0.25), atol=0.01), method
        assert torch.allclose(t.beta, torch.full((6,), 4.75), atol=0.03), method
        moved = t.apply(src, 1.0, "all")
        assert torch.allclose(moved.mean(0), torch.full((6,), 5.0), atol=0.02)
        assert torch.allclose(moved.std(0), torch.full((6,), 0.5), atol=0.02)


@pytest.mark.parametrize("dist", ["gauss", "skewed", "bimodal", "heavy", "bounded"])
def test_linear_equals_reference_math(dist, rng):
    n, d = 777, 5
    if dist == "gauss":
        src, dst = gauss(n, d, 0, 1, rng), gauss(n, d, 3, 2, rng)
    elif dist == "skewed":
        src = torch.empty(n, d).exponential_(1.0, generator=rng)
        dst = torch.empty(n, d).exponential_(0.3, generator=rng) + 2
    elif dist == "bimodal":
        sign = torch.randint(0, 2, (n, d), generator=rng).float() * 2 - 1
        src, dst = sign * 3 + gauss(n, d, 0, 0.5, rng), gauss(n, d, 1, 1, rng)
    elif dist == "heavy":
        src = torch.distributions.StudentT(1.5).sample((n, d))
        dst = torch.distributions.StudentT(3.0).sample((n, d)) * 2
    else:
        src, dst = torch.rand(n, d, generator=rng), torch.rand(n, d, generator=rng) * 2 + 2
    t = fit_transport(src, dst, "linear")
    w, b = reference_linear(src, dst)
    assert torch.allclose(t.omega, w, rtol=2e-7, atol=0), (t.omega - w).abs().max()
    assert torch.allclose(t.beta, b, rtol=2e-7, atol=1e-7), (t.beta - b).abs().max()
    # least squares through the quantile pairs preserves the mean: mean(T(a)) == mean(b)
    moved = t.apply(src.double(), 1.0, "all")
    assert torch.allclose(moved.mean(0), dst.double().mean(0), atol=1e-5 * (1 + dst.abs().max().item()))


def test_linear_exact_affine_and_bounded(rng):
    src = torch.rand(1000, 3, generator=rng)
    t = fit_transport(src, 3 * src[torch.randperm(1000, generator=rng)] + 1, "linear")
    assert torch.allclose(t.omega, torch.full((3,), 3.0), atol=1e-5)
    assert torch.allclose(t.beta, torch.full((3,), 1.0), atol=1e-5)
    u = fit_transport(torch.rand(50000, 2, generator=rng), torch.rand(50000, 2, generator=rng) * 2 + 2)
    assert torch.allclose(u.omega, torch.full((2,), 2.0), atol=0.02) and torch.allclose(u.beta, torch.full((2,), 2.0), atol=0.02)


def test_linear_skewed_monotone_affine(rng):
    src = torch.empty(40000, 2).exponential_(1.0, generator=rng)
    dst = torch.empty(40000, 2).exponential_(1.0, generator=rng) * 2 + 1
    t = fit_transport(src, dst, "linear")
    assert torch.allclose(t.omega, torch.full((2,), 2.0), atol=0.08)
    assert torch.allclose(t.beta, torch.full((2,), 1.0), atol=0.08)


def test_linear_unequal_sizes(rng):
    src = torch.rand(1000, 4, generator=rng)
    dst = torch.rand(1500, 4, generator=rng) * 4 - 1
    t = fit_transport(src, dst, "linear")
    assert torch.allclose(t.omega, torch.full((4,), 4.0), atol=0.15)
    assert torch.allclose(t.beta, torch.full((4,), -1.0), atol=0.1)
    # exact affine relation with different sizes: quantile interpolation recovers it
    base = torch.sort(torch.rand(301, 2, generator=rng), 0).values
    dense = torch.stack([torch.linspace(0, 1, 1201)] * 2, 1)
    lin = fit_transport(dense, 2 * base + 0.5)
    assert torch.isfinite(lin.omega).all() and torch.allclose(lin.omega, torch.full((2,), 2.0), atol=0.05)


def test_constant_source_is_a_pure_shift(rng):
    src = torch.randn(200, 4, generator=rng)
    src[:, 1] = 7.0
    src[:, 3] = 1e-3 * torch.ones(200)  # near-zero constant
    dst = gauss(200, 4, 2.0, 1.0, rng)
    for method in ("linear", "gaussian", "mean"):
        t = fit_transport(src, dst, method)
        assert torch.isfinite(t.omega).all() and torch.isfinite(t.beta).all()
        for u, c in ((1, 7.0), (3, 1e-3)):
            assert t.omega[u] == 1.0
            assert math.isclose(t.beta[u].item(), dst[:, u].double().mean().item() - c, rel_tol=1e-5)
            assert t.flags[u] & FLAG_CONSTANT_SOURCE
        assert not (t.flags[0] & FLAG_CONSTANT_SOURCE)
        # q_0_100 of a constant unit is empty under the strict rule: passes through
        assert torch.equal(t.apply(src, 1.0, "q_0_100")[:, 1], src[:, 1])
        moved = t.apply(src, 1.0, "all")
        assert torch.allclose(moved[:, 1], torch.full((200,), dst[:, 1].mean().item()), atol=1e-5)
    assert t.degenerate.tolist() == [False, True, False, True]


def test_constant_target_maps_to_the_constant(rng):
    src = gauss(300, 2, 0, 1, rng)
    dst = torch.full((300, 2), -4.0)
    t = fit_transport(src, dst, "linear")
    assert torch.equal(t.omega, torch.zeros(2)) and torch.equal(t.beta, torch.full((2,), -4.0))
    assert (t.flags & FLAG_CONSTANT_TARGET).all()
    g = fit_transport(src, dst, "gaussian")
    assert torch.equal(g.omega, torch.zeros(2)) and torch.allclose(g.beta, torch.full((2,), -4.0))
    both = fit_transport(torch.full((10, 1), 2.0), torch.full((10, 1), 5.0))
    assert both.omega.item() == 1.0 and both.beta.item() == 3.0


def test_mean_and_gaussian_closed_forms(rng):
    src, dst = gauss(500, 3, 1.0, 3.0, rng), gauss(400, 3, -2.0, 0.5, rng)
    m = fit_transport(src, dst, "mean")
    assert torch.equal(m.omega, torch.ones(3))
    assert torch.allclose(m.beta, (dst.double().mean(0) - src.double().mean(0)).float(), atol=1e-6)
    g = fit_transport(src, dst, "gaussian")
    w = dst.double().std(0) / src.double().std(0)
    assert torch.allclose(g.omega, w.float(), rtol=1e-6)
    assert torch.allclose(g.beta, (dst.double().mean(0) - w * src.double().mean(0)).float(), atol=1e-6)
    assert m.default_support == "all" and g.default_support == "all"


def test_auroc_matches_pairwise_count(rng):
    src = torch.randint(0, 5, (40, 3), generator=rng).float()
    dst = torch.randint(0, 5, (30, 3), generator=rng).float()
    brute = ((src[:, None, :] > dst[None, :, :]).double() + 0.5 * (src[:, None, :] == dst[None, :, :]).double()).mean((0, 1))
    assert torch.allclose(auroc(src, dst), brute, atol=1e-12)


def test_aura_damps_units_that_fire_on_source(rng):
    src = torch.stack([torch.ones(50) * 5, torch.zeros(50), torch.randn(50, generator=rng)], 1)
    dst = torch.stack([torch.zeros(50), torch.ones(50) * 5, torch.randn(50, generator=rng)], 1)
    t = fit_transport(src, dst, "aura")
    assert t.omega[0] == 0.0  # AUROC 1 -> fully damped
    assert t.omega[1] == 1.0  # AUROC 0 -> untouched
    a = auroc(src, dst)[2].item()
    assert math.isclose(t.omega[2].item(), 2 * (1 - a) if a > 0.5 else 1.0, rel_tol=1e-6)
    assert torch.equal(t.beta, torch.zeros(3)) and t.default_support == "all"


@pytest.mark.parametrize(
    "src,dst,msg",
    [
        (torch.zeros(10), torch.zeros(10, 1), "shape"),
        (torch.zeros(10, 2), torch.zeros(10, 3), "same module"),
        (torch.zeros(1, 2), torch.zeros(10, 2), "at least 2"),
        (torch.tensor([[0.0], [float("nan")]]), torch.zeros(5, 1), "non-finite"),
        (torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2), "floating point"),
    ],
)
def test_bad_input_errors(src, dst, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        fit_transport(src, dst, "linear")


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'lineer'.*linear"):
        fit_transport(torch.zeros(3, 1), torch.zeros(3, 1), "lineer")


@pytest.mark.parametrize("n, m", [(1000, 50), (50, 1000), (100, 400)])
def test_linear_with_unequal_sizes_is_unbiased_on_one_distribution(n, m):
    """Same distribution on both sides: the true slope is 1 whatever the sample sizes."""
    g = torch.Generator().manual_seed(0)
    t = fit_transport(torch.randn(n, 2000, generator=g), torch.randn(m, 2000, generator=g) * 2 + 1, "linear")
    assert abs(t.omega.mean().item() - 2.0) < 0.06  # target = 2 * source + 1
    assert abs(t.beta.mean().item() - 1.0) < 0.05


def test_gaussian_near_constant_source_does_not_explode():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(64, 3, generator=g)
    src[:, 1] = 5.0 + 1e-6 * torch.randn(64, generator=g)  # std 1e-6: sigma_b / sigma_a would be ~1e6
    t = fit_transport(src, torch.randn(64, 3, generator=g) * 2 + 1, "gaussian")
    assert t.omega[1] == 1 and bool(t.degenerate[1]) and abs(t.beta[1].item() - (1 - 5.0)) < 0.5
    assert 1.5 < t.omega[0] < 2.5 and not bool(t.degenerate[0])
