"""Resumable fits: an activation cache of safetensors shards, keyed by model, prompts, layers, settings."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from act_core import fit_map
from act_core.cache import ActivationCache, CacheError, model_fingerprint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_stack import PATTERN, StackRunner, TinyStack, data  # noqa: E402
from process_helpers import child_env  # noqa: E402


def dies_at(k):
    """``on_batch``: stop the fit before batch ``k``, as a killed process stops."""
    def on_batch(count):
        if count == k:
            raise KeyboardInterrupt("killed")
    return on_batch


def same(a, b):
    assert a.modules == b.modules
    for n in a.modules:
        for k, v in a[n].to_tensors().items():
            assert torch.equal(v, b[n].to_tensors()[k]), (n, k)


def shards(folder):
    return sorted(p for p in Path(folder).glob("*/*.safetensors"))


@pytest.mark.parametrize("procedure", ["simultaneous", "causal_chunked", "causal_reference"])
def test_killed_and_resumed_fit_equals_the_uninterrupted_one(tmp_path, procedure):
    source, target = data()
    model = TinyStack()
    whole = fit_map(StackRunner(model), source, target, PATTERN, procedure=procedure)
    with pytest.raises(KeyboardInterrupt):
        fit_map(StackRunner(model, on_batch=dies_at(10)), source, target, PATTERN, procedure=procedure, cache=tmp_path)
    written = len(shards(tmp_path))
    assert written >= 6 and not list(tmp_path.glob("*/.*.tmp"))  # finished shards only, no partial file
    cache = ActivationCache(tmp_path)
    resumed_runner = StackRunner(model)
    resumed = fit_map(resumed_runner, source, target, PATTERN, procedure=procedure, cache=cache)
    same(resumed, whole)
    assert cache.hits == written and cache.misses == len(shards(tmp_path)) - written
    # a third run computes nothing at all
    idle = StackRunner(model)
    same(fit_map(idle, source, target, PATTERN, procedure=procedure, cache=cache), whole)
    assert cache.misses == 0 and idle.batches == (0 if procedure == "simultaneous" else 1)  # causal: the probe pass


def test_a_hard_kill_leaves_only_whole_shards_and_the_fit_resumes(tmp_path):
    """SIGKILL in the middle of a fit (a separate process): the next run reuses what was written."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(HERE)!r}, {str(HERE.parents[1])!r}]
        import torch
        torch.set_num_threads(1)
        from act_core import fit_map
        from tiny_stack import PATTERN, StackRunner, TinyStack, data

        def on_batch(count):
            if count == 8:
                os.kill(os.getpid(), signal.SIGKILL)

        source, target = data()
        fit_map(StackRunner(TinyStack(), on_batch=on_batch), source, target, PATTERN, cache={str(tmp_path)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], env=child_env(OMP_NUM_THREADS="1"), timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert len(shards(tmp_path)) == 7
    source, target = data()
    cache = ActivationCache(tmp_path)
    runner = StackRunner(TinyStack())
    same(fit_map(runner, source, target, PATTERN, cache=cache), fit_map(StackRunner(TinyStack()), source, target, PATTERN))
    assert (cache.hits, cache.misses, runner.batches) == (7, 5, 5)


def test_changed_prompts_recompute_their_shards_only(tmp_path):
    source, target = data()
    model = TinyStack()
    fit_map(StackRunner(model), source, target, PATTERN, cache=tmp_path)
    changed = list(source)
    changed[5] = [1, 2, 3, 4, 5, 6]  # shard 1 of the source set (batch size 4)
    cache = ActivationCache(tmp_path)
    runner = StackRunner(model)
    same(fit_map(runner, changed, target, PATTERN, cache=cache), fit_map(StackRunner(model), changed, target, PATTERN))
    assert (cache.hits, cache.misses, runner.batches) == (11, 1, 1)


@pytest.mark.parametrize("change", ["pooling", "layers", "weights", "runner setting", "extra key"])
def test_a_changed_setting_is_a_new_key_and_recomputes_everything(tmp_path, change):
    source, target = data()
    fit_map(StackRunner(TinyStack()), source, target, PATTERN, cache=tmp_path)
    model, cache = TinyStack(), ActivationCache(tmp_path)
    pattern, pooling = PATTERN, "mean"
    runner = StackRunner(model)
    if change == "pooling":
        pooling = "max"
    elif change == "layers":
        pattern = r"blocks\.\d+\.norm"
    elif change == "weights":
        with torch.no_grad():
            model.blocks[1].fc.weight[0, 0] += 1.0
    elif change == "runner setting":
        runner.temperature = 0.7  # any plain attribute the runner has is part of the key
    else:
        cache = ActivationCache(tmp_path, key={"dataset": "v2"})
    tmap = fit_map(runner, source, target, pattern, pooling=pooling, cache=cache)
    assert cache.hits == 0 and cache.misses == 12
    assert len(list(tmp_path.iterdir())) == 2  # two keys, two folders (each with its key.json)
    same(tmap, fit_map(StackRunner(model), source, target, pattern, pooling=pooling))


def test_the_method_is_not_part_of_a_simultaneous_key(tmp_path):
    """Pooled activations of the unsteered model do not depend on the estimator: refitting with
    another method reuses every shard."""
    source, target = data()
    fit_map(StackRunner(TinyStack()), source, target, PATTERN, cache=tmp_path)
    cache = ActivationCache(tmp_path)
    mean = fit_map(StackRunner(TinyStack()), source, target, PATTERN, method="mean", cache=cache)
    assert cache.misses == 0 and mean.meta["method"] == "mean"


def test_a_shard_of_another_fit_is_never_reused(tmp_path):
    source, target = data()
    fit_map(StackRunner(TinyStack()), source, target, PATTERN, cache=tmp_path)
    folder = next(p for p in tmp_path.iterdir())
    a, b = sorted(folder.glob("source-*.safetensors"))[:2]
    b.write_bytes(a.read_bytes())  # shard 0's file under shard 1's name
    with pytest.raises(CacheError, match="written for another fit.*never reused"):
        fit_map(StackRunner(TinyStack()), source, target, PATTERN, cache=tmp_path)
    b.write_bytes(b"not safetensors")
    with pytest.raises(CacheError, match="cannot be read.*delete it"):
        fit_map(StackRunner(TinyStack()), source, target, PATTERN, cache=tmp_path)


def test_fingerprint_sees_weights_shapes_and_dtypes():
    a, b = TinyStack(), TinyStack()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.out_norm.bias[3] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(TinyStack().double())


def test_cache_input_errors(tmp_path):
    source, target = data()
    with pytest.raises(ValueError, match="cache needs exact rows"):
        fit_map(StackRunner(TinyStack()), source, target, PATTERN, procedure="causal", cache=tmp_path)
    with pytest.raises(ValueError, match="cache needs exact rows"):
        fit_map(StackRunner(TinyStack()), source, target, PATTERN, sketch=16, cache=tmp_path)
    with pytest.raises(ValueError, match="shard_size"):
        ActivationCache(tmp_path, shard_size=0)
