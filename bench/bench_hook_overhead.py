"""Per-call cost of steering hooks where the hook dispatch dominates (small tensors, many modules).

A stack of ``--blocks`` Linear+LayerNorm blocks (width ``--width``), a Linear-AcT map on every
module, tokens ``1 x 4 x width``; steered / unsteered forward time for the band ``q_0_100``,
the default ``steer`` with support ``all`` (LayerNorms fused at run time) and hooks only, plus
the time of one ``with steer(...)`` attach + remove. Medians over ``--repeats``. It imports
``act_core`` from ``PYTHONPATH``, so two checkouts can be compared by running each in turn::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_hook_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from act_core import TransportMap, fit_transport, steer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = a.width
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.LayerNorm(d)) for _ in range(a.blocks)])
    tmap = TransportMap()
    for i in range(a.blocks):
        for j in (0, 1):
            tmap.add(f"{i}.{j}", fit_transport(torch.randn(64, d), torch.randn(64, d) + 1), "tokens")
    x = torch.randn(1, 4, d)

    def run():
        t0 = time.perf_counter()
        for _ in range(a.calls):
            model(x)
        return (time.perf_counter() - t0) / a.calls

    variants = {"band q_0_100": dict(support="q_0_100"), "steer, support all (fused norms)": dict(support="all"),
                "hooks only, support all": dict(support="all", fuse=False)}
    times = {"unsteered": [], **{k: [] for k in variants}}
    with torch.no_grad():
        run()
        for _ in range(a.repeats):
            times["unsteered"].append(run())
            for k, kw in variants.items():
                with steer(model, tmap, 1.0, **kw):
                    times[k].append(run())
        t0 = time.perf_counter()
        for _ in range(a.calls):
            with steer(model, tmap, 1.0, support="all", fuse=False):
                pass
        cycle = (time.perf_counter() - t0) / a.calls
    base = statistics.median(times["unsteered"])
    print("| variant | median µs per forward | ratio |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v) * 1e6:.0f} | {statistics.median(v) / base:.3f}× |")
    print(f"\nattach + remove of {2 * a.blocks} hooks (`with steer(...)`, check included): {cycle * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
