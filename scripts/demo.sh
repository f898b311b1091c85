#!/usr/bin/env bash
# The main job on the embedded default, offline, on the CPU: set up, prepare the demo model, train both demo
# adapters if they are not there yet, then serve the app (base, stage 1 and stage 2 selectable) and print its URL.
# Extra arguments go to app.py (e.g. --port 7861).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -f runs/demo/stage2/adapter/adapter_model.safetensors ]; then
  .venv/bin/python -m trainer train --config configs/demo.yaml --resume
fi
exec .venv/bin/python app.py "$@"
