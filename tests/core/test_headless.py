"""The core must run without any GUI toolkit (CLI, cluster nodes, torchrun workers)."""

import subprocess
import sys

CHECK = """
import sys, pkgutil, importlib
import napari_spatial_vae.core as core
for info in pkgutil.iter_modules(core.__path__):
    importlib.import_module(f"napari_spatial_vae.core.{info.name}")
import napari_spatial_vae.io, napari_spatial_vae.cli
gui = sorted(m for m in sys.modules
             if m.split(".")[0] in {"napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2",
                                    "PySide6", "superqt", "vispy"})
print(",".join(gui))
"""


def test_core_io_and_cli_import_no_gui_toolkit():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
