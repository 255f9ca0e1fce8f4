"""Compiled steering (steer(..., compile=...)): equal to the eager kernel, removable, traceable."""

import copy

import pytest
import torch

from act_core import TransportMap, count_hooks, fit_transport, steer
from act_core.compiled import _transport, compiled
from act_core.transport import BAND_NAMES

FAST = "aot_eager"  # traces and decomposes like inductor, without generating code (seconds, not minutes)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.gn = torch.nn.GroupNorm(2, 8)
        self.gn2 = torch.nn.GroupNorm(4, 8)
        self.lin = torch.nn.Linear(8, 16)
        self.ln = torch.nn.LayerNorm(16)

    def forward(self, x):
        h = self.gn2(self.gn(self.conv(x)))
        return self.ln(self.lin(h.flatten(2).transpose(1, 2)))


def fitted(d, g, method="linear"):
    return fit_transport(torch.randn(64, d, generator=g), torch.randn(64, d, generator=g) * 0.5 + 1, method)


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(1)
    tmap = TransportMap()
    tmap.add("gn", fitted(8, g), "spatial_mean")   # the reference's spatial-mean shift (hooked when eager)
    tmap.add("gn2", fitted(8, g), "per_pixel")
    tmap.add("lin", fitted(16, g), "tokens")       # not a norm: module runs as usual, transport compiled
    tmap.add("ln", fitted(16, g), "tokens")        # LayerNorm computed inside the compiled function
    return Net().eval(), tmap, torch.randn(2, 3, 6, 6, generator=g)


@pytest.mark.parametrize("support", ["q_0_100", "q_10_90", "all"])
def test_compiled_steering_equals_the_eager_kernel(setup, support):
    net, tmap, x = setup
    with torch.no_grad():
        plain = net(x)
        with steer(net, tmap, 0.8, support=support, fuse=False):
            want = net(x)
        with steer(net, tmap, 0.8, support=support, compile=FAST) as h:
            got = net(x)
            assert count_hooks(net) == 4 and h.attached
        assert count_hooks(net) == 0 and torch.equal(net(x), plain)
    assert (want - plain).abs().max() > 0.1
    # the norms are computed inside the compiled region: float rounding of the normalisation only
    assert torch.allclose(got, want, rtol=1e-5, atol=2e-6), (got - want).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("support", BAND_NAMES[:3] + ("all",))
def test_the_transport_alone_matches_apply_at_the_band_edges(dtype, support):
    """The band test is the strict lo < y < hi of the stored float32 bounds, in every dtype:
    values exactly at a bound and the next values inward and outward. (Half precision is
    transported in float32 here and natively by the eager kernel: equal to a half ulp.)"""
    g = torch.Generator().manual_seed(2)
    t = fitted(6, g)
    t.default_support = support
    y = torch.randn(40, 6, generator=g) * 2
    if support != "all":
        lo, hi = t.band(support)
        edges = torch.stack([lo, hi, torch.nextafter(lo, hi), torch.nextafter(hi, lo), torch.nextafter(lo, lo - 1),
                             torch.nextafter(hi, hi + 1)])
        y = torch.cat([y, edges])
    y = y.to(dtype)
    from act_core.compiled import _Params

    kind, lo, hi, k, c, limit = _Params(t, support, "tokens").get(0.7, dtype, y.device, 2)
    got = compiled(_transport, FAST)(y, kind, lo, hi, k, c, limit)
    want = t.apply(y, 0.7, support, "tokens")
    if support != "all":  # the same values are inside the band
        assert torch.equal(got != y, want != y)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    assert torch.allclose(got.float(), want.float(), **tol)


def test_whole_model_compile_traces_steering_without_graph_breaks(setup):
    net, tmap, x = setup
    model = torch.compile(net, backend=FAST, fullgraph=True)  # fullgraph: a graph break would raise
    with torch.no_grad():
        plain = net(x)
        with steer(net, tmap, 1.0, support="q_0_100", fuse=False):
            want = net(x)
        with steer(net, tmap, 1.0, support="q_0_100", compile=FAST):
            got = model(x)
        assert torch.allclose(got, want, rtol=1e-5, atol=2e-6)
        assert torch.equal(model(x), plain)  # removal: recompiled without steering


def test_lambda_zero_gate_and_copies(setup):
    net, tmap, x = setup
    with torch.no_grad():
        plain = net(x)
        with steer(net, tmap, 0.0, compile=FAST):
            assert torch.equal(net(x), plain)
        # steer only the second row of the Linear's output (a gate makes norms take the plain-then-map path)
        rows = lambda name, y: torch.tensor([False, True]) if name == "lin" else False  # noqa: E731
        with steer(net, tmap.subset(["lin"]), 1.0, compile=FAST, gate=rows):
            gated = net(x)
            twin = copy.deepcopy(net)  # a copy made while steered runs its own, unsteered layers
            assert torch.equal(twin(x), plain)
        with steer(net, tmap.subset(["lin"]), 1.0, fuse=False):
            full = net(x)
    assert torch.equal(gated[0], plain[0]) and torch.allclose(gated[1], full[1], atol=2e-6)
    assert not torch.allclose(gated[1], plain[1])


def test_unsupported_uses_are_refused_with_the_fix(setup):
    net, tmap, x = setup
    t = TransportMap(dict(tmap.maps), dict(tmap.layouts), {"lin": 0}, dict(tmap.meta))
    with pytest.raises(ValueError, match="without compile"):
        steer(net, t, compile=FAST).__enter__()
    with pytest.raises(RuntimeError, match="already replaced"):
        with steer(net, tmap, compile=FAST), steer(net, tmap, compile=FAST):
            pass
    assert count_hooks(net) == 0


def test_inductor_fuses_a_layer_norm_with_its_band_and_equals_eager():
    """The real compiler (C++ on CPU, Triton on CUDA) on one LayerNorm map."""
    g = torch.Generator().manual_seed(4)
    ln = torch.nn.LayerNorm(32).eval()
    tmap = TransportMap()
    model = torch.nn.Sequential(ln)
    tmap.add("0", fitted(32, g), "tokens")
    x = torch.randn(3, 5, 32, generator=g) * 3 + 1
    with torch.no_grad():
        with steer(model, tmap, 1.0, support="q_0_100", fuse=False):
            want = model(x)
        with steer(model, tmap, 1.0, support="q_0_100", compile=True):
            got = model(x)
    assert (want != ln(x)).any()
    assert torch.allclose(got, want, rtol=1e-5, atol=2e-6)


# -- the guarantees of act_core.hookguard hold for the compiled path too ------------------------------


def _reliability():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_reliability_hooks as rel

    return rel


def test_an_interrupt_at_any_point_of_a_compiled_attach_leaves_the_model_as_before(setup, monkeypatch):
    rel = _reliability()
    monkeypatch.setattr(rel, "TRACED", rel.TRACED + ("act_core/compiled.py",))
    net, tmap, x = setup
    from act_core.hookguard import claims

    with torch.no_grad():
        plain = net(x)
    clean = rel.snapshot(net)
    owner = steer(net, tmap, 0.8, compile=FAST)
    owner.attach()
    attached = rel.snapshot(net)
    owner.remove()
    assert attached != clean
    points = 0
    for k in range(1, 100_000):
        fired, _ = rel.interrupted(owner.attach, k)
        state = rel.snapshot(net)
        assert state == clean or (state == attached and owner.attached), f"bytecode {k}: a partial attach"
        owner.remove()
        assert rel.snapshot(net) == clean and claims() == 0
        if not fired:
            break
        points += 1
    assert points > 100
    with torch.no_grad():
        assert torch.equal(net(x), plain)


def test_a_compiled_steering_is_refused_from_a_second_thread_and_copies_carry_none(setup):
    import pickle
    import threading

    from act_core.hookguard import ConcurrentSteeringError, claims

    rel = _reliability()
    net, tmap, x = setup
    clean = rel.snapshot(net)
    inside, release = threading.Event(), threading.Event()

    def first():
        with steer(net, tmap, 0.8, compile=FAST):
            inside.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(30)
        with pytest.raises(ConcurrentSteeringError, match="another thread"):
            steer(net, tmap, compile=FAST).attach()
        assert count_hooks(net) == 4
        assert rel.snapshot(copy.deepcopy(net)) == clean  # copies and pickles carry no replaced forward
        assert rel.snapshot(pickle.loads(pickle.dumps(net))) == clean
    finally:
        release.set()
        t.join(30)
    assert count_hooks(net) == 0 and claims() == 0 and rel.snapshot(net) == clean


def test_a_mask_blends_as_in_the_eager_hooks(setup):
    net, tmap, x = setup
    half = lambda name, y: (torch.arange(y.shape[-1]) % 2).to(y.dtype)  # noqa: E731  weight 0 / 1 per unit
    with torch.no_grad():
        plain = net(x)
        with steer(net, tmap.subset(["lin", "ln"]), 0.8, mask=half, fuse=False):
            want = net(x)
        with steer(net, tmap.subset(["lin", "ln"]), 0.8, mask=half, compile=FAST):
            got = net(x)
        with steer(net, tmap.subset(["lin", "ln"]), 0.8, compile=FAST):
            unmasked = net(x)
    assert (want - plain).abs().max() > 0.1 and (unmasked - want).abs().max() > 0.1
    assert torch.allclose(got, want, rtol=1e-5, atol=2e-6), (got - want).abs().max()
