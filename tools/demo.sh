#!/usr/bin/env bash
# Install everything (first run) and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh demo
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/act-steer demo "$@"
