"""Map file save / load time against the number of modules (is it linear?).

Builds maps of N modules with U units each (random in-range values), then times
``TransportMap.to_bytes`` and ``TransportMap.from_bytes`` (the strict reader, every check on),
wall and CPU seconds, median over repeats, and the cost per module. Usage::

    python bench/bench_mapfile.py                      # 1,000 / 10,000 / 40,000 modules of 4 units
    python bench/bench_mapfile.py --modules 500 5000 --units 640 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from act_core import TransportMap  # noqa: E402
from act_core.transport import BAND_NAMES, UnitTransport  # noqa: E402


def build(n: int, d: int) -> TransportMap:
    g = torch.Generator().manual_seed(0)
    tmap = TransportMap(meta={"architecture": "bench", "method": "linear"})
    for i in range(n):
        bands = torch.sort(torch.randn(len(BAND_NAMES), 2, d, generator=g), dim=1).values
        tmap.add(f"layers.{i}.mlp", UnitTransport(torch.rand(d, generator=g) + 0.5, torch.randn(d, generator=g), bands,
                                                  torch.zeros(d, dtype=torch.uint8)), "tokens")
    return tmap


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", type=int, nargs="+", default=[1000, 10000, 40000])
    p.add_argument("--units", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    print(f"| modules | units each | file MB | save wall s | save CPU s | load wall s | load CPU s | load CPU µs/module |")
    print("|---|---|---|---|---|---|---|---|")
    for n in a.modules:
        tmap = build(n, a.units)
        saves, loads, data = [], [], b""
        for _ in range(a.repeats):
            data, w, c = timed(tmap.to_bytes)
            saves.append((w, c))
            back, w, c = timed(lambda: TransportMap.from_bytes(data))
            loads.append((w, c))
            assert len(back) == n
            del back
        sw, sc = (statistics.median(x) for x in zip(*saves))
        lw, lc = (statistics.median(x) for x in zip(*loads))
        print(f"| {n:,} | {a.units} | {len(data) / 1e6:.1f} | {sw:.2f} | {sc:.2f} | {lw:.2f} | {lc:.2f} | {lc / n * 1e6:.1f} |")


if __name__ == "__main__":
    main()
