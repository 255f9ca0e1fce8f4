"""End to end on a tiny transformer built from a config: fit, save, load, steer."""

import pytest
import torch

from act_core import ActivationCollector, TransportMap, count_hooks, fit_map, run_until_stop, steer
from act_core.cli import main as cli_main
from act_core.cli.demo import TokenRunner, build_tiny_llama, wasserstein_1d

LAYERS = r"model\.layers\.\d+\.post_attention_layernorm"


@pytest.fixture(scope="module")
def setup():
    model = build_tiny_llama(0)
    g = torch.Generator().manual_seed(0)
    source = torch.randint(0, 64, (64, 10), generator=g).tolist()
    target = torch.randint(64, 128, (64, 10), generator=g).tolist()
    return model, TokenRunner(model, "llama-tiny", batch_size=16), source, target


def pooled(runner, inputs, name):
    col = ActivationCollector(runner.model, [name], stop_after=True)
    with col:
        runner.run(inputs, col)
    return col.take()[name]


def quantile_distance(a, b):
    q = torch.linspace(0.05, 0.95, 19)
    return (torch.quantile(a, q, dim=0) - torch.quantile(b, q, dim=0)).abs().mean().item()


@pytest.mark.parametrize("procedure", ["simultaneous", "causal"])
def test_fit_moves_pooled_activations_toward_target(setup, procedure, tmp_path):
    model, runner, source, target = setup
    ids = torch.tensor(source[:4])
    before = model(input_ids=ids).logits
    tmap = fit_map(runner, source, target, LAYERS, method="linear", procedure=procedure, support="all")
    assert len(tmap) == 4 and tmap.meta["procedure"] == procedure and tmap.architecture == "llama-tiny"
    last = tmap.modules[-1]
    tgt = pooled(runner, target, last)
    d0 = quantile_distance(pooled(runner, source, last), tgt)
    with steer(model, tmap, strength=1.0):
        d1 = quantile_distance(pooled(runner, source, last), tgt)
        steered = model(input_ids=ids).logits
    assert d1 < 0.5 * d0, (d0, d1)
    assert not torch.allclose(steered, before)
    assert count_hooks(model) == 0
    assert torch.equal(model(input_ids=ids).logits, before)
    # the saved and reloaded map steers identically
    back = TransportMap.load(tmap.save(tmp_path / "m.safetensors"))
    with steer(model, back, strength=1.0):
        assert torch.equal(model(input_ids=ids).logits, steered)


def test_causal_fits_on_upstream_steered_activations(setup):
    model, runner, source, target = setup
    sim = fit_map(runner, source, target, LAYERS, procedure="simultaneous", support="all")
    cau = fit_map(runner, source, target, LAYERS, procedure="causal", support="all")
    first, second = sim.modules[0], sim.modules[1]
    assert torch.equal(sim[first].omega, cau[first].omega)  # nothing upstream of the first module
    assert not torch.allclose(sim[second].omega, cau[second].omega)
    # causal module 2 == a simultaneous fit of module 2 with module 1's map applied at λ = 1
    with steer(model, cau.subset([first]), strength=1.0):
        manual = fit_map(runner, source, target, {second: None}, support="all")
    assert torch.allclose(manual[second].omega, cau[second].omega, atol=1e-6)
    assert torch.allclose(manual[second].beta, cau[second].beta, atol=1e-6)


def test_progress_cancel_returns_no_map(setup):
    model, runner, source, target = setup
    seen = []

    def progress(done, total, msg):
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_map(runner, source, target, LAYERS, procedure="causal", progress=progress)
    assert seen == [(0, 4), (1, 4), (2, 4)]
    assert count_hooks(model) == 0


def test_fit_map_input_errors(setup):
    model, runner, source, target = setup
    with pytest.raises(ValueError, match="empty prompt set"):
        fit_map(runner, [], target, LAYERS)
    with pytest.raises(ValueError, match="unknown procedure"):
        fit_map(runner, source, target, LAYERS, procedure="sometimes")
    with pytest.raises(ValueError, match="matched no module"):
        fit_map(runner, source, target, r"model\.layerz\.\d+")


def test_cli_inspect_and_errors(setup, tmp_path, capsys):
    model, runner, source, target = setup
    path = fit_map(runner, source[:8], target[:8], LAYERS, method="mean").save(tmp_path / "m.safetensors")
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "method: mean" in out and "modules: 4" in out
    assert cli_main(["inspect", str(tmp_path / "nope.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_reduces_distance(tmp_path, capsys):
    from act_core.cli.demo import run_llm_demo

    rows = run_llm_demo(out=str(tmp_path), seed=0)
    assert rows[1.0] < rows[0.5] < rows[0.0]
    assert (tmp_path / "demo_map.safetensors").exists()
    assert wasserstein_1d(torch.zeros(3, 2), torch.ones(3, 2)) == 1.0


def test_one_pass_causal_equals_reference_procedure(setup):
    model, runner, source, target = setup
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        fast = fit_map(runner, source, target, LAYERS, procedure="causal", support="q_0_100")
        n_fast = len(calls)
        calls.clear()
        ref = fit_map(runner, source, target, LAYERS, procedure="causal_reference", support="q_0_100")
        n_ref = len(calls)
    finally:
        handle.remove()
    assert fast.modules == ref.modules
    for n in fast.modules:
        assert torch.allclose(fast[n].omega, ref[n].omega, rtol=1e-4, atol=1e-5), n
        assert torch.allclose(fast[n].beta, ref[n].beta, rtol=1e-4, atol=1e-5), n
        assert torch.allclose(fast[n].bands, ref[n].bands, rtol=1e-4, atol=1e-5), n
    # reference: 1 probe pass for the forward order + 4 modules x (source, target) x 4 batches of 16
    assert n_fast == 1 and n_ref == 1 + 4 * 2 * 4
    assert runner.batch_size == 16  # restored


def test_one_pass_causal_needs_a_batchable_runner(setup):
    model, runner, source, target = setup

    class NoBatch:
        def __init__(self):
            self.model, self.architecture = model, "x"

        def run(self, inputs, collector):
            runner.run(inputs, collector)

    with pytest.raises(ValueError, match="causal_reference"):
        fit_map(NoBatch(), source, target, LAYERS, procedure="causal")


def test_one_pass_causal_out_of_memory_names_the_fix_and_leaves_nothing(setup):
    model, runner, source, target = setup
    calls = []

    class OOMAtTheThirdModule:
        def __init__(self):
            self.model, self.architecture, self.batch_size = model, "x", 16

        def run(self, inputs, collector):
            calls.append(self.batch_size)
            module = model.get_submodule("model.layers.1.post_attention_layernorm")

            def boom(*_):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

            handle, saved = module.register_forward_pre_hook(boom), runner.batch_size
            runner.batch_size = self.batch_size
            try:
                runner.run(inputs, collector)
            finally:
                handle.remove()
                runner.batch_size = saved

    oom = OOMAtTheThirdModule()
    with pytest.raises(torch.OutOfMemoryError, match=r"all 128 inputs .* ONE batch.*causal_chunked.*Tried to allocate"):
        fit_map(oom, source, target, LAYERS, procedure="causal")
    assert calls == [128] and oom.batch_size == 16  # one pass over everything; the runner's batch size is restored
    assert count_hooks(model) == 0


def test_bounded_memory_fit_is_close_to_exact(setup):
    model, runner, source, target = setup
    exact = fit_map(runner, source, target, LAYERS, procedure="simultaneous")
    approx = fit_map(runner, source, target, LAYERS, procedure="simultaneous", sketch=64)  # no compaction: wiring
    assert approx.meta["quantile_sketch"] == 64
    for n in exact.modules:
        assert torch.allclose(approx[n].omega, exact[n].omega, atol=0.02, rtol=0.02), n
        assert torch.equal(approx[n].bands[0], exact[n].bands[0])  # min / max kept exactly
    with pytest.raises(ValueError, match="sketch needs"):
        fit_map(runner, source, target, LAYERS, procedure="causal", sketch=16)


class Reordered(torch.nn.Module):
    """named_modules() lists `late` before `early`, but forward runs `early` first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.late = torch.nn.Linear(6, 6)
        self.early = torch.nn.Linear(6, 6)

    def forward(self, x):
        return self.late(torch.tanh(self.early(x)))


class RowRunner:
    def __init__(self, model):
        self.model, self.architecture, self.batch_size = model, "toy", 8

    def run(self, inputs, collector):
        from act_core import run_until_stop

        for i in range(0, len(inputs), self.batch_size):
            run_until_stop(self.model, torch.stack(inputs[i : i + self.batch_size]))


def test_causal_procedures_follow_forward_order_not_listing_order():
    model = Reordered()
    g = torch.Generator().manual_seed(1)
    src = list(torch.randn(24, 6, generator=g))
    tgt = list(torch.randn(24, 6, generator=g) * 0.5 + 2)
    fast = fit_map(RowRunner(model), src, tgt, ["late", "early"], procedure="causal", support="all")
    ref = fit_map(RowRunner(model), src, tgt, ["late", "early"], procedure="causal_reference", support="all")
    assert fast.modules == ["early", "late"] and ref.modules == ["early", "late"]
    for n in ("early", "late"):
        assert torch.allclose(fast[n].omega, ref[n].omega, atol=1e-5) and torch.allclose(fast[n].beta, ref[n].beta, atol=1e-5)


@pytest.mark.parametrize("method, layout", [("linear", "spatial_mean"), ("mean", "per_pixel"),
                                            ("gaussian", "per_pixel"), ("aura", "per_pixel")])
def test_4d_layout_follows_the_reference_per_method(method, layout):
    """Linear-AcT shifts each channel by its transported spatial mean; Mean-AcT, Gaussian and
    AurA act per pixel (Gaussian rescales the spatial pattern by sigma_b / sigma_a)."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.GroupNorm(2, 4))

    class Runner:
        model, architecture, batch_size = conv, "conv", 8

        def run(self, inputs, collector):
            for i in range(0, len(inputs), self.batch_size):
                x = torch.stack([torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(s)) * sc
                                 for s, sc in inputs[i:i + self.batch_size]])
                with torch.no_grad():
                    run_until_stop(conv, x)

    src = [(s, 1.0) for s in range(24)]
    tgt = [(100 + s, 3.0) for s in range(24)]
    tmap = fit_map(Runner(), src, tgt, "1", method=method, support="all")
    assert tmap.layouts["1"] == layout
    if method == "gaussian":
        x = torch.randn(3, 4, 5, 5)
        y = tmap["1"].apply(x, 1.0, "all", layout)
        ratio = (y - y.mean((2, 3), keepdim=True)).std((2, 3)) / (x - x.mean((2, 3), keepdim=True)).std((2, 3))
        assert torch.allclose(ratio, tmap["1"].omega.expand(3, 4), rtol=1e-4)
