"""Re-create the screenshots of docs/napari.md (run under a display, e.g. Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_screenshots.py

It does what a user does: opens a particle stack file through the plugin's reader, docks the
spatial-VAE widget from the plugin manifest, trains, and photographs the window at each stage.
The model is trained as a user would leave it (the default 40 epochs, not a shortened run):
1000 synthetic 40x40 particles take about three minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_spatial_vae import _layers as L
from napari_spatial_vae.core.simulate import simulate_particles
from napari_spatial_vae.io import write_mrcs

PLUGIN = "napari-spatial-vae"
IMAGES = Path(__file__).resolve().parent / "images"


def wait(condition, timeout: float = 900.0) -> None:
    """Run the Qt event loop until ``condition()`` is true."""
    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the viewer did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out and paint before a screenshot."""
    end = time.monotonic() + seconds
    wait(lambda: time.monotonic() > end)


def dismiss_notifications() -> None:
    """Close napari's toast notifications so they do not cover the canvas."""
    for widget in QApplication.allWidgets():
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def shoot(viewer: napari.Viewer, name: str) -> None:
    dismiss_notifications()
    settle()
    path = IMAGES / name
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="spatial-vae-docs-"))

    # A stack as it would come from a cryo-EM pipeline: an .mrcs file with a pixel size.
    sim = simulate_particles(1000, size=40, snr=1.0, seed=0)
    stack_path = work / "particles.mrcs"
    write_mrcs(stack_path, sim.images, pixel_size=2.0)

    viewer = napari.Viewer(title="napari: spatial-VAE")
    viewer.window.resize(1500, 1150)
    (stack,) = viewer.open(stack_path, plugin=PLUGIN)
    viewer.dims.set_current_step(0, 7)
    viewer.reset_view()
    shoot(viewer, "napari_01_stack_opened.png")

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "spatial-VAE")
    widget.input_layer.value = stack
    widget.form.epochs.value = args.epochs
    widget.form.preview_every.value = 2
    widget.run_dir.value = work / "run"
    widget.start_training()
    wait(lambda: len(widget.loss_plot.train) >= args.epochs // 2)
    viewer.layers.selection.active = viewer.layers[L.PREVIEW]
    viewer.reset_view()
    shoot(viewer, "napari_02_training.png")

    wait(lambda: not widget.is_busy)
    poses = viewer.layers[L.POSES]
    viewer.layers.selection.active = poses
    viewer.dims.set_current_step(viewer.dims.ndim - 3, 7)
    viewer.reset_view()
    shoot(viewer, "napari_03_results.png")

    # The latent map: pick a particle there and the viewer goes to it.
    latent = viewer.layers[L.LATENT_MAP]
    z1 = latent.features["z1"].to_numpy()
    latent.selected_data = {int(np.argmax(z1))}
    viewer.layers.selection.active = latent
    shoot(viewer, "napari_04_latent_map.png")
    viewer.close()


if __name__ == "__main__":
    main()
