"""Run-time fusion of maps into LayerNorm/GroupNorm calls (act_core.fused_norms via SteerHandle)
and the exact band test of the banded token kernel."""

import pytest
import torch

from act_core import TransportMap, count_hooks, fit_transport, steer


class Tokens(torch.nn.Module):
    def __init__(self, d=16, affine=True):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.norm.bias.normal_()
        self.out = torch.nn.Linear(d, d)

    def forward(self, x):
        return self.out(self.norm(self.lin(x)))


class Convs(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, c, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, c)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_()
        self.head = torch.nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)))


def one_map(d, rng, layout, method="linear", support="all"):
    t = fit_transport(torch.randn(64, d, generator=rng), torch.randn(64, d, generator=rng) * 2 + 1, method, support)
    tmap = TransportMap()
    tmap.add("norm", t, layout, None)
    return tmap


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_both(model, tmap, x, **kw):
    with torch.no_grad():
        with steer(model, tmap, fuse=False, **kw) as h:
            hooked = model(x)
            assert h.fused == []
        with steer(model, tmap, **kw) as h:
            fused = model(x)
            names = list(h.fused)
    return hooked, fused, names


@pytest.mark.parametrize("model_cls, shape, layout, method", [
    (Tokens, (3, 5, 16), "tokens", "linear"),
    (Convs, (2, 3, 6, 6), "per_pixel", "linear"),
    (Convs, (2, 3, 6, 6), "spatial_mean", "mean"),  # ω = 1: the spatial-mean shift is a constant
])
def test_fused_equals_hooks_and_leaves_no_trace(model_cls, shape, layout, method, rng):
    model = model_cls()
    x = torch.randn(*shape, generator=rng)
    tmap = one_map(model.norm.num_channels if isinstance(model.norm, torch.nn.GroupNorm) else 16, rng, layout, method)
    weights = params_of(model)
    with torch.no_grad():
        before = model(x)
    hooked, fused, names = run_both(model, tmap, x, strength=1.3)
    assert names == ["norm"]
    assert not torch.allclose(fused, before, atol=1e-3)  # it steers
    torch.testing.assert_close(fused, hooked, atol=2e-5, rtol=1e-5)  # as the hook does, up to rounding
    assert count_hooks(model) == 0 and "forward" not in model.norm.__dict__
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # never written
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_what_is_not_fused_runs_the_hook_path(rng):
    convs = Convs()
    x = torch.randn(2, 3, 6, 6, generator=rng)
    for tmap, kw in (
        (one_map(8, rng, "spatial_mean"), {}),  # Linear-AcT, spatial mean: the shift depends on the input
        (one_map(8, rng, "per_pixel", support="q_0_100"), {}),  # a band
        (one_map(8, rng, "per_pixel"), {"gate": lambda name, y: True}),  # a gate decides per call
    ):
        hooked, fused, names = run_both(convs, tmap, x, strength=1.0, **kw)
        assert torch.equal(fused, hooked)
        if not kw:
            assert names == []

    class CustomNorm(torch.nn.LayerNorm):  # overrides forward: never fused
        def forward(self, x):
            return super().forward(x) * 1.0

    tokens = Tokens()
    tokens.norm = CustomNorm(16)
    tmap = one_map(16, rng, "tokens")
    xt = torch.randn(2, 3, 16, generator=rng)
    hooked, fused, names = run_both(tokens, tmap, xt)
    assert names == [] and torch.equal(fused, hooked)


def test_someone_elses_forward_is_left_alone(rng):
    model = Tokens()
    calls = []
    original = model.norm.forward

    def theirs(x):
        calls.append(1)
        return original(x)

    model.norm.forward = theirs
    x = torch.randn(2, 3, 16, generator=rng)
    with torch.no_grad(), steer(model, one_map(16, rng, "tokens")) as h:
        model(x)
        assert h.fused == []
    assert calls == [1] and model.norm.__dict__["forward"] is theirs


def test_strength_changes_and_in_place_weight_updates_are_followed(rng):
    model = Tokens()
    tmap = one_map(16, rng, "tokens")
    x = torch.randn(2, 4, 16, generator=rng)
    with torch.no_grad(), steer(model, tmap, strength=1.0) as h:
        first = model(x)
        h.set_strength(0.4)
        second = model(x)
        model.norm.weight.mul_(2.0)  # bumps the parameter's version: cached fused parameters are rebuilt
        third = model(x)
        h.set_strength(0.0)
        off = model(x)
    with torch.no_grad():
        plain = model(x)
        with steer(model, tmap, strength=0.4, fuse=False):
            want = model(x)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(third, want, atol=2e-5, rtol=1e-5)
    assert torch.equal(off, plain)


def test_layer_norm_without_affine_parameters(rng):
    model = Tokens(affine=False)
    x = torch.randn(2, 3, 16, generator=rng)
    hooked, fused, names = run_both(model, one_map(16, rng, "tokens"), x, strength=0.8)
    assert names == ["norm"]
    torch.testing.assert_close(fused, hooked, atol=2e-5, rtol=1e-5)


def test_gradients_still_reach_the_norm_weight(rng):
    model = Tokens()
    x = torch.randn(2, 3, 16, generator=rng)
    grads, tmap = [], one_map(16, rng, "tokens")
    for fuse in (False, True):
        model.zero_grad()
        with steer(model, tmap, fuse=fuse):
            model(x).square().sum().backward()
        grads.append(model.norm.weight.grad.clone())
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


def test_half_precision_that_could_overflow_uses_the_saturating_hook(rng):
    model = Tokens().half()
    t = fit_transport(torch.randn(64, 16, generator=rng), torch.randn(64, 16, generator=rng) * 30000, "linear", "all")
    tmap = TransportMap()
    tmap.add("norm", t, "tokens", None)
    x = (torch.randn(2, 3, 16, generator=rng) * 10).half()
    with torch.no_grad():
        with steer(model.norm, TransportMap({"": t}, {"": "tokens"}, {"": None}, {}), strength=1.0, fuse=False):
            want = model.norm(model.lin(x))
        with steer(model.norm, TransportMap({"": t}, {"": "tokens"}, {"": None}, {}), strength=1.0):
            got = model.norm(model.lin(x))
    assert torch.isfinite(got).all() and torch.equal(got, want)
    # a mild map in float16 is fused and agrees with the hook
    mild = one_map(16, rng, "tokens")
    hooked, fused, names = run_both(model, mild, x)
    assert names == ["norm"]
    torch.testing.assert_close(fused.float(), hooked.float(), atol=2e-2, rtol=1e-2)


# -- the banded kernel's band test is exactly the reference's strict inequality -----------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_band_test_is_the_strict_inequality_at_every_edge(dtype, rng):
    src = torch.randn(200, 6, generator=rng)
    src[:, 5] = 0.25  # constant unit: its band (0.25, 0.25) holds no value
    t = fit_transport(src, torch.randn(200, 6, generator=rng) + 3, "linear")
    lo, hi = (b.to(dtype) for b in t.band("q_0_100"))
    up = lambda v: torch.nextafter(v, torch.full_like(v, float("inf")))  # noqa: E731
    down = lambda v: torch.nextafter(v, torch.full_like(v, float("-inf")))  # noqa: E731
    rows = [lo, hi, up(lo), down(hi), down(lo), up(hi), (lo + hi) / 2,
            torch.full_like(lo, float("inf")), torch.full_like(lo, float("-inf")), torch.full_like(lo, float("nan"))]
    x = torch.stack(rows)[None]  # (1, 10, 6)
    y = t.apply(x, 1.0, "q_0_100")
    lo32, hi32 = t.band("q_0_100")
    inside = (x.float() > lo32) & (x.float() < hi32)  # the reference's test: activations cast to float32
    assert inside[0, 6, :5].all() and not inside[..., 5].any() and not inside[0, 4:6].all()
    same = (y == x) | (torch.isnan(y) & torch.isnan(x))
    if dtype == torch.float16:  # float16 outputs saturate at ±65504 instead of overflowing to ±inf
        big = torch.finfo(dtype).max
        assert torch.equal(y[0, 7], torch.full_like(lo, big)) and torch.equal(y[0, 8], torch.full_like(lo, -big))
        same[0, 7:9] = True
    assert same[~inside].all()  # outside the band (and NaN / inf): bit-identical pass-through
    a, c = t.coefficients(1.0, torch.float64, torch.device("cpu"))
    want = (x.double() * a + c)[inside]
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    torch.testing.assert_close(y.double()[inside], want, atol=tol, rtol=tol)


def test_a_wrapper_added_while_steered_runs_the_plain_layer_after_removal(rng):
    """accelerate-style offload hooks keep the forward they found inside their own wrapper."""
    model = Tokens()
    x = torch.randn(2, 3, 16, generator=rng)
    with torch.no_grad():
        before = model(x)
        with steer(model, one_map(16, rng, "tokens")) as h:
            assert h.fused == ["norm"]
            inner = model.norm.forward
            model.norm.forward = lambda t: inner(t)  # added by someone else while steered
            steered = model(x)
        after = model(x)
    assert not torch.allclose(steered, before, atol=1e-3)
    assert torch.equal(after, before)  # the wrapper stays, but what it wraps is the plain layer again


@pytest.mark.parametrize("fuse", [True, False])
def test_steering_a_compiled_model_and_removing_it(rng, fuse):
    """torch.compile (dynamo; the 'eager' backend needs no compiler) sees steering come and go."""
    model = Tokens()
    tmap = one_map(16, rng, "tokens")
    x = torch.randn(2, 3, 16, generator=rng)
    with torch.no_grad():
        plain = model(x)
        with steer(model, tmap, fuse=False):
            want = model(x)
        compiled = torch.compile(model, backend="eager")
        assert torch.equal(compiled(x), plain)
        with steer(model, tmap, fuse=fuse):
            steered = compiled(x)
        after = compiled(x)
    torch.testing.assert_close(steered, want, atol=2e-5, rtol=1e-5)
    assert torch.equal(after, plain)


def test_one_norm_under_two_names_is_fused_once_and_hooked_once(rng):
    model = Tokens()
    model.alias = model.norm  # the same LayerNorm object, reachable as "norm" and "alias"
    t1 = fit_transport(torch.randn(64, 16, generator=rng), torch.randn(64, 16, generator=rng) + 1, "linear", "all")
    t2 = fit_transport(torch.randn(64, 16, generator=rng), torch.randn(64, 16, generator=rng) * 2, "linear", "all")
    tmap = TransportMap()
    tmap.add("norm", t1, "tokens", None)
    tmap.add("alias", t2, "tokens", None)
    x = torch.randn(2, 3, 16, generator=rng)
    hooked, fused, names = run_both(model, tmap, x)
    assert names == ["norm"]  # the second name keeps a hook after the fused call
    torch.testing.assert_close(fused, hooked, atol=2e-5, rtol=1e-5)
    assert count_hooks(model) == 0 and "forward" not in model.norm.__dict__


def test_a_deep_copy_made_while_steered_runs_its_own_plain_layer(rng):
    import copy

    from act_core import count_hooks

    model = Tokens()
    x = torch.randn(2, 3, 16, generator=rng)
    with torch.no_grad(), steer(model, one_map(16, rng, "tokens")) as h:
        assert h.fused == ["norm"]
        twin = copy.deepcopy(model)
        # the copy carries neither the replaced forward nor any hook
        assert "forward" not in twin.norm.__dict__ and count_hooks(twin) == 0
        twin.norm.weight.mul_(3.0)  # the copy has its own parameters and runs its own plain layer
        got = twin(x)
    with torch.no_grad():
        h = torch.nn.functional.layer_norm(twin.lin(x), (16,), twin.norm.weight, twin.norm.bias, twin.norm.eps)
        want = twin.out(h)
    assert torch.equal(got, want)


def test_a_layer_norm_map_with_layout_auto_on_a_4d_output_uses_the_hook(rng):
    """layout 'auto' reads a 4-D output as (B, C, H, W): on a LayerNorm, whose units are its last
    axis, that is the wrong axis, refused at the first forward by both paths (before: steered
    along dim 1 when H happened to equal the width)."""
    from act_core import MapFileError, count_hooks

    model = torch.nn.Sequential(torch.nn.LayerNorm(4))
    t = fit_transport(torch.randn(64, 4, generator=rng), torch.randn(64, 4, generator=rng) + 1, "mean", "all")
    tmap = TransportMap()
    tmap.add("0", t, "auto", None)
    x = torch.randn(2, 4, 3, 4, generator=rng)  # H == C
    for fuse in (False, True):
        with pytest.raises(MapFileError, match="units are on the last axis"), torch.no_grad():
            with steer(model, tmap, fuse=fuse):
                model(x)
        assert count_hooks(model) == 0
    x3 = torch.randn(2, 5, 4, generator=rng)  # tokens: fused
    hooked, fused, names = run_both(model, tmap, x3)
    torch.testing.assert_close(fused, hooked, atol=2e-5, rtol=1e-5)
