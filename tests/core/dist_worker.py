"""Run under ``torchrun`` by tests/core/test_distributed.py: distributed fits of the tiny stack.

    torchrun --standalone --nproc_per_node 2 tests/core/dist_worker.py OUT_DIR [quick]

Rank 0 saves every map in OUT_DIR; every rank writes what it saw (progress calls, the error
of the fit that one rank fails) to ``OUT_DIR/rank<r>.json``. ``quick``: the simultaneous fit only.
"""

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import torch  # noqa: E402

from act_core import fit_map  # noqa: E402
from act_core.distributed import RankFailed, is_main, rank  # noqa: E402
from tiny_stack import PATTERN, StackRunner, TinyStack, data  # noqa: E402

torch.set_num_threads(1)


def main(out: Path, quick: bool) -> None:
    model = TinyStack()
    source, target = data()
    seen = {"progress": 0}

    def progress(done, total, msg):
        seen["progress"] += 1

    fits = {
        "simultaneous": dict(procedure="simultaneous"),
        "causal": dict(procedure="causal"),
        "causal_chunked": dict(procedure="causal_chunked"),
        "causal_reference": dict(procedure="causal_reference"),
        "sketch": dict(procedure="simultaneous", sketch=64),
        "cached": dict(procedure="simultaneous", cache=str(out / "cache")),
    }
    if quick:
        fits = {"simultaneous": fits["simultaneous"]}
    for name, kw in fits.items():
        tmap = fit_map(StackRunner(model), source, target, PATTERN, support="q_0_100", progress=progress,
                       distributed=True, **kw)
        if is_main():
            tmap.save(out / f"{name}.safetensors")
    seen["world"] = int(os.environ["WORLD_SIZE"])
    if quick:
        (out / f"rank{rank()}.json").write_text(json.dumps(seen))
        return
    # rank 1 fails at its second batch: every rank stops, nobody returns a map
    try:
        fit_map(StackRunner(model, fail=(1, 2)), source, target, PATTERN, distributed=True)
        seen["failed"] = None
    except RankFailed as e:
        seen["failed"] = f"RankFailed: {e}"
    except RuntimeError as e:
        seen["failed"] = f"own: {e}"
    # the one-pass causal procedure fails inside the forward pass (rank 1, first batch)
    try:
        fit_map(StackRunner(model, fail=(1, 1)), source, target, PATTERN, procedure="causal", distributed=True)
        seen["failed_causal"] = None
    except RankFailed as e:
        seen["failed_causal"] = f"RankFailed: {e}"
    except RuntimeError as e:
        seen["failed_causal"] = f"own: {e}"
    (out / f"rank{rank()}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] == ["quick"])
