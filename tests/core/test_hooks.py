"""Pooling, collection hooks, steering hooks and their removal."""

import pytest
import torch

from act_core import ActivationCollector, TransportMap, attach, count_hooks, fit_transport, pool, run_until_stop, select_modules, steer
from act_core.mapfile import MapFileError


class Net(torch.nn.Module):
    """Tokens (B, T, 8) -> three blocks; block 1 returns a tuple."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 8)
        self.b = TupleBlock()
        self.c = torch.nn.LayerNorm(8)
        self.calls = {"c": 0}

    def forward(self, x):
        h = self.a(x)
        h, _aux = self.b(h)
        self.calls["c"] += 1
        return self.c(h)


class TupleBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.lin(x)), x.sum()


def make_map(net, rng):
    tmap = TransportMap()
    for name, idx in (("a", None), ("b", 0), ("c", None)):
        tmap.add(name, fit_transport(torch.randn(32, 8, generator=rng), torch.randn(32, 8, generator=rng) + 2, support="all"),
                 "tokens", idx)
    return tmap


def test_pool_mask_and_padding_sides():
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    m = pool(x, "mean", mask)
    assert torch.allclose(m[0], x[0, 2:].mean(0)) and torch.allclose(m[1], x[1, :4].mean(0))
    last = pool(x, "last", mask)
    assert torch.equal(last[0], x[0, 4]) and torch.equal(last[1], x[1, 3])
    assert torch.equal(pool(x, "max", mask)[0], x[0, 2:].amax(0))
    assert torch.equal(pool(x, "min", mask)[1], x[1, :4].amin(0))
    assert pool(x, "none", mask).shape == (7, 3)
    assert torch.allclose(pool(x, "mean"), x.mean(1))
    img = torch.randn(2, 4, 3, 3)
    assert torch.allclose(pool(img, "mean"), img.mean((2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(x, "median")
    with pytest.raises(ValueError, match="last"):
        pool(img, "last")


def test_pool_copies_its_input():
    x = torch.randn(2, 4)
    p = pool(x, "mean")
    x += 1  # ComfyUI's CLIP layers mutate their outputs in place later on
    assert not torch.equal(p, x)


def test_collector_records_and_stops_early():
    net = Net()
    col = ActivationCollector(net, {"a": None, "b": 0}, stop_after=True)
    with col:
        for _ in range(3):
            assert run_until_stop(net, torch.randn(4, 6, 8)) is None
    assert net.calls["c"] == 0  # stopped before block c
    acts = col.take()
    assert acts["a"].shape == (12, 8) and acts["b"].shape == (12, 8)
    assert col.shapes["a"] == (4, 6, 8)
    assert count_hooks(net) == 0
    with pytest.raises(RuntimeError, match="recorded no activation"):
        col.take()


def test_steer_changes_output_and_restores_exactly(rng):
    net = Net()
    x = torch.randn(3, 5, 8)
    before = net(x)
    tmap = make_map(net, rng)
    with steer(net, tmap, strength=1.0) as h:
        steered = net(x)
        assert count_hooks(net) == 3 and h.attached
        h.set_strength(0.0)
        assert torch.equal(net(x), before)
    assert not torch.allclose(steered, before)
    assert count_hooks(net) == 0
    assert torch.equal(net(x), before)


def test_hooks_removed_after_exception(rng):
    net = Net()
    x = torch.randn(2, 4, 8)
    before = net(x)
    with pytest.raises(ZeroDivisionError):
        with steer(net, make_map(net, rng), strength=0.7):
            net(x)
            1 / 0
    assert count_hooks(net) == 0
    assert torch.equal(net(x), before)


def test_attach_handle_per_module_strength_and_gate(rng):
    net = Net()
    x = torch.randn(4, 3, 8)
    before = net(x)
    tmap = make_map(net, rng)
    h = attach(net, tmap, strength={"c": 1.0, "a": 0.0, "b": 0.0})
    only_c = net(x)
    h.remove()
    assert torch.allclose(only_c, tmap["c"].apply(before, 1.0), atol=1e-6)
    rows = torch.tensor([True, False, True, False])
    with steer(net, tmap.subset(["c"]), strength=1.0, gate=lambda name, out: rows):
        gated = net(x)
    assert torch.equal(gated[1], before[1]) and torch.equal(gated[3], before[3])
    assert torch.allclose(gated[0], only_c[0])
    with steer(net, tmap, strength=1.0, gate=lambda name, out: False):
        assert torch.equal(net(x), before)
    with pytest.raises(ValueError, match="not in the map"):
        attach(net, tmap, strength={"zzz": 1.0})
    assert count_hooks(net) == 0


@pytest.mark.parametrize("fuse", [True, False])
def test_mask_blends_exactly_and_combines_with_the_gate(rng, fuse):
    """``mask``: lerp(x, T(x), w), exactly x where w = 0 and T(x) where w = 1; rows the gate skips stay x."""
    net = Net()
    x = torch.randn(4, 6, 8)
    before = net(x)
    c = make_map(net, rng).subset(["c"])
    with steer(net, c, strength=1.0, fuse=fuse):
        full = net(x)
    w = torch.zeros(1, 6, 1)
    w[:, :3] = 1.0  # the first three tokens
    with steer(net, c, strength=1.0, fuse=fuse, mask=lambda name, out: w):
        masked = net(x)
        assert count_hooks(net) == 1
    assert torch.equal(masked[:, :3], full[:, :3]) and torch.equal(masked[:, 3:], before[:, 3:])
    half = torch.full((1, 6, 1), 0.25)
    with steer(net, c, strength=1.0, fuse=fuse, mask=lambda name, out: half):
        torch.testing.assert_close(net(x), before + 0.25 * (full - before))
    rows = torch.tensor([True, False, True, False])
    with steer(net, c, strength=1.0, fuse=fuse, gate=lambda name, out: rows, mask=lambda name, out: w):
        both = net(x)
    assert torch.equal(both[rows], masked[rows]) and torch.equal(both[~rows], before[~rows])
    with steer(net, c, strength=1.0, fuse=fuse, mask=lambda name, out: None):
        assert torch.equal(net(x), full)
    assert count_hooks(net) == 0 and torch.equal(net(x), before)


def test_attach_checks_the_model_first_and_failure_leaves_no_hook(rng, monkeypatch):
    net = Net()
    tmap = make_map(net, rng)
    tmap.add("missing", tmap["a"])
    with pytest.raises(MapFileError, match="module 'missing' not found"):
        attach(net, tmap)
    assert count_hooks(net) == 0
    wide = make_map(net, rng)
    wide.add("a", fit_transport(torch.randn(50, 3, generator=rng), torch.randn(50, 3, generator=rng)))
    with pytest.raises(MapFileError, match="has 8 units but the map has 3"):  # before the first forward
        attach(net, wide)
    assert count_hooks(net) == 0

    def broken(*a, **k):  # the last module's registration fails: the earlier ones are removed again
        raise RuntimeError("registration failed")

    monkeypatch.setattr(net.c, "register_forward_hook", broken)
    with pytest.raises(RuntimeError, match="registration failed"):
        attach(net, make_map(net, rng), fuse=False)
    assert count_hooks(net) == 0


def test_select_modules():
    net = Net()
    assert select_modules(net, [r"b:0", r"c"]) == {"b": 0, "c": None}
    assert list(select_modules(net, r"[ab].*")) == ["a", "b", "b.lin"]
    with pytest.raises(ValueError, match=r"linn' matched no module \(close: b\.lin"):
        select_modules(net, [r"b\.linn"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_modules(net, ["("])


@pytest.mark.parametrize("fuse", [False, True])
def test_constants_first_built_under_inference_mode_still_allow_backward(rng, fuse):
    """Cached coefficients / kernels / fused parameters are ordinary tensors even when the first
    steered call runs under torch.inference_mode (ComfyUI runs nodes that way)."""
    net = Net()
    tmap = make_map(net, rng)
    x = torch.randn(2, 3, 8, generator=rng)
    with steer(net, tmap, strength=0.5, fuse=fuse) as h:
        h.set_strength(0.8)  # new λ: nothing is cached for it yet
        with torch.inference_mode():
            ref = net(x)
        xr = x.clone().requires_grad_(True)
        out = net(xr)
        out.square().sum().backward()
    assert torch.allclose(out.detach(), ref, atol=1e-6)
    assert xr.grad is not None and xr.grad.abs().sum() > 0


@pytest.mark.parametrize("support", ["q_0_100", "all"])
def test_steering_with_autograd_on_gives_the_no_grad_output_and_gradients(rng, support):
    """A plain model(x) (autograd on, trainable parameters) with the banded default support."""
    net = Net()
    tmap = make_map(net, rng)
    x = torch.randn(2, 3, 8, generator=rng)
    with steer(net, tmap, strength=1.0, support=support):
        with torch.no_grad():
            want = net(x)
        got = net(x)
        got.sum().backward()
    assert torch.allclose(got.detach(), want, atol=1e-6)
    assert net.a.weight.grad is not None and net.a.weight.grad.abs().sum() > 0


def test_non_finite_strengths_are_refused(rng):
    net = Net()
    tmap = make_map(net, rng)
    for bad in (float("nan"), float("inf"), {"c": float("-inf")}):
        with pytest.raises(ValueError, match="strength must be a finite number"):
            steer(net, tmap, strength=bad).__enter__()
    assert count_hooks(net) == 0
    with pytest.raises(ValueError, match="finite"):
        tmap.maps["c"].apply(torch.randn(2, 8), float("nan"))


def test_masked_mean_ignores_non_finite_padding_and_refuses_empty_rows():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("nan"), float("inf")]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(x, "mean", mask), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="no real token"):
        pool(x, "mean", torch.tensor([[0, 0, 0]]))
