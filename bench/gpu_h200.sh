#!/usr/bin/env bash
# One-call GPU benchmark for an H200 (or any CUDA GPU): full-size SDXL UNet at 1024² (128×128
# latents), fp16, steered vs unsteered vs fused; one-pass causal fit vs the reference procedure on
# 64 prompts. Output has the format of bench/RESULTS.md. Needs torch with CUDA + diffusers.
#   bash bench/gpu_h200.sh > bench/RESULTS-gpu.md
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
$py bench/bench_steering.py --device cuda --dtype float16 --width full --latent 128 --batch 1 --repeats 15 \
    --fit-prompts 16 --fit-batch 8 --skip causal
$py bench/bench_steering.py --device cuda --dtype float16 --width full --latent 128 --batch 2 --repeats 15 \
    --fit-prompts 16 --fit-batch 8 --skip causal
# the reference procedure re-runs the model once per module: limit it to the down blocks' norms
$py bench/bench_steering.py --device cuda --dtype float16 --width full --skip overhead \
    --causal-prompts 64 --causal-latent 128 --causal-pattern 'down_blocks\..*norm.*'
