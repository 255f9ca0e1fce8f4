#!/usr/bin/env bash
# Install everything (first run), then run the linter and the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
# the linter first (a few rules that catch real bugs; pyproject.toml [tool.ruff]): seconds
.venv/bin/ruff check --no-cache --quiet .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: that is a failure for us, not a pass.
exit $rc
