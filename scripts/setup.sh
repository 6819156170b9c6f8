#!/usr/bin/env bash
# Create ./.venv with napari-spatial-vae and everything it needs (idempotent).
# torch goes in first and on its own: a plain "torch" requirement on a machine without torch
# would pull a multi-GB CUDA build; 2.13.0 is the CPU wheel this project is developed with.
# Usage: bash scripts/setup.sh [EXTRAS]   (default extras: dev, which brings napari and PyQt6)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==2.13.0"
fi
if [ "$extras" = none ]; then .venv/bin/pip install --quiet -e .; else .venv/bin/pip install --quiet -e ".[${extras}]"; fi
.venv/bin/python -c "import torch, napari_spatial_vae; print(f'napari-spatial-vae {napari_spatial_vae.__version__} with torch {torch.__version__} is ready in .venv')"
