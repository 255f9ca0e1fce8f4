#!/usr/bin/env bash
# One-call GPU benchmark for an H200 (or any CUDA GPU): full-size SDXL UNet at 1024² (128×128
# latents), fp16, steered vs unsteered vs fused; one-pass causal fit vs the reference procedure on
# 64 prompts. Output has the format of bench/RESULTS.md. Needs torch with CUDA + diffusers.
#   bash bench/gpu_h200.sh > bench/RESULTS-gpu.md
#
# On this workplace's lent H200 (device tool; its image has torch, transformers, safetensors,
# huggingface_hub but not diffusers), prepare here once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1        # .whl/ is git-ignored
# then one device `run` with carry [".whl"] and timeout_s 600 (about 4-6 min expected):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && set -o pipefail &&
#   bash bench/gpu_h200.sh 2>&1 | tee $OUT/gpu_h200.md
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$py bench/bench_steering.py --device cuda --dtype float16 --width full --latent 128 --batch 1 --repeats 15 \
    --fit-prompts 16 --fit-batch 8 --skip causal
$py bench/bench_steering.py --device cuda --dtype float16 --width full --latent 128 --batch 2 --repeats 15 \
    --fit-prompts 16 --fit-batch 8 --skip causal
# the reference procedure re-runs the model once per module: limit it to the down blocks' norms
$py bench/bench_steering.py --device cuda --dtype float16 --width full --skip overhead \
    --causal-prompts 64 --causal-latent 128 --causal-pattern 'down_blocks\..*norm.*'
