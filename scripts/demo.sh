#!/usr/bin/env bash
# Set up, then run the main job on the embedded default: both QLoRA stages of configs/demo.yaml on the demo model,
# offline, on the CPU. Extra arguments go to `python -m trainer train` (e.g. --set stages.stage1.max_steps=2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m trainer train --config configs/demo.yaml "$@"
