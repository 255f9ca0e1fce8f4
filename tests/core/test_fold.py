"""act_core.fold: the one fold-into-affine, against hand-computed answers, and the one support rule
that bake, fused norms, exports and steering share."""

import pytest
import torch

from act_core import TransportMap, fit_transport, steer
from act_core.bake import bake, plan_bake
from act_core.compose import combine_maps
from act_core.fold import FoldError, effective_support, fold_delta, fold_factors, folded
from act_core.transport import BAND_NAMES, UnitTransport


def transport(omega, beta, support="all", method="linear"):
    omega, beta = torch.tensor(omega, dtype=torch.float32), torch.tensor(beta, dtype=torch.float32)
    d = omega.numel()
    bands = torch.stack([torch.full((d,), -1.0), torch.full((d,), 1.0)]).unsqueeze(0).repeat(len(BAND_NAMES), 1, 1)
    return UnitTransport(omega, beta, bands, torch.zeros(d, dtype=torch.uint8), method, support)


def test_linear_fold_known_answer():
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        lin.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    t = transport([2.0, 1.0, 0.0], [1.0, 2.0, 3.0])
    f = fold_factors(lin, t, 0.5)  # a = 1 + 0.5(ω − 1) = [1.5, 1, 0.5], c = 0.5β = [0.5, 1, 1.5]
    w = folded(lin.weight, *f["weight"])
    b = folded(lin.bias, *f["bias"])
    assert torch.equal(w, torch.tensor([[1.5, 3.0], [3.0, 4.0], [2.5, 3.0]], dtype=torch.float64))
    assert torch.equal(b, torch.tensor([2.0, 0.0, 1.75], dtype=torch.float64))
    assert torch.equal(fold_delta(lin.bias, *f["bias"]), b - lin.bias.double())


def test_gain_offset_and_missing_parameters():
    class OffsetNorm(torch.nn.Module):  # y = x̂ ⊙ (1 + w), no bias (Gemma's RMSNorm)
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([0.0, 1.0]))

    t = transport([3.0, 0.5], [0.0, 0.0])
    f = fold_factors(OffsetNorm(), t, 1.0, gain_offset=1.0)  # (1 + w') = a (1 + w): w' = a w + (a − 1)
    assert torch.equal(folded(torch.tensor([0.0, 1.0]), *f["weight"]), torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert "bias" not in f  # c = 0: nothing to add
    shifted = transport([1.0, 1.0], [1.0, -1.0])
    with pytest.raises(FoldError, match="no bias"):
        fold_factors(OffsetNorm(), shifted, 1.0)
    assert "bias" in fold_factors(OffsetNorm(), shifted, 1.0, missing_bias="add")
    bare = torch.nn.LayerNorm(2, elementwise_affine=False)  # gain 1 and bias 0 implicit
    f = fold_factors(bare, shifted, 2.0, missing_bias="add")
    assert torch.equal(folded(None, *f["weight"], identity=1.0), torch.ones(2, dtype=torch.float64))
    assert torch.equal(folded(None, *f["bias"]), torch.tensor([2.0, -2.0], dtype=torch.float64))


def test_refusals_name_the_reason():
    t = transport([2.0, 2.0], [0.0, 0.0], support="q_0_100")
    with pytest.raises(FoldError, match="band"):
        fold_factors(torch.nn.Linear(2, 2), t, 1.0)
    assert fold_factors(torch.nn.Linear(2, 2), t, 1.0, support="all")  # the override wins
    with pytest.raises(FoldError, match="spatial-mean"):
        fold_factors(torch.nn.GroupNorm(1, 2), t, 1.0, support="all")
    assert fold_factors(torch.nn.GroupNorm(1, 2), t, 1.0, support="all", layout="per_pixel")
    with pytest.raises(FoldError, match="3 output units but the map has 2"):
        fold_factors(torch.nn.Linear(2, 3), t, 1.0, support="all")
    with pytest.raises(FoldError, match="no weight"):
        fold_factors(torch.nn.ReLU(), t, 1.0, support="all")


def test_effective_support_is_the_module_default_unless_overridden():
    assert effective_support(transport([1.0], [0.0], "q_5_95")) == "q_5_95"
    assert effective_support(transport([1.0], [0.0], "q_5_95"), "all") == "all"
    with pytest.raises(ValueError, match="unknown support"):
        effective_support(transport([1.0], [0.0]), "q_3_97")


def test_bake_uses_each_module_default_support_like_steer(rng):
    """combine_maps([mean, linear]) records the first map's default ('all') at map level, but the
    Linear-AcT module keeps its band: bake refuses it (it would differ from steering) instead of
    folding the unbounded map."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    src, tgt = torch.randn(64, 4, generator=rng), torch.randn(64, 4, generator=rng) * 3 + 2
    mean_map, lin_map = TransportMap(), TransportMap()
    mean_map.add("0", fit_transport(src, tgt, "mean"), "tokens")
    lin_map.add("1", fit_transport(src, tgt, "linear"), "tokens")
    both = combine_maps([mean_map, lin_map], [1.0, 1.0])
    assert both.default_support == "all" and both.maps["1"].default_support == "q_0_100"
    with pytest.raises(FoldError, match="1: support 'q_0_100' is a band"):
        plan_bake(net, both, 1.0)
    x = torch.randn(3, 4, generator=rng) * 4
    with steer(net, both, strength=1.0, support="all"):
        hooked = net(x)
    with bake(net, both, strength=1.0, support="all"):
        assert torch.allclose(net(x), hooked, atol=1e-5)


def test_bake_refuses_non_finite_strength(rng):
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    tmap = TransportMap()
    tmap.add("0", fit_transport(torch.randn(32, 4, generator=rng), torch.randn(32, 4, generator=rng), support="all"))
    before = net[0].weight.clone()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            bake(net, tmap, strength=bad)
    assert torch.equal(net[0].weight, before)
