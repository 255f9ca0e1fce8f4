#!/usr/bin/env bash
# One-call GPU benchmark: full-size SDXL UNet (random weights, real structure), fp16.
#   1. steering overhead at 64² and 128² latents (512² and 1024² images): hooks q_0_100, steer with
#      support all (run-time fused norms), per-pixel maps fused / baked;
#   2. the q_0_100 band eager vs compiled (steer(..., compile=True)), on the eager UNet and with the
#      whole UNet compiled, against the equally compiled unsteered UNet;
#   3. one-pass causal fit vs the reference procedure on 64 prompts (down blocks' norms).
# Output is markdown in the format of bench/RESULTS.md. Needs torch with CUDA and diffusers.
#
#   bash bench/gpu.sh > gpu-results.md                 # the first CUDA device
#   ACT_BENCH_DEVICE=cuda:1 bash bench/gpu.sh          # another device
#   PYTHON=/path/to/python ACT_BENCH_QUICK=1 bash bench/gpu.sh   # fewer repeats (about 5 minutes)
#
# Without a prepared environment, install diffusers without dependencies first, e.g.
#   python -m pip install --no-deps diffusers==0.42.1
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
device=${ACT_BENCH_DEVICE:-cuda}
repeats=${ACT_BENCH_REPEATS:-15}
if [ -n "${ACT_BENCH_QUICK:-}" ]; then repeats=7; fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
common=(--device "$device" --dtype float16 --width full --batch 1 --repeats "$repeats" --fit-prompts 16 --fit-batch 8)
# 1 + 2: overhead and eager vs compiled at 64² (the ratio quoted in the issue) and 128² latents
$py bench/bench_steering.py "${common[@]}" --latent 64 --skip causal
$py bench/bench_steering.py "${common[@]}" --latent 128 --skip causal
# 3: the reference procedure re-runs the model once per module: limit it to the down blocks' norms
[ -n "${ACT_BENCH_QUICK:-}" ] || $py bench/bench_steering.py --device "$device" --dtype float16 --width full \
    --skip overhead compiled --causal-prompts 64 --causal-latent 128 --causal-pattern 'down_blocks\..*norm.*'
