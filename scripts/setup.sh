#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements into it. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first and alone: pip then takes the pinned CPU wheel instead of resolving a CUDA build for it.
.venv/bin/python -m pip install --disable-pip-version-check -q "torch==2.13.0"
.venv/bin/python -m pip install --disable-pip-version-check -q -r "${1:-requirements.txt}"
