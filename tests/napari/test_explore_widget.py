"""The explore dock on simulated particles with their true poses."""

from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest
import starfile

from napari_spatial_vae import _layers as L
from napari_spatial_vae._explore_widget import AVERAGES, ExploreWidget
from napari_spatial_vae._latent_plot import lasso_polygon, points_in_polygon
from napari_spatial_vae.core.simulate import render_particles, simulate_particles

SIZE = 32


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    sim = simulate_particles(400, size=SIZE, snr=1.0, seed=8)
    path = tmp_path_factory.mktemp("explore") / "stack.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(sim.images)
        mrc.set_image_stack()
        mrc.voxel_size = 1.5
    return sim, path


def add_truth_layers(viewer, sim, path):
    """The particle layer and a poses layer made from the true poses (z1 = conformation)."""
    viewer.add_image(sim.images, name="stack", metadata={L.META_KEY: {"path": str(path)}})
    n = len(sim.images)
    columns = {
        "theta": sim.theta, "dx": sim.shift_px[:, 0], "dy": sim.shift_px[:, 1],
        "z1": sim.conformation, "z2": np.random.default_rng(0).normal(0, 0.1, n),
    }  # fmt: skip
    results = L.InferenceResults(
        columns=columns, image_shape=(SIZE, SIZE), pixel_size=1.5, source="stack",
        source_path=str(path),
    )  # fmt: skip
    for layer_data in (L.poses_layer(results), L.latent_map_layer(results)):
        viewer._add_layer_from_data(*layer_data)


def correlation(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_points_in_polygon_and_straight_drags_select_boxes():
    x = np.array([0.5, 1.5, 0.5, -0.1])
    y = np.array([0.5, 0.5, 1.5, 0.2])
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    np.testing.assert_array_equal(points_in_polygon(x, y, square), [True, False, False, False])
    triangle = np.array([[0, 0], [3, 0], [0, 3]], dtype=float)
    np.testing.assert_array_equal(points_in_polygon(x, y, triangle), [True, True, True, False])
    straight = np.array([[0, 0], [0.5, 0.51], [1, 1]])
    np.testing.assert_array_equal(lasso_polygon(straight), [[0, 0], [1, 0], [1, 1], [0, 1]])
    curved = np.array([[0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(lasso_polygon(curved), curved)


def test_select_cluster_average_export(make_napari_viewer, qtbot, truth, tmp_path):
    sim, path = truth
    viewer = make_napari_viewer()
    add_truth_layers(viewer, sim, path)
    widget = ExploreWidget(viewer)
    assert widget.poses is viewer.layers[L.POSES]
    assert widget.particles_choice.value is viewer.layers["stack"]
    assert len(widget.plot.xs) == 400

    # a lasso in the plot: z1 (x axis) between 0.45 and 0.55
    box = np.array([[0.45, -1], [0.55, -1], [0.55, 1], [0.45, 1]])
    widget.plot._lasso_done(box)
    expected = np.flatnonzero((sim.conformation > 0.45) & (sim.conformation < 0.55))
    np.testing.assert_array_equal(widget.selection, expected)
    assert f"{len(expected)} of 400 particles selected" in widget.count_label.text()
    assert viewer.dims.current_step[0] == expected[0]  # the particle layer jumped there
    widget.show_index.setValue(2)
    assert viewer.dims.current_step[0] == expected[1]

    worker = widget.average_selection()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    layer = next(layer for layer in viewer.layers if layer.name.startswith(AVERAGES))
    assert f"{len(expected)} particles, FRC" in layer.name and "Å" in layer.name
    template = render_particles(np.array([0.5]), np.zeros(1), np.zeros((1, 2)), np.zeros(1), SIZE)
    assert correlation(layer.data, template[0]) >= 0.97
    assert layer.metadata[L.META_KEY]["explore"]["counts"] == [len(expected)]

    labels = widget.cluster(k=3, method="kmeans")
    assert labels is not None and sorted(set(labels)) == [0, 1, 2]
    np.testing.assert_array_equal(viewer.layers[L.POSES].features["cluster"], labels)
    np.testing.assert_array_equal(viewer.layers[L.LATENT_MAP].features["cluster"], labels)
    assert widget.colour_choice.value == "cluster"
    worker = widget.average_clusters()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    layers = [layer for layer in viewer.layers if layer.name.startswith(AVERAGES)]
    assert len(layers) == 1 and layers[0].name == f"{AVERAGES}: 3 clusters"
    assert layers[0].data.shape == (SIZE, 3 * SIZE + 2)
    assert widget.save_movie(tmp_path / "clusters.gif")
    assert (tmp_path / "clusters.gif").stat().st_size > 0

    widget.select_cluster(1)
    out = tmp_path / "subset.star"
    assert widget.export_subset(out)
    particles = starfile.read(out, always_dict=True)["particles"]
    rows = np.flatnonzero(labels == 1)
    relative = os.path.relpath(path, out.parent)  # names are relative to the STAR's folder
    assert list(particles["rlnImageName"]) == [f"{i + 1:06d}@{relative}" for i in rows]
    np.testing.assert_allclose(particles["rlnSpatialVaeZ1"], sim.conformation[rows])
    np.testing.assert_array_equal(particles["rlnSpatialVae_cluster"], 1)


def test_nothing_to_do_gives_one_line_errors(make_napari_viewer, truth, tmp_path, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr("napari_spatial_vae._explore_widget.show_error", errors.append)
    sim, path = truth
    viewer = make_napari_viewer()
    add_truth_layers(viewer, sim, path)
    widget = ExploreWidget(viewer)
    assert widget.average_selection() is None
    assert widget.average_clusters() is None
    assert not widget.export_subset(tmp_path / "none.star")
    assert not widget.save_movie(tmp_path / "none.gif")  # no clusters, no model
    assert len(errors) == 4 and all("\n" not in e for e in errors)
    assert list(tmp_path.iterdir()) == []


def test_new_results_in_the_poses_layer_refresh_the_plot(make_napari_viewer, truth):
    sim, path = truth
    viewer = make_napari_viewer()
    add_truth_layers(viewer, sim, path)
    widget = ExploreWidget(viewer)
    widget.select(np.arange(10))
    poses = viewer.layers[L.POSES]
    features = poses.features.copy()
    features["z1"] = -features["z1"]
    poses.features = features
    poses.data = poses.data.copy()  # how the spatial-VAE dock updates a layer in place
    np.testing.assert_allclose(widget.plot.xs, -sim.conformation)
    assert len(widget.selection) == 0
