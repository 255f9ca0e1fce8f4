"""Distributed fitting: 2 gloo processes under torchrun give the single-process maps.

One ``torchrun --standalone --nproc_per_node 2`` job (tests/core/dist_worker.py, a torch-only
tiny model) runs every fit; this process fits the same data alone and compares. Tolerances:
``simultaneous``, ``causal_chunked``, ``causal_reference``, the sketch without compaction and
the cached fit are bit-identical (each rank runs the batches one process runs); the one-pass
``causal`` puts each rank's half of the inputs in one batch instead of all of them, so its
maps agree to float rounding (atol 1e-5).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from act_core import TransportMap, fit_map
from act_core.distributed import Local, Ranks, launched

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_stack import PATTERN, StackRunner, TinyStack, data  # noqa: E402
from process_helpers import child_env  # noqa: E402


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(HERE / "dist_worker.py"), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_accelerate_launch_runs_the_same_fit(tmp_path):
    """``accelerate launch --multi_gpu`` starts the ranks through torch.distributed's launcher (on a
    machine without GPUs the ranks use gloo); the map is the single-process map."""
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port()),  # not the default 29500 another job may hold
                        str(HERE / "dist_worker.py"), str(tmp_path), "quick"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((tmp_path / "rank1.json").read_text())["world"] == 2
    same(TransportMap.load(tmp_path / "simultaneous.safetensors"), single())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single(**kw):
    source, target = data()
    return fit_map(StackRunner(TinyStack()), source, target, PATTERN, support="q_0_100", **kw)


def same(a: TransportMap, b: TransportMap, atol=0.0):
    assert a.modules == b.modules and a.layouts == b.layouts
    for n in a.modules:
        for k, v in a[n].to_tensors().items():
            w = b[n].to_tensors()[k]
            assert (torch.equal(v, w) if atol == 0 else torch.allclose(v.float(), w.float(), atol=atol)), (n, k)


@pytest.mark.parametrize("name, kw, atol", [
    ("simultaneous", dict(procedure="simultaneous"), 0.0),
    ("causal_chunked", dict(procedure="causal_chunked"), 0.0),
    ("causal_reference", dict(procedure="causal_reference"), 0.0),
    ("causal", dict(procedure="causal"), 1e-5),
    ("sketch", dict(procedure="simultaneous", sketch=64), 0.0),
])
def test_two_processes_give_the_single_process_map(job, name, kw, atol):
    got = TransportMap.load(job / f"{name}.safetensors")
    assert got.meta["procedure"] == kw["procedure"] and len(got) == 5
    same(got, single(**kw), atol)


def test_causal_maps_differ_from_simultaneous_so_the_comparison_can_fail(job):
    sim = TransportMap.load(job / "simultaneous.safetensors")
    cau = TransportMap.load(job / "causal_chunked.safetensors")
    assert not torch.allclose(sim["blocks.2.norm"].omega, cau["blocks.2.norm"].omega)


def test_a_cached_distributed_fit_writes_shards_of_both_ranks(job):
    same(TransportMap.load(job / "cached.safetensors"), single())
    shards = sorted(p.name for p in (job / "cache").glob("*/*.safetensors"))
    # 24 source + 24 target inputs in shards of the runner's batch size 4; rank 0 wrote 0-2, rank 1 3-5
    assert len(shards) == 12 and {s.split("-")[1] for s in shards} == {f"{i:06d}" for i in range(6)}


def test_progress_on_rank_zero_and_a_failing_rank_stops_every_rank(job):
    r0, r1 = (json.loads((job / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["progress"] > 0 and r1["progress"] == 0
    for key in ("failed", "failed_causal"):
        assert r0[key] == ("RankFailed: rank 1 of 2 failed: RuntimeError: boom on rank 1. Every rank stops; "
                           "no map is returned or written"), r0[key]
        assert r1[key] == "own: boom on rank 1"


def test_single_process_communicator_and_shards(monkeypatch):
    assert not launched()
    local = Local()
    assert local.shard(list(range(5)), 2).items == [0, 1, 2, 3, 4] and local.is_main
    # the share of each rank: whole units, contiguous, in rank order
    r = object.__new__(Ranks)
    r.world = 3
    items = list(range(10))
    shares = []
    for k in range(3):
        r.rank = k
        s = r.shard(items, 3)
        assert s.items == items[s.start:s.start + len(s.items)] and s.start % 3 == 0
        shares += s.items
    assert shares == items


def test_distributed_without_a_launcher_names_the_fix(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node N"):
        single(distributed=True)
