"""Re-create the hold-still screenshots of docs/explore.md (run under a display, e.g. Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_hold_still_screenshots.py \\
        --run RUN --design three-domain --seed 3 --disk 14,21,8

RUN is a model trained on the design (``benchmarks/design_family.py --keep-runs``); its
held-out particles (data seed 1000 + seed, as the benchmark made them) are opened as an .mrcs
file. The dock applies the model, draws the mask on the reference template (a disk over the
body, as a user paints it), and applies again with the body held still.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import napari
import numpy as np
from make_screenshots import IMAGES, PLUGIN, settle, shoot, wait
from qtpy.QtWidgets import QScrollArea

from napari_spatial_vae import _layers as L
from napari_spatial_vae.core.designs import DESIGNS, simulate_design
from napari_spatial_vae.io import write_mrcs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--design", default="three-domain")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--disk", default="14,21,8", help="x,y,r in reference pixels")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="spatial-vae-hold-still-"))
    data = simulate_design(DESIGNS[args.design], 5000, 1000 + args.seed)
    stack_path = work / "particles.mrcs"
    write_mrcs(stack_path, data.images[4000:], pixel_size=None)

    viewer = napari.Viewer(title="napari: spatial-VAE, a part held still")
    viewer.window.resize(1600, 1150)
    (stack,) = viewer.open(stack_path, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "spatial-VAE")
    assert widget.load_model(args.run)
    assert widget.apply_to_layer(stack)
    wait(lambda: not widget.is_busy)
    settle(1.0)

    labels = widget.draw_mask()
    x, y, r = (float(v) for v in args.disk.split(","))
    rows, columns = np.mgrid[: labels.data.shape[0], : labels.data.shape[1]]
    labels.data = ((columns - x) ** 2 + (rows - y) ** 2 <= r * r).astype(np.uint8)
    # the dock scrolled to its Model box (hold still, Draw mask…)
    scroll = widget.findChild(QScrollArea)
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    size = labels.data.shape[0]
    # the row of panels: reference and mask, particles, aligned, reconstructions
    viewer.camera.center = (0.5 * size, 1.2 * size)
    viewer.camera.zoom = 3.2 * 40 / size
    shoot(viewer, "napari_05_hold_still_mask.png")

    assert widget.apply_to_layer(stack)
    wait(lambda: not widget.is_busy)
    settle(1.0)  # the results reset the view once they are shown
    viewer.layers.selection.active = viewer.layers[L.TRAVERSAL]
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    # the panels and, below them, the traversal in the held frame, as large as fits
    (top, left), (bottom, right) = viewer.layers[L.TRAVERSAL].extent.world[:, -2:]
    viewer.camera.center = (0.5 * (top + bottom) - 0.7 * size, 0.5 * (left + right))
    viewer.camera.zoom = 1.75 * 40 / size
    shoot(viewer, "napari_06_hold_still_results.png")
    viewer.close()


if __name__ == "__main__":
    main()
