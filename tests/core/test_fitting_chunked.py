"""Causal fitting in bounded memory (procedure 'causal_chunked'): the causal maps, chunk by chunk."""

import sys
from pathlib import Path

import pytest
import torch

from act_core import count_hooks, fit_map
from act_core.causal_chunks import StateStore, probe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_stack import PATTERN, StackRunner, TinyStack, data  # noqa: E402

LLAMA_LAYERS = r"model\.layers\.\d+\.post_attention_layernorm"


def same(a, b):
    assert a.modules == b.modules
    for n in a.modules:
        for k, v in a[n].to_tensors().items():
            assert torch.equal(v, b[n].to_tensors()[k]), (n, k)


def close(a, b, atol=1e-5):
    for n in a.modules:
        assert torch.allclose(a[n].omega, b[n].omega, atol=atol) and torch.allclose(a[n].beta, b[n].beta, atol=atol), n


def calls_of(module):
    seen = []
    return seen, module.register_forward_pre_hook(lambda m, a: seen.append(1))


@pytest.fixture(scope="module")
def llama():
    from act_core.cli.demo import TokenRunner, build_tiny_llama

    model = build_tiny_llama(0)
    g = torch.Generator().manual_seed(0)
    source = torch.randint(0, 64, (32, 10), generator=g).tolist()
    target = torch.randint(64, 128, (32, 10), generator=g).tolist()
    return model, TokenRunner(model, "llama-tiny", batch_size=8), source, target


def test_equals_the_reference_bit_for_bit_and_the_one_pass_maps_with_fewer_block_runs(llama):
    model, runner, source, target = llama
    first = model.model.layers[0].self_attn
    seen, h = calls_of(first)
    try:
        chunked = fit_map(runner, source, target, LLAMA_LAYERS, procedure="causal_chunked", support="q_0_100")
        n_chunked = len(seen)
        seen.clear()
        ref = fit_map(runner, source, target, LLAMA_LAYERS, procedure="causal_reference", support="q_0_100")
        n_ref = len(seen)
    finally:
        h.remove()
    one = fit_map(runner, source, target, LLAMA_LAYERS, procedure="causal", support="q_0_100")
    same(chunked, ref)
    close(chunked, one)
    sim = fit_map(runner, source, target, LLAMA_LAYERS, procedure="simultaneous", support="q_0_100")
    assert not torch.allclose(sim.maps[sim.modules[2]].omega, chunked.maps[chunked.modules[2]].omega)
    # 8 chunks of 8 inputs; layer 0 runs while fitting layer 0, then once more to record its output,
    # and is stubbed afterwards (+1 for each procedure's probe pass); the reference runs it for every module
    assert n_chunked == 1 + 8 * 2 and n_ref == 1 + 8 * 4
    assert count_hooks(model) == 0 and "forward" not in model.model.layers[0].__dict__
    assert runner.batch_size == 8


def test_states_on_disk_give_the_same_maps_and_are_removed(tmp_path):
    source, target = data()
    runner = StackRunner(TinyStack())
    ram = fit_map(runner, source, target, PATTERN, procedure="causal_chunked", chunk_size=3)
    disk = fit_map(runner, source, target, PATTERN, procedure="causal_chunked", chunk_size=3, state_dir=str(tmp_path))
    same(ram, disk)
    same(ram, fit_map(StackRunner(TinyStack(), batch_size=3), source, target, PATTERN, procedure="causal_reference"))
    assert list(tmp_path.iterdir()) == []


def test_maps_on_the_blocks_themselves_are_applied_once():
    """Residual-stream maps (on each block's output): a stubbed block returns the recorded,
    already transported state, and its own map must not act on it again."""
    source, target = data()
    pattern = r"blocks\.\d+"
    chunked = fit_map(StackRunner(TinyStack()), source, target, pattern, procedure="causal_chunked", support="all")
    ref = fit_map(StackRunner(TinyStack()), source, target, pattern, procedure="causal_reference", support="all")
    same(chunked, ref)


class ReadsEarlier(TinyStack):
    """Uses an earlier block's output after the loop, like an SDXL text encoder's hidden_states[-2]."""

    def __init__(self, read: int):
        super().__init__()
        self.read = read

    def forward(self, ids):
        h = self.embed(ids)
        states = []
        for b in self.blocks:
            h = b(h)
            states.append(h)
        return self.out_norm(h) + 0.5 * states[self.read]


@pytest.mark.parametrize("read, blocks", [(-2, 3), (0, 0)])
def test_a_block_whose_output_is_read_later_ends_the_sequence_and_the_maps_stay_exact(read, blocks):
    """The penultimate block's output read after the loop: the sequence is blocks 0-2 (block 2's
    state is handed on by the stubs, so anything may read it). The first block's output read:
    no sequence at all; every step runs from the input."""
    source, target = data()
    model = ReadsEarlier(read)
    names = [f"blocks.{i}.norm" for i in range(4)] + ["out_norm"]
    chain, why, order = probe(StackRunner(model), names, source[:1])
    assert order == names
    culprit = 2 if read == -2 else 0
    assert f"blocks.{culprit}'s output is read outside blocks.{culprit + 1} (by a torch operation)" in why
    assert (chain.blocks if chain else []) == [f"blocks.{i}" for i in range(blocks)]
    assert probe(StackRunner(TinyStack()), names, source[:1])[0].blocks == [f"blocks.{i}" for i in range(4)]
    messages = []
    chunked = fit_map(StackRunner(model), source, target, PATTERN, procedure="causal_chunked",
                      progress=lambda d, t, m: messages.append(m))
    assert any(("no block sequence" if blocks == 0 else "block sequence blocks (3 blocks)") in m for m in messages)
    same(chunked, fit_map(StackRunner(model), source, target, PATTERN, procedure="causal_reference"))


def test_state_store_round_trip_keeps_structure_devices_and_copies(tmp_path):
    out = (torch.arange(6.0).view(2, 3), None, {"k": torch.ones(2)})
    for folder in (None, tmp_path):
        store = StateStore(folder)
        store.put(0, out)
        back = store.get(0)
        assert torch.equal(back[0], out[0]) and back[1] is None and torch.equal(back[2]["k"], out[2]["k"])
        back[0].add_(1)  # the model may write into what it receives: the store keeps its own copy
        assert torch.equal(store.get(0)[0], out[0])
        store.close()
    assert list(tmp_path.iterdir()) == []


def test_chunked_input_errors():
    source, target = data()

    class NoBatch:
        model, architecture = TinyStack(), "x"

        def run(self, inputs, collector):
            pass

    with pytest.raises(ValueError, match="batch_size"):
        fit_map(NoBatch(), source, target, PATTERN, procedure="causal_chunked")
    with pytest.raises(ValueError, match="belong to procedure 'causal_chunked'"):
        fit_map(StackRunner(TinyStack()), source, target, PATTERN, chunk_size=4)
    with pytest.raises(ValueError, match="sketch needs"):
        fit_map(StackRunner(TinyStack()), source, target, PATTERN, procedure="causal_chunked", sketch=16)
