#!/usr/bin/env bash
# Creates .venv and installs Improbable into it. PyTorch 2.13.0 goes first: on a CPU-only machine that
# takes the CPU wheel, and the package's own `torch>=2.4` is then already satisfied (no CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, improbable" >/dev/null
