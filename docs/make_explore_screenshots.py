"""Re-create the screenshots of docs/explore.md (run under a display, e.g. Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_explore_screenshots.py

Opens the synthetic sample stack as an .mrcs file, trains briefly in the spatial-VAE dock,
then docks "spatial-VAE explore" from the manifest and browses, selects, clusters, averages
and exports, photographing the window at each stage.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import napari
import numpy as np
from make_screenshots import IMAGES, PLUGIN, settle, shoot, wait

from napari_spatial_vae import _layers as L
from napari_spatial_vae.core.simulate import simulate_particles
from napari_spatial_vae.io import write_mrcs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--run", type=Path, help="apply this trained run instead of training")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="spatial-vae-explore-"))
    sim = simulate_particles(1000, size=40, snr=1.0, seed=0)
    stack_path = work / "particles.mrcs"
    write_mrcs(stack_path, sim.images, pixel_size=2.0)

    viewer = napari.Viewer(title="napari: spatial-VAE explore")
    viewer.window.resize(1600, 1150)
    (stack,) = viewer.open(stack_path, plugin=PLUGIN)
    _, trainer = viewer.window.add_plugin_dock_widget(PLUGIN, "spatial-VAE")
    if args.run is not None:  # the same screenshots from a model trained earlier
        assert trainer.load_model(args.run)
        assert trainer.apply_to_layer(stack)
    else:
        trainer.input_layer.value = stack
        trainer.form.epochs.value = args.epochs
        trainer.run_dir.value = work / "run"
        trainer.start_training()
    wait(lambda: not trainer.is_busy)
    viewer.window.remove_dock_widget(trainer.parent() or trainer)

    _, explore = viewer.window.add_plugin_dock_widget(PLUGIN, "spatial-VAE explore")
    viewer.layers.selection.active = viewer.layers[L.POSES]
    shoot(viewer, "explore_01_browse.png")

    # select a band of the latent plot (what a lasso drag does) and step to a particle in it
    xs, ys = explore.plot.xs, explore.plot.ys
    low, high = np.percentile(xs, [70, 95])
    box = np.array([[low, ys.min() - 1], [high, ys.min() - 1], [high, ys.max() + 1],
                    [low, ys.max() + 1]])  # fmt: skip
    explore.plot._lasso_done(box)
    explore.show_index.setValue(3)
    shoot(viewer, "explore_02_select.png")

    explore.average_selection()
    wait(lambda: explore._worker is None)
    settle()
    shoot(viewer, "explore_03_average.png")

    explore.k.value = 4
    explore.cluster()
    explore.average_clusters()
    wait(lambda: explore._worker is None)
    explore.select_cluster(3)
    explore.export_subset(work / "cluster3.star")
    explore.save_movie(work / "clusters.gif")
    shoot(viewer, "explore_04_clusters_export.png")
    print(f"subset and movie in {work}")
    viewer.close()


if __name__ == "__main__":
    main()
