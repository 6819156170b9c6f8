"""Re-create the screenshots of docs/micrographs.md (run under a display, e.g. Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_micrograph_screenshots.py

It does what a user does: opens the "Synthetic micrographs" sample (micrographs with their
CTF, and scored picks), docks the Extract particles widget from the plugin manifest, hides
the weak picks with the score threshold, extracts, and photographs the window at each step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import napari
from make_screenshots import IMAGES, PLUGIN, settle, shoot, wait


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    viewer.open_sample(PLUGIN, "synthetic_micrographs")
    micrographs, picks = viewer.layers
    viewer.dims.set_current_step(0, 0)
    settle(1.0)
    viewer.reset_view()
    shoot(viewer, "micrographs_01_picks.png")

    extract_dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Extract particles")
    widget.micrographs.value, widget.picks.value = micrographs, picks
    widget.box.value, widget.size.value = 64, 32
    widget.use_threshold.value, widget.min_score.value = True, 0.45
    out = Path(tempfile.mkdtemp()) / "particles.star"
    widget.output.value = out
    shoot(viewer, "micrographs_02_threshold.png")

    widget()
    wait(lambda: len(viewer.layers) == 3, timeout=300)
    particles = viewer.layers[-1]
    micrographs.visible = picks.visible = False
    viewer.layers.selection.active = particles
    viewer.window.remove_dock_widget(extract_dock)
    _, vae = viewer.window.add_plugin_dock_widget(PLUGIN, "spatial-VAE")
    vae.input_layer.value = particles  # the new layer is ready for Train
    viewer.dims.set_current_step(0, 5)
    settle(1.0)
    # frame the 32 px particle (hidden layers still count in reset_view's extent)
    side = particles.data.shape[-1] * particles.scale[-1]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9
    camera.center = (side / 2, side / 2)
    camera.zoom = 0.8 * min(viewer.window._qt_viewer.canvas.size) / side
    shoot(viewer, "micrographs_03_particles.png")
    print(f"images in {IMAGES}")
    viewer.close()


if __name__ == "__main__":
    main()
