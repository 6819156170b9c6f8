"""Result layers are pure functions of the results: tested without a viewer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_spatial_vae import _layers as L


def test_poses_layer_puts_each_particle_at_its_frame_and_centre(make_results):
    results = make_results(pixel=1.5)
    data, kwargs, kind = L.poses_layer(results)
    assert kind == "points"
    assert data.shape == (5, 3)
    np.testing.assert_array_equal(data[:, 0], np.arange(5))
    np.testing.assert_allclose(data[:, 1], (20 - 1) / 2 + results.columns["dy"])
    np.testing.assert_allclose(data[:, 2], (24 - 1) / 2 + results.columns["dx"])
    assert kwargs["scale"] == (1.0, 1.5, 1.5)
    features = kwargs["features"]
    assert list(features.columns) == [
        "particle", "theta_deg", "theta", "dx", "dy", "z1", "z2", "theta_std_deg",
        "theta_std", "dx_std", "dy_std", "z1_std", "z2_std",
    ]  # fmt: skip
    np.testing.assert_allclose(features["theta_deg"], np.degrees(results.columns["theta"]))
    assert kwargs["face_color"] == "theta_deg"
    assert kwargs["face_colormap"] == "twilight"
    assert kwargs["metadata"][L.META_KEY]["image_shape"] == (20, 24)


def test_poses_layer_colour_by_any_feature_and_rejects_unknown(make_results):
    _, kwargs, _ = L.poses_layer(make_results(), color_by="z1")
    assert kwargs["face_color"] == "z1" and kwargs["face_colormap"] == "viridis"
    with pytest.raises(ValueError, match="no feature"):
        L.poses_layer(make_results(), color_by="banana")


def test_orientation_vectors_point_along_theta_counter_clockwise_on_screen(make_results):
    results = make_results(n=2)
    results.columns["theta"] = np.array([0.0, np.pi / 2])
    data, _kwargs, kind = L.orientation_layer(results, length=3.0)
    assert kind == "vectors" and data.shape == (2, 2, 3)
    # theta = 0: along +x (columns); theta = 90°: up the screen (towards smaller rows)
    np.testing.assert_allclose(data[0, 1], [0.0, 0.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(data[1, 1], [0.0, -3.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(
    ("z_dim", "labels"),
    [(0, ("dx (px)", "dy (px)")), (1, ("z1", "theta (rad)")), (2, ("z1", "z2")),
     (4, ("PC1 of z", "PC2 of z"))],
)  # fmt: skip
def test_latent_coordinates_by_latent_size(z_dim, labels, make_results):
    results = make_results(n=30, z_dim=z_dim)
    x, y, x_label, y_label = L.latent_coordinates(L.pose_features(results.columns))
    assert (x_label, y_label) == labels
    assert x.shape == y.shape == (30,)
    if z_dim == 4:  # principal components are uncorrelated and ordered by variance
        assert abs(np.corrcoef(x, y)[0, 1]) < 1e-8
        assert x.var() >= y.var()


def test_latent_map_holds_latents_and_fits_right_of_the_images(make_results):
    results = make_results(n=50)
    data, kwargs, kind = L.latent_map_layer(results)
    assert kind == "points" and data.shape == (50, 2)
    np.testing.assert_allclose(data[:, 1], results.columns["z1"])
    np.testing.assert_allclose(data[:, 0], -results.columns["z2"])
    world = data * np.asarray(kwargs["scale"]) + np.asarray(kwargs["translate"])
    left = L.panel_translate((20, 24), None, 2, L.COLUMN_LATENT_MAP)[1]
    assert world[:, 1].min() >= left - 1e-9
    assert world[:, 1].max() <= left + 2 * 24 + 1e-9
    assert world[:, 0].min() >= -0.5 - 1e-9
    assert kwargs["features"]["particle"].tolist() == list(range(50))
    assert kwargs["face_color"] == "theta_deg"


def test_image_layers_shapes_scale_and_contrast(make_results):
    results = make_results(pixel=2.0)
    data, kwargs, kind = L.aligned_layer(results)
    assert kind == "image" and data.shape == (5, 20, 24)
    assert kwargs["scale"] == (1.0, 2.0, 2.0) and kwargs["rgb"] is False
    low, high = kwargs["contrast_limits"]
    assert low < high
    data, kwargs, _ = L.traversal_layer(results.traversal, 2.0)
    # one 2-D montage (rows: latent dimensions, columns: steps, 1 px gaps)
    assert data.shape == (2 * 20 + 1, 7 * 24 + 6)
    np.testing.assert_array_equal(data[21:41, 25:49], results.traversal[1, 1])
    assert kwargs["scale"] == (2.0, 2.0)
    assert kwargs["metadata"][L.META_KEY]["traversal"] == {"z_dim": 2, "steps": 7, "gap": 1}
    with pytest.raises(ValueError):
        L.traversal_layer(np.zeros((3, 4, 4)))


def test_colour_stacks_are_rgb():
    _data, kwargs, _ = L.image_layer(np.zeros((3, 8, 8, 3), np.uint8), "rgb")
    assert kwargs["rgb"] is True and "colormap" not in kwargs


def test_result_layers_lists_every_layer_once(make_results):
    names = [kwargs["name"] for _, kwargs, _ in L.result_layers(make_results())]
    assert names == [
        L.ALIGNED, L.RECONSTRUCTIONS, L.TRAVERSAL, L.POSES, L.ORIENTATIONS, L.LATENT_MAP
    ]  # fmt: skip
    names = [kwargs["name"] for _, kwargs, _ in L.result_layers(make_results(z_dim=0))]
    assert L.TRAVERSAL not in names


def test_preview_mosaic_pairs_inputs_with_reconstructions():
    inputs = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    recon = -inputs
    mosaic = L.preview_mosaic(inputs, recon, columns=2)
    assert mosaic.shape == (3 * 2, 2 * 2 * 3)
    np.testing.assert_array_equal(mosaic[2:4, 6:9], inputs[3])
    np.testing.assert_array_equal(mosaic[2:4, 9:12], recon[3])
    data, kwargs, _ = L.preview_layer(inputs, recon)
    assert data.ndim == 2 and kwargs["name"] == L.PREVIEW


def test_pose_table_round_trip_drops_display_columns(make_results):
    results = make_results()
    table = L.pose_table(L.pose_features(results.columns))
    assert list(table.columns) == list(results.columns)
    with pytest.raises(ValueError, match="not a spatial-VAE poses layer"):
        L.pose_table(pd.DataFrame({"a": [1]}))


def test_contrast_limits_ignore_outliers():
    images = np.zeros((4, 10, 10), np.float32)
    images[0, 0, 0] = 1e6
    images[1:] = np.random.default_rng(0).normal(size=(3, 10, 10))
    _low, high = L.contrast_limits(images)
    assert high < 100
    assert L.contrast_limits(np.ones((2, 3, 3))) == (1.0, 2.0)
