"""Attaching under attack (issue 13): maps that do not fit the module's real output, interrupts at
every point of attach and remove, copies of steered models, two threads, extreme strengths.

Each class has a test that fails on the code before the fix; interrupts are injected with
``sys.settrace`` at every bytecode of the attach / remove code paths (ours and torch's hook
registration), and the model is compared with a snapshot of every module's hooks and
attributes taken before.
"""

import copy
import dis
import io
import pickle
import signal
import sys
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from act_core import ActivationCollector, MapFileError, SteerHandle, TransportMap, count_hooks, fit_transport, steer
from act_core.bake import bake
from act_core.hookguard import ConcurrentSteeringError, claims
from act_core.transport import BAND_NAMES, OMEGA_LIMIT, STRENGTH_LIMIT, UnitTransport

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(autouse=True)
def nothing_left_claimed():
    """Every test leaves no claim and the SIGINT handler as it found it."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    assert claims() == 0, "a test left a model claimed (hooks not removed)"
    assert signal.getsignal(signal.SIGINT) is handler


def unit_map(d, rng, layout="tokens", index=None, name="m", support="all", method="linear"):
    tmap = TransportMap()
    tmap.add(name, fit_transport(torch.randn(64, d, generator=rng), torch.randn(64, d, generator=rng) * 2 + 1, method,
                                 support), layout, index)
    return tmap


class Pair(torch.nn.Module):
    """Returns a tuple of two tensors, or (tensor, None)."""

    def __init__(self, second=True):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.second = second

    def forward(self, x):
        y = self.lin(x)
        return y, (y * 2 if self.second else None)


class Opaque(torch.nn.Module):
    """A module whose width no attribute tells (a custom block)."""

    def __init__(self, width):
        super().__init__()
        self.inner = torch.nn.Linear(4, width)

    def forward(self, x):
        return torch.tanh(self.inner(x))


class Holder(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        out = self.block(x)
        return out[0] if isinstance(out, tuple) else out


def _names(table):
    return [getattr(v, "__qualname__", type(v).__name__) for v in table.values()]


def snapshot(model):
    """Every module's hooks and instance attributes (what 'exactly as before' compares)."""
    return [(n, sorted(m.__dict__), _names(m._forward_hooks), _names(m._forward_pre_hooks),
             len(m._forward_hooks_with_kwargs), len(m._forward_hooks_always_called)) for n, m in model.named_modules()]


# -- output index, layout, width, names ------------------------------------------------------------------------------

@pytest.mark.parametrize("case, module, index, match", [
    ("index past the tuple", Pair(), 5, "returns a tuple of 2 items but the map steers item 5"),
    ("index at None", Pair(second=False), 1, "item 1 of its output is NoneType, not a tensor"),
    ("index on a tensor output", Opaque(4), 2, "returns a tensor but the map steers item 2"),
])
def test_an_output_index_that_does_not_fit_is_refused_before_anything_changes(case, module, index, match, rng):
    """Before: an IndexError / AttributeError from inside the forward (or silently ignored)."""
    model = Holder(module)
    tmap = unit_map(4, rng, index=index, name="block")
    x = torch.randn(3, 4, generator=rng)
    with torch.no_grad():
        before, state = model(x), snapshot(model)
        with pytest.raises(MapFileError, match=match):  # with a probe forward: before anything is attached
            tmap.check_model(model, probe=lambda: model(x))
        assert snapshot(model) == state
        with pytest.raises(MapFileError, match=match + ".*nothing was steered"):  # without: at the first forward
            with steer(model, tmap):
                model(x)
        assert snapshot(model) == state and torch.equal(model(x), before) and claims() == 0


def test_a_tensor_module_with_a_tuple_index_is_refused_by_its_type(rng):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(MapFileError, match="is a Linear, which returns a tensor, but the map steers item 3"):
        steer(model, unit_map(4, rng, index=3, name="0"))
    assert count_hooks(model) == 0


@pytest.mark.parametrize("fuse", [False, True])
def test_a_tokens_map_on_a_channel_first_module_is_never_applied_along_the_last_axis(fuse, rng):
    """Before: a conv/GroupNorm output (B, C, H, W) with W == C passed and was steered along W."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1))
    with pytest.raises(MapFileError, match="is a Conv2d .*layout 'tokens' steers the last axis"):
        steer(conv, unit_map(6, rng, name="0"), fuse=fuse)  # refused by the module type, nothing attached
    norm = torch.nn.Sequential(torch.nn.GroupNorm(2, 6))
    x = torch.randn(2, 6, 5, 6, generator=rng)  # W == C == 6
    with torch.no_grad():
        before, state = norm(x), snapshot(norm)
        with pytest.raises(MapFileError, match="GroupNorm whose units are on axis 1 .*'tokens' would steer the last"):
            with steer(norm, unit_map(6, rng, name="0"), fuse=fuse):
                norm(x)
        assert snapshot(norm) == state and torch.equal(norm(x), before)
        norm.train(False)
        with pytest.raises(MapFileError, match="units are on axis 1"):
            unit_map(6, rng, name="0").check_model(norm, probe=lambda: norm(x))


def test_a_spatial_map_on_a_channel_last_module_is_refused(rng):
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(MapFileError, match="is a Linear .*layout 'spatial_mean' steers axis 1"):
        steer(lin, unit_map(4, rng, layout="spatial_mean", name="0"))


def test_a_module_whose_width_no_attribute_tells_is_checked_by_a_probe_or_at_its_first_forward(rng):
    """Before: check_model passed any width for such modules."""
    model = Holder(Opaque(5))
    tmap = unit_map(3, rng, name="block")
    x = torch.randn(2, 4, generator=rng)
    tmap.check_model(model)  # the type alone cannot tell
    with pytest.raises(MapFileError, match="outputs 5 units on axis -1 .* but the map has 3"):
        tmap.check_model(model, probe=lambda: model(x))
    assert count_hooks(model) == 0
    with pytest.raises(MapFileError, match="outputs 5 units"), torch.no_grad(), steer(model, tmap):
        model(x)
    assert count_hooks(model) == 0
    # a probe that never reaches a mapped module says so
    with pytest.raises(MapFileError, match="did not reach 1 mapped module"):
        tmap.check_model(model, probe=lambda: None)


def test_a_module_name_that_reaches_a_raising_property_is_a_clear_error(rng):
    """Before: the property's bare RuntimeError escaped check_model / steer."""

    class Lazy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        @property
        def blocks(self):
            raise RuntimeError("weights not loaded yet")

    model = Lazy()
    tmap = unit_map(4, rng, name="blocks.0")
    for call in (lambda: tmap.check_model(model), lambda: steer(model, tmap), lambda: bake(model, tmap, 1.0)):
        with pytest.raises(MapFileError, match="'blocks.0' not found .*reading 'blocks' raised RuntimeError: weights not"):
            call()
    with pytest.raises(MapFileError, match="'lin.weight' is a Parameter, not a module"):
        unit_map(4, rng, name="lin.weight").check_model(model)
    assert count_hooks(model) == 0


# -- interrupts at every point ---------------------------------------------------------------------------------------------

TRACED = ("act_core/hooks.py", "act_core/hookguard.py", "torch/utils/hooks.py")
TRACED_TORCH = {"register_forward_hook", "__setattr__", "__delattr__", "__getattr__"}


class Interrupt:
    """Interrupt the attach / remove code paths (ours and torch's hook registration) at their k-th point.

    ``mode="raise"``: raise KeyboardInterrupt before the k-th bytecode (any exception at any
    point). ``mode="signal"``: send a real SIGINT, through the installed handler, at the k-th
    point where CPython (3.11+) delivers signals: a function's start, right after a call, a
    backward jump (its eval-breaker checks; between other bytecodes a Ctrl-C waits).
    """

    _CALLS = {"CALL", "CALL_FUNCTION_EX", "PRECALL", "CALL_KW"}
    _JUMPS_BACK = {"JUMP_BACKWARD", "POP_JUMP_BACKWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_FALSE",
                   "POP_JUMP_BACKWARD_IF_NONE", "POP_JUMP_BACKWARD_IF_NOT_NONE"}

    def __init__(self, k, mode):
        self.k, self.mode, self.n, self.fired = k, mode, 0, False
        self.last = {}  # frame -> name of the bytecode it ran last

    def calls(self, frame, event, arg):
        path = frame.f_code.co_filename.replace("\\", "/")
        if path.endswith(TRACED) or (path.endswith("torch/nn/modules/module.py") and frame.f_code.co_name in TRACED_TORCH):
            frame.f_trace_opcodes = True
            return self.step
        return None

    def _op(self, frame):
        return dis.opname[frame.f_code.co_code[frame.f_lasti]]

    def step(self, frame, event, arg):
        if event != "opcode" or self.fired:
            return self.step
        op = self._op(frame)
        prev, self.last[id(frame)] = self.last.get(id(frame)), op
        if self.mode == "signal" and not (op == "RESUME" or prev in self._CALLS or op in self._JUMPS_BACK):
            return self.step
        self.n += 1
        if self.n == self.k:
            self.fired = True
            if self.mode == "raise":
                raise KeyboardInterrupt(f"injected at bytecode {self.k}")
            signal.raise_signal(signal.SIGINT)  # the handler runs here, as at the eval-breaker check
        return self.step


def interrupted(fn, k, mode="raise"):
    """Run ``fn`` with an interrupt at its k-th traced bytecode: (fired, KeyboardInterrupt raised)."""
    it = Interrupt(k, mode)
    raised = False
    sys.settrace(it.calls)
    try:
        fn()
    except KeyboardInterrupt:
        raised = True
    finally:
        sys.settrace(None)
    return it.fired, raised


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 8)
        self.b = Pair()
        self.b.lin = torch.nn.Linear(8, 8)
        self.c = torch.nn.LayerNorm(8)

    def forward(self, x):
        h, _ = self.b(self.a(x))
        return self.c(h)


def net_map(rng):
    tmap = TransportMap()
    for name, idx in (("a", None), ("b", 0), ("c", None)):
        tmap.add(name, fit_transport(torch.randn(32, 8, generator=rng), torch.randn(32, 8, generator=rng) + 2,
                                     support="all"), "tokens", idx)
    return tmap


def _scenario(what, rng):
    net, tmap = Net(), net_map(rng)
    x = torch.randn(2, 3, 8, generator=rng)
    with torch.no_grad():
        plain = net(x)
    clean = snapshot(net)
    if what == "collector":
        owner = ActivationCollector(net, {"a": None, "b": 0})
    else:
        owner = SteerHandle(net, tmap, fuse=(what != "attach, hooks only"))
    owner.attach()
    attached = snapshot(net)
    owner.remove()
    return net, x, plain, clean, attached, owner


@pytest.mark.parametrize("what", ["attach, fused norm", "attach, hooks only", "collector"])
def test_an_exception_at_any_point_of_attaching_leaves_the_model_as_before(what, rng):
    """Before: a KeyboardInterrupt landing while hooks were attached left hooks on some modules."""
    net, x, plain, clean, attached, owner = _scenario(what, rng)
    points = 0
    for k in range(1, 100_000):
        fired, raised = interrupted(owner.attach, k)
        state = snapshot(net)
        # all or nothing: nothing, or (an interrupt after attach() completed, on its return) everything
        assert state == clean or (state == attached and owner.attached), f"bytecode {k}: a partial attach"
        owner.remove()
        assert snapshot(net) == clean and claims() == 0
        with torch.no_grad():
            assert torch.equal(net(x), plain), k
        if not fired:
            break
        points += 1
    assert points > 100


@pytest.mark.parametrize("fuse", [True, False])
def test_an_exception_at_any_point_of_removing_leaves_all_or_nothing(fuse, rng):
    net, x, plain, clean, attached, owner = _scenario("attach, fused norm" if fuse else "attach, hooks only", rng)
    points = 0
    for k in range(1, 100_000):
        owner.attach()
        fired, raised = interrupted(owner.remove, k)
        state = snapshot(net)
        assert state == clean or (state == attached and owner.attached), f"bytecode {k} of remove(): a partial removal"
        owner.remove()  # a second remove() finishes whatever the first did not start
        assert snapshot(net) == clean and claims() == 0 and not owner.attached
        if not fired:
            break
        points += 1
    assert points > 50


@pytest.mark.parametrize("what", ["with steer, fused norm", "with steer, hooks only", "remove"])
def test_ctrl_c_at_any_point_never_leaves_a_hook_and_is_never_lost(what, rng):
    """A real SIGINT at every bytecode of ``with steer(...)`` (attach, steered forward, removal) or
    of ``remove()``: the model ends exactly as before and the KeyboardInterrupt always arrives."""
    net, x, plain, clean, attached, owner = _scenario("attach, hooks only" if "hooks only" in what else "attach, fused norm",
                                                     rng)

    def with_steer():
        with owner, torch.no_grad():
            net(x)

    points = 0
    for k in range(1, 100_000):
        if what == "remove":
            owner.attach()
        fired, raised = interrupted(owner.remove if what == "remove" else with_steer, k, mode="signal")
        assert snapshot(net) == clean, f"a Ctrl-C at bytecode {k} left the model changed"
        assert claims() == 0 and not owner.attached
        assert raised == fired, f"a Ctrl-C at bytecode {k} was {'lost' if fired else 'invented'}"
        if not fired:
            break
        points += 1
    assert points > 50
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    with torch.no_grad(), steer(net, net_map(rng)):
        assert not torch.equal(net(x), plain)


# -- copies ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse", [True, False])
def test_a_copy_made_while_steered_carries_no_hooks(fuse, rng):
    """Before: copy.deepcopy of a model inside `with steer(...)` kept its hooks forever."""
    net, tmap = Net(), net_map(rng)
    x = torch.randn(2, 3, 8, generator=rng)
    with torch.no_grad():
        plain = net(x)
        with steer(net, tmap, fuse=fuse):
            steered = net(x)
            twin = copy.deepcopy(net)
            shallow = copy.copy(net.c)
            buf = io.BytesIO()
            torch.save(net, buf)  # before: the hook closures made this fail to pickle
            pickled = pickle.loads(pickle.dumps(net.a))
            assert torch.equal(net(x), steered)  # the original is still steered
        for m in (twin, shallow, pickled):
            assert count_hooks(m) == 0 and "__getstate__" not in m.__dict__ and "forward" not in m.__dict__
        assert torch.equal(twin(x), plain)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert count_hooks(loaded) == 0 and torch.equal(loaded(x), plain)
    assert count_hooks(net) == 0 and all("__getstate__" not in m.__dict__ for m in net.modules())


def test_a_collector_copy_records_nothing(rng):
    net = Net()
    col = ActivationCollector(net, ["a"])
    with col:
        twin = copy.deepcopy(net)
        twin(torch.randn(1, 2, 8))
    with pytest.raises(RuntimeError, match="recorded no activation"):
        col.take()


# -- threads ---------------------------------------------------------------------------------------------------------------

def test_steering_one_model_from_two_threads_is_refused_with_the_fix(rng):
    """Before: outputs were silently mixed (24 of 114 matched) or 'forward is already replaced'."""
    net, tmap = Net(), net_map(rng)
    inside, release, errors = threading.Event(), threading.Event(), []

    def first():
        with steer(net, tmap):
            with steer(net, net_map(rng), strength=0.5):  # the same thread may nest (e.g. two maps)
                pass
            inside.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(30)

        def second():
            try:
                with steer(net, net_map(rng), strength=0.5):
                    pass
            except ConcurrentSteeringError as e:
                errors.append(str(e))

        t2 = threading.Thread(target=second)
        t2.start()
        t2.join(30)
        assert len(errors) == 1 and "another thread" in errors[0] and "copy.deepcopy(model)" in errors[0]
        assert count_hooks(net) == 3  # the first thread's steering is untouched
        with pytest.raises(ConcurrentSteeringError):  # this (main) thread is another thread too
            steer(net, tmap).attach()
        assert count_hooks(net) == 3
    finally:
        release.set()
        t.join(30)
    assert count_hooks(net) == 0 and claims() == 0
    with steer(net, tmap):  # free again once the first thread is done
        pass


def test_one_copy_per_thread_steers_concurrently_and_exactly(rng):
    base, tmap = Net(), net_map(rng)
    xs = [torch.randn(2, 3, 8, generator=rng) for _ in range(6)]
    strengths = [0.25, 0.5, 1.0, 1.5]
    want = {}
    with torch.no_grad():
        for s in strengths:
            with steer(base, tmap, strength=s):
                want[s] = [base(x) for x in xs]
    got, errors = {}, []

    def worker(s):
        try:
            model = copy.deepcopy(base)
            with torch.no_grad(), steer(model, tmap, strength=s):
                got[s] = [model(x) for x in xs for _ in range(5)][::5]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in strengths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for s in strengths:
        assert all(torch.equal(a, b) for a, b in zip(got[s], want[s])), s
    assert claims() == 0


# -- strengths ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [1e30, 1e38, -1e30, STRENGTH_LIMIT * 1.001, float("nan"), float("inf")])
def test_huge_or_non_finite_strengths_are_refused_everywhere(lam, rng):
    """Before: finite but huge strengths gave inf / NaN in apply (float32 and float16 with a band),
    and bake wrote NaN into the weights."""
    t = unit_map(4, rng, support="q_0_100")["m"]
    for dtype in (torch.float32, torch.float16):
        with pytest.raises(ValueError, match="strength"):
            t.apply(torch.randn(3, 4).to(dtype), lam, "q_0_100")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    tmap = unit_map(4, rng, name="0")
    weights = model[0].weight.clone()
    with pytest.raises(ValueError, match="strength"):
        steer(model, tmap, strength=lam)
    with pytest.raises(ValueError, match="strength"):
        bake(model, tmap, lam)
    with pytest.raises(ValueError, match="strength"):
        steer(model, tmap).set_strength({"0": lam})
    assert count_hooks(model) == 0 and torch.equal(model[0].weight, weights)


@settings(max_examples=120, **SETTINGS)
@given(
    d=st.integers(1, 6),
    omega=st.floats(-OMEGA_LIMIT, OMEGA_LIMIT, width=32),
    beta=st.floats(-1e15, 1e15),
    lam=st.floats(-STRENGTH_LIMIT, STRENGTH_LIMIT),
    scale=st.sampled_from([1.0, 1e3, 1e6]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    support=st.sampled_from(["all", "q_0_100", "q_40_60"]),
    layout=st.sampled_from(["tokens", "spatial_mean", "per_pixel"]),
)
def test_every_map_in_range_at_every_strength_in_range_gives_finite_outputs(d, omega, beta, lam, scale, dtype, support,
                                                                             layout):
    g = torch.Generator().manual_seed(d)
    bands = torch.sort(torch.randn(len(BAND_NAMES), 2, d, generator=g) * scale, dim=1).values
    t = UnitTransport(torch.full((d,), omega), torch.full((d,), beta), bands, torch.zeros(d, dtype=torch.uint8),
                      "linear", support)
    x = (torch.randn(2, d, 3, 2, generator=g) * scale).clamp(-6e4, 6e4).to(dtype)
    if layout == "tokens":
        x = x.transpose(1, 3)
    y = t.apply(x, lam, support, layout)
    assert y.dtype == dtype and bool(torch.isfinite(y).all()), (omega, beta, lam)
