#!/usr/bin/env bash
# Set up, then run the whole test suite offline. Extra arguments go to pytest (e.g. -k templates).
set -euo pipefail
cd "$(dirname "$0")/.."
# vLLM (the CPU build) in its own venv, for the tests that serve a run's adapters on it (tests/test_vllm.py): set up
# beside the tool's own venv, both installs at once (mostly waiting on unpacking), awaited before the tests start.
VLLM_LOG="$(mktemp)"
bash scripts/vllm.sh setup >"$VLLM_LOG" 2>&1 &
VLLM_SETUP=$!
bash scripts/setup.sh requirements-dev.txt
# The browser test drives Debian's chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
wait "$VLLM_SETUP" || { cat "$VLLM_LOG" >&2; echo "vLLM set-up failed (scripts/vllm.sh setup)" >&2; exit 1; }
rm -f "$VLLM_LOG"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
