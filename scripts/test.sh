#!/usr/bin/env bash
# Set up and run every check: lint, format, types, manifest, docs, and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v xvfb-run >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    bash scripts/install-system-deps.sh
fi
bash scripts/setup.sh dev
export PATH="$PWD/.venv/bin:$PATH"
ruff check src tests benchmarks scripts
ruff format --check src tests benchmarks scripts
mypy
if python -c "import napari" 2>/dev/null; then
    npe2 validate --imports napari-spatial-vae
fi
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
mkdocs build --strict --quiet --site-dir "$site"
python -m pytest -q
