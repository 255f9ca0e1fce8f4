"""Memory of fitting, and the error of the bounded-memory quantile path.

    python bench/bench_memory.py

1. Peak RSS of a simultaneous fit on the quarter-width SDXL UNet (256 norm modules) for
   growing prompt counts, exact samples vs a quantile sketch, each in a fresh subprocess;
   the model alone is the baseline. Fitting memory should be model + O(prompts × units).
2. Error of the sketch (k = 64 … 1024) against the exact sort on 20,000 skewed/bimodal
   samples per set: max |Δω|, max |Δβ| relative to the target's spread, and rows kept.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def child(n: int, sketch: int, fit: bool) -> dict:
    torch.set_num_threads(1)
    from act_core import fit_map
    from unet_bench_models import UNetRunner, build_unet

    unet = build_unet("quarter")
    runner = UNetRunner(unet, latent=16, batch_size=8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    units = 0
    if fit:
        tmap = fit_map(runner, [(i, 0.0) for i in range(n)], [(10_000 + i, 0.5) for i in range(n)], r".*norm.*",
                       sketch=sketch or None)
        units = sum(t.units for t in tmap.maps.values())
    else:
        runner.step(list(range(8)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "sketch": sketch, "fit": fit, "model_mib": base, "peak_mib": peak, "units": units}


def run_child(n, sketch, fit):
    out = subprocess.run([sys.executable, __file__, "--child", str(n), str(sketch), str(int(fit))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sketch_error():
    from act_core import fit_transport
    from act_core.streaming import QuantileSketch, fit_transport_streaming

    g = torch.Generator().manual_seed(0)
    n, d = 20_000, 64
    src = torch.empty(n, d).exponential_(1.0, generator=g)
    sign = torch.randint(0, 2, (n, d), generator=g).float() * 2 - 1
    dst = sign * 2 + torch.randn(n, d, generator=g) * 0.5
    exact = fit_transport(src, dst, "linear")
    spread = dst.std(0)
    print("\n### Bounded-memory quantile path vs exact sort (20,000 samples per set, 64 units)\n")
    print("| k | rows kept (source) | exact rows | max abs dω | max abs dβ / target std | q_0_100 exact |")
    print("|---|---|---|---|---|---|")
    for k in (64, 256, 1024):
        a, b = QuantileSketch(k), QuantileSketch(k)
        for cs, ct in zip(src.split(256), dst.split(256)):
            a.update(cs)
            b.update(ct)
        t = fit_transport_streaming(a, b, "linear")
        dw = (t.omega - exact.omega).abs().max().item()
        db = ((t.beta - exact.beta).abs() / spread).max().item()
        same = bool(torch.equal(t.bands[0], exact.bands[0]))
        print(f"| {k} | {a.rows} | {n} | {dw:.4f} | {db:.4f} | {same} |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), bool(int(sys.argv[4])))))
        return
    print("### Peak RSS of fitting (quarter-width SDXL UNet, 256 norm modules, 16x16 latents, fresh process each)\n")
    base = run_child(8, 0, False)
    print(f"model + one forward (batch 8): {base['peak_mib']:.0f} MiB\n")
    print("| prompts per set | storage | peak MiB | over model | pooled data (2 sets x units x 4 B) MiB |")
    print("|---|---|---|---|---|")
    for n, sk in ((32, 0), (128, 0), (512, 0), (512, 64)):
        r = run_child(n, sk, True)
        data = 2 * n * r["units"] * 4 / 2**20
        print(f"| {n} | {'sketch k=' + str(sk) if sk else 'exact'} | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] - base['peak_mib']:.0f} | {data:.1f} |")
    sketch_error()


if __name__ == "__main__":
    main()
