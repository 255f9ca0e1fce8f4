"""Scaling of fitting: time with 1 and 2 processes, memory of the chunked causal fit vs prompts.

    python bench/bench_scale.py processes [--prompts 64] [--repeats 3]
    python bench/bench_scale.py memory [--prompts 32 128 512]

``processes``: the same simultaneous fit (quarter-width SDXL UNet, every norm, 16x16 latents,
batch 8, one thread per process) launched with ``torchrun --nproc_per_node 1`` and ``2``, in
turn; the fit's wall time is measured inside rank 0 (from before ``fit_map`` to after it, the
gather included; process start-up and model building excluded), and whole-launch wall times
are printed too. Maps are checked equal.

``memory``: peak RSS of causal fits on a random 8-layer Llama (transformers, hidden 256,
32 tokens per input), each in a fresh process: the one-pass procedure (every input in one
batch) vs ``causal_chunked`` (chunks of 16, states in memory, or on disk with ``state_dir``),
for growing prompt counts. The maps of the chunked runs are checked against the one-pass maps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]


# -- 1 vs 2 processes ------------------------------------------------------------------------------


def fit_worker(prompts: int, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    from act_core import fit_map
    from act_core.distributed import is_main, launched
    from unet_bench_models import UNetRunner, build_unet

    runner = UNetRunner(build_unet("quarter"), latent=16, batch_size=8)
    src = [(i, 0.0) for i in range(prompts)]
    tgt = [(10_000 + i, 0.5) for i in range(prompts)]
    t0 = time.perf_counter()
    tmap = fit_map(runner, src, tgt, r".*norm.*", distributed=launched())
    took = time.perf_counter() - t0
    if is_main():
        tmap.save(out)
        print(json.dumps({"fit_s": took, "modules": len(tmap)}))


def processes(args) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    rows = {1: [], 2: []}
    walls = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            for n in (1, 2):
                out = os.path.join(d, f"map{n}.safetensors")
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                    str(n), __file__, "fit-worker", str(args.prompts), out],
                                   env=env, capture_output=True, text=True, check=True)
                walls[n].append(time.perf_counter() - t0)
                rows[n].append(json.loads(p.stdout.strip().splitlines()[-1])["fit_s"])
        from act_core import TransportMap

        a, b = TransportMap.load(os.path.join(d, "map1.safetensors")), TransportMap.load(os.path.join(d, "map2.safetensors"))
        same = all(all(__import__("torch").equal(v, b[n].to_tensors()[k]) for k, v in a[n].to_tensors().items())
                   for n in a.modules)
    print(f"\n### Fit time with 1 and 2 processes: quarter-width SDXL UNet, {len(a)} norm modules, "
          f"{args.prompts} + {args.prompts} prompts, 16x16 latents, batch 8, one thread per process, "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores\n")
    print("| processes | fit min s | fit median s | fit max s | fit ratio (median) | launch median s |\n|---|---|---|---|---|---|")
    base = statistics.median(rows[1])
    for n in (1, 2):
        xs = rows[n]
        print(f"| {n} | {min(xs):.2f} | {statistics.median(xs):.2f} | {max(xs):.2f} | {statistics.median(xs) / base:.3f} | "
              f"{statistics.median(walls[n]):.2f} |")
    print(f"\nmaps of 1 and 2 processes bit-identical: {same}")


# -- memory vs prompts ---------------------------------------------------------------------------------

LAYERS = r"model\.layers\.\d+\.post_attention_layernorm"


def _llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def memory_worker(n: int, procedure: str, disk: int, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    from act_core import fit_map
    from act_core.cli.demo import TokenRunner

    model = _llama()
    g = torch.Generator().manual_seed(1)
    src = torch.randint(0, 256, (n, 32), generator=g).tolist()
    tgt = torch.randint(256, 512, (n, 32), generator=g).tolist()
    runner = TokenRunner(model, "llama-bench", batch_size=16)
    with torch.no_grad():
        model(input_ids=torch.tensor(src[:16]))  # the model and one batch: the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kw = {}
    with tempfile.TemporaryDirectory() as d:
        if procedure == "causal_chunked" and disk:
            kw["state_dir"] = d
        t0 = time.perf_counter()
        tmap = fit_map(runner, src, tgt, LAYERS, procedure=procedure, support="all", **kw)
        took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tmap.save(out)
    print(json.dumps({"base_mib": base, "peak_mib": peak, "s": took}))


def memory(args) -> None:
    import torch

    from act_core import TransportMap

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in args.prompts:
            maps = {}
            for procedure, disk, label in (("causal", 0, "one pass (all inputs in one batch)"),
                                           ("causal_chunked", 0, "chunked, states in memory"),
                                           ("causal_chunked", 1, "chunked, states on disk")):
                out = os.path.join(d, f"{n}-{procedure}-{disk}.safetensors")
                p = subprocess.run([sys.executable, __file__, "memory-worker", str(n), procedure, str(disk), out],
                                   env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, check=True)
                r = json.loads(p.stdout.strip().splitlines()[-1])
                maps[label] = TransportMap.load(out)
                rows.append((n, label, r))
            one = maps["one pass (all inputs in one batch)"]
            for label, m in maps.items():
                err = max((m[k].omega - one[k].omega).abs().max().item() for k in one.modules)
                rows[[i for i, r in enumerate(rows) if r[0] == n and r[1] == label][0]][2]["d_omega"] = err
    base = min(r["base_mib"] for _, _, r in rows)
    print(f"\n### Memory of causal fitting vs prompts: random 8-layer Llama (hidden 256, 8 maps), 32 tokens per input, "
          f"chunks of 16, one thread, load average {os.getloadavg()[0]:.2f}\n")
    print(f"model + one batch of 16: {base:.0f} MiB\n")
    print("| prompts per set | procedure | peak MiB | over model + batch MiB | peak / one-pass peak | wall s | "
          "wall / one-pass wall | max abs dω vs one pass |\n|---|---|---|---|---|---|---|---|")
    one = {n: r for n, label, r in rows if label.startswith("one pass")}
    for n, label, r in rows:
        over = r["peak_mib"] - r["base_mib"]
        print(f"| {n} | {label} | {r['peak_mib']:.0f} | {over:.0f} | {r['peak_mib'] / one[n]['peak_mib']:.2f} | "
              f"{r['s']:.1f} | {r['s'] / one[n]['s']:.2f} | {r['d_omega']:.1e} |")
    _ = torch


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "fit-worker":
        return fit_worker(int(sys.argv[2]), sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "memory-worker":
        return memory_worker(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("processes")
    a.add_argument("--prompts", type=int, default=64)
    a.add_argument("--repeats", type=int, default=3)
    m = sub.add_parser("memory")
    m.add_argument("--prompts", type=int, nargs="+", default=[32, 128, 512])
    args = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, loadavg {os.getloadavg()[0]:.2f}")
    processes(args) if args.what == "processes" else memory(args)


if __name__ == "__main__":
    main()
