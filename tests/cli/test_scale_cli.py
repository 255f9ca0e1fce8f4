"""Large fits from the command line: `act-steer lm-fit` under torchrun (2 gloo processes), with a cache."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from act_core.cli import main
from act_core.mapfile import TransportMap
from act_core.llm.adapter import save_lm
from lm_helpers import FRIENDLY, HOSTILE, make_model
from process_helpers import child_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale_cli")
    model, tok = make_model("llama", layers=3)
    save_lm(model, tok, d / "model")
    (d / "src.txt").write_text("\n".join(HOSTILE) + "\n")
    (d / "tgt.txt").write_text("\n".join(FRIENDLY) + "\n")
    return d


def fit_args(tiny, out, *extra):
    return ["lm-fit", "--model", str(tiny / "model"), "--source", str(tiny / "src.txt"), "--target",
            str(tiny / "tgt.txt"), "--layers", "all_ln", "--batch-size", "4", "--out", str(out), *extra]


def test_lm_fit_under_torchrun_writes_the_single_process_map_once(tiny, tmp_path, capsys):
    alone = tmp_path / "alone.safetensors"
    assert main(fit_args(tiny, alone, "--procedure", "causal_chunked")) == 0
    capsys.readouterr()
    out = tmp_path / "two.safetensors"
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "act_core.cli", *fit_args(tiny, out, "--procedure", "causal_chunked", "--cache",
                                                        str(tmp_path / "cache"))],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote") == 1 and r.stderr.count("fitting linear") == 1  # rank 0 only
    a, b = TransportMap.load(alone), TransportMap.load(out)
    assert a.modules == b.modules and len(a) > 3
    for n in a.modules:  # each rank runs the same batches of 4 as one process
        assert torch.equal(a[n].omega, b[n].omega) and torch.equal(a[n].beta, b[n].beta), n
    assert list((tmp_path / "cache").glob("*/*.safetensors"))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"] != [] and \
        not list(tmp_path.glob(".*.tmp"))


def test_chunk_options_need_the_chunked_procedure(tiny, tmp_path, capsys):
    assert main(fit_args(tiny, tmp_path / "x.safetensors", "--chunk-size", "2")) == 2
    assert "belong to --procedure causal_chunked" in capsys.readouterr().err
