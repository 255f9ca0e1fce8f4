"""act_core.compose.combine_maps: sequential composition on shared modules, union elsewhere."""

import pytest
import torch

from act_core import TransportMap, fit_transport
from act_core.compose import combine_maps
from act_core.mapfile import MapFileError


def _map(seed, names, d=6, arch="sdxl", shift=1.0):
    g = torch.Generator().manual_seed(seed)
    m = TransportMap(meta={"method": "linear", "architecture": arch, "pooling": "mean"})
    for n in names:
        src = torch.randn(64, d, generator=g)
        tgt = src * (1.0 + 0.5 * torch.rand(d, generator=g)) + shift
        m.add(n, fit_transport(src, tgt, "linear"), "tokens")
    return m


def test_shared_module_is_sequential_composition_in_map_order():
    m1, m2 = _map(0, ["a", "b"]), _map(1, ["b", "c"], shift=-2.0)
    c = combine_maps([m1, m2], [0.7, 1.3])
    assert c.modules == ["a", "b", "c"]
    x = torch.randn(5, 6)
    want_b = m2["b"].apply(m1["b"].apply(x, 0.7, "all"), 1.3, "all")
    assert torch.allclose(c["b"].apply(x, 1.0, "all"), want_b, atol=1e-5)
    # the other order is a different map (the rule is order-sensitive, as documented)
    c_rev = combine_maps([m2, m1], [1.3, 0.7])
    assert not torch.allclose(c_rev["b"].apply(x, 1.0, "all"), want_b, atol=1e-3)
    # union elsewhere, strength folded in
    assert torch.allclose(c["a"].apply(x, 1.0, "all"), m1["a"].apply(x, 0.7, "all"), atol=1e-6)
    assert torch.allclose(c["c"].apply(x, 1.0, "all"), m2["c"].apply(x, 1.3, "all"), atol=1e-6)
    # apply strength interpolates towards identity; 0 is the identity
    assert torch.equal(c["b"].apply(x, 0.0, "all"), x)
    half = c["b"].apply(x, 0.5, "all")
    assert torch.allclose(half, 0.5 * x + 0.5 * want_b, atol=1e-5)
    assert c.default_strength == 1.0
    assert c.meta["composition"]["parts"][1]["strength"] == 1.3


def test_bands_come_from_the_first_map_and_file_round_trips(tmp_path):
    m1, m2 = _map(2, ["b"]), _map(3, ["b"])
    c = combine_maps([m1, m2], [1.0, 1.0])
    assert torch.equal(c["b"].bands, m1["b"].bands)
    path = c.save(tmp_path / "combined.safetensors")
    back = TransportMap.load(path)
    assert torch.equal(back["b"].omega, c["b"].omega) and torch.equal(back["b"].beta, c["b"].beta)
    assert back.meta["composition"]["rule"].startswith("sequential")


def test_single_map_at_strength_one_is_unchanged():
    m = _map(4, ["a"])
    c = combine_maps([m], [1.0])
    assert torch.allclose(c["a"].omega, m["a"].omega) and torch.allclose(c["a"].beta, m["a"].beta)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least one"):
        combine_maps([], [])
    with pytest.raises(ValueError, match="one strength per map"):
        combine_maps([_map(0, ["a"])], [1.0, 2.0])
    with pytest.raises(MapFileError, match="different architectures"):
        combine_maps([_map(0, ["a"]), _map(1, ["a"], arch="llama")], [1, 1])
    with pytest.raises(MapFileError, match="units"):
        combine_maps([_map(0, ["a"]), _map(1, ["a"], d=4)], [1, 1])
