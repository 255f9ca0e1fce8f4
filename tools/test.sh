#!/usr/bin/env bash
# Install everything (first run), then run the linter and the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
# the linter first (a few rules that catch real bugs; pyproject.toml [tool.ruff]): seconds
.venv/bin/ruff check --no-cache --quiet .
# two workers by default (CI has 2 cores; the tests run one thread each), whole files per worker so
# module fixtures such as a ComfyUI server start once; ACT_TEST_WORKERS=0 runs in one process.
workers=${ACT_TEST_WORKERS:-2}
xdist=()
if [ "$workers" != "0" ]; then xdist=(-n "$workers" --dist loadfile); fi
set +e
.venv/bin/python -m pytest "${xdist[@]}" "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: that is a failure for us, not a pass.
exit $rc
