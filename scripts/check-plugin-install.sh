#!/usr/bin/env bash
# The napari user's install path, checked in a throw-away venv: napari first (with a Qt
# binding, as a user has it), then this plugin WITHOUT extras (napari's plugin manager installs
# none), then the manifest validated with its imports and a particle stack opened through the
# reader. Catches a base dependency missing from pyproject.toml.
# Usage: bash scripts/check-plugin-install.sh [VENV_DIR]   (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
    venv="$1"
else
    # a throw-away venv (about 2 GB with torch and Qt): removed on exit, so repeated CI runs
    # on one machine do not fill its disk
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    venv="$scratch/plugin-venv"
fi
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet "torch==2.13.0"
"$py" -m pip install --quiet "napari>=0.5" PyQt6
"$py" -m pip install --quiet .
"$venv/bin/npe2" validate --imports napari-spatial-vae
"$py" - <<'PY'
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
from npe2 import PluginManager, read

folder = tempfile.TemporaryDirectory()
stack = Path(folder.name) / "particles.mrcs"
with mrcfile.new(stack) as mrc:
    mrc.set_data(np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32))
    mrc.voxel_size = 1.5
# the same discovery napari does: entry point -> manifest -> reader command
PluginManager.instance().discover()
((data, kwargs, kind),) = read([str(stack)], stack=False, plugin_name="napari-spatial-vae")
assert kind == "image" and tuple(np.shape(data)) == (3, 16, 16), (kind, np.shape(data))
print(f"plugin install check: manifest valid, reader opened {stack.name} as {kind} {np.shape(data)}")
PY
