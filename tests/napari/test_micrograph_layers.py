"""Micrographs and picks in napari: the reader, the sample data and the extract widget."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_spatial_vae import _layers as L
from napari_spatial_vae._extract_widget import (
    make_extract_widget,
    micrographs_from_layer,
    picks_from_layer,
)
from napari_spatial_vae._micrographs import (
    get_micrograph_reader,
    make_synthetic_micrographs,
    micrograph_file_kind,
)
from napari_spatial_vae._reader import get_reader, read_particle_stacks
from napari_spatial_vae.io import StackError
from napari_spatial_vae.io.particles_star import write_star

PLUGIN = "napari-spatial-vae"
SIDE = 1024  # the reader takes a single 2-D MRC for a micrograph from this size on


@pytest.fixture
def micrograph_folder(tmp_path):
    folder = tmp_path / "Micrographs"
    folder.mkdir()
    for k in (2, 1):  # written out of order: the layer follows the names
        with mrcfile.new(folder / f"mic_{k}.mrc") as mrc:
            mrc.set_data(np.full((SIDE, SIDE), k, np.float32))
            mrc.voxel_size = 1.5
    return folder


def test_file_kinds_are_told_apart(tmp_path, micrograph_folder):
    (tmp_path / "a.box").write_text("1 2 3 4\n")
    (tmp_path / "t.txt").write_text("image_name\tx_coord\ty_coord\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    write_star(
        tmp_path / "c.star", {"": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0]})}
    )
    write_star(tmp_path / "m.star", {"micrographs": pd.DataFrame({"rlnMicrographName": ["a"]})})
    write_star(
        tmp_path / "p.star",
        {"particles": pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnMicrographName": ["a"]})},
    )
    assert micrograph_file_kind(tmp_path / "a.box") == "coordinates"
    assert micrograph_file_kind(tmp_path / "t.txt") == "coordinates"
    assert micrograph_file_kind(tmp_path / "notes.txt") is None
    assert micrograph_file_kind(tmp_path / "c.star") == "coordinates"
    assert micrograph_file_kind(tmp_path / "m.star") == "micrographs"
    assert micrograph_file_kind(tmp_path / "p.star") is None  # particles: the stack reader
    assert micrograph_file_kind(micrograph_folder) == "micrographs"
    assert micrograph_file_kind(micrograph_folder / "mic_1.mrc") == "micrographs"
    assert get_reader(str(tmp_path / "p.star")) is read_particle_stacks
    assert get_micrograph_reader([str(tmp_path / "a.box"), str(micrograph_folder)]) is None


def test_micrographs_then_picks_open_as_image_and_points(
    make_napari_viewer, tmp_path, micrograph_folder
):
    viewer = make_napari_viewer()
    [image] = viewer.open(micrograph_folder, plugin=PLUGIN)
    assert image.data.shape == (2, SIDE, SIDE)
    assert type(image.data).__name__ == "Array"  # dask: one micrograph read per frame
    np.testing.assert_allclose(image.scale, (1, 1.5, 1.5))
    assert image.metadata["micrograph_names"][0].endswith("mic_1.mrc")
    coords = tmp_path / "coords"
    coords.mkdir()
    (coords / "mic_2.box").write_text("90 190 20 20 0.8\n290 390 20 20 0.2\n")
    [points] = viewer.open(coords, plugin=PLUGIN)
    # mic_2 is the second frame of the micrograph layer; centres are corner + size / 2
    np.testing.assert_allclose(points.data, [[1, 200, 100], [1, 400, 300]])
    np.testing.assert_allclose(points.scale, (1, 1.5, 1.5))
    np.testing.assert_allclose(points.features["score"], [0.8, 0.2])


@pytest.fixture
def sample(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = make_synthetic_micrographs(
        n_micrographs=2, side=256, n_particles=6, n_false_picks=2, particle_size=32, seed=1
    )
    for data, kwargs, kind in layers:
        viewer._add_layer_from_data(data, kwargs, kind)
    return viewer


def test_the_sample_has_micrographs_with_ctf_and_scored_picks(sample):
    image, points = sample.layers
    assert image.data.shape == (2, 256, 256) and len(points.data) == 16
    table = image.metadata["micrograph_table"]
    assert {"rlnDefocusU", "rlnVoltage", "rlnMicrographName"} <= set(table.columns)
    truth = points.metadata["truth"]
    assert points.features["score"][truth].min() > points.features["score"][~truth].max()


def test_the_widget_extracts_a_particle_layer_with_ctf(sample, qtbot, tmp_path):
    image, points = sample.layers
    widget = make_extract_widget()
    sample.window.add_dock_widget(widget)
    widget.micrographs.value, widget.picks.value = image, points
    widget.box.value, widget.size.value = 48, 24
    widget.use_threshold.value, widget.min_score.value = True, 0.45
    assert points.shown.sum() == 12  # the false picks are hidden...
    widget.output.value = tmp_path / "out" / "particles.star"
    widget()
    qtbot.waitUntil(lambda: len(sample.layers) == 3, timeout=30_000)
    particles = sample.layers[-1]
    assert particles.data.shape[1:] == (24, 24)
    np.testing.assert_allclose(particles.scale, (1, 4, 4))  # 2 Å x 48 / 24
    table = particles.metadata["particle_table"]
    assert len(table) == particles.data.shape[0] <= 12  # ...and not extracted
    written = starfile.read(tmp_path / "out" / "particles.star")["particles"]
    ctf = image.metadata["micrograph_table"].set_index("rlnMicrographName")
    np.testing.assert_allclose(
        written["rlnDefocusU"], ctf.loc[written["rlnMicrographName"], "rlnDefocusU"]
    )
    assert particles.metadata[L.META_KEY]["path"] == str(tmp_path / "out" / "particles.star")


def test_points_off_the_micrographs_are_named_by_layer_and_row(sample):
    image, points = sample.layers
    points.data = np.vstack([points.data, [[0, 100, 900]]])
    mics = micrographs_from_layer(image)
    with pytest.raises(StackError, match=r"points layer 'synthetic picks': row 17: coordinate"):
        picks_from_layer(points, image, mics)


def test_picks_opened_before_their_micrographs_are_matched_by_name(sample):
    from napari_spatial_vae._micrographs import picks_layer

    image, _ = sample.layers
    names = image.metadata["micrograph_names"]
    # a coordinate file read without the micrograph layer: its frames are its own order
    picks = pd.DataFrame(
        {
            "micrograph": [names[1], names[0]],
            "x": [100.0, 120.0],
            "y": [110.0, 130.0],
            "score": np.nan,
            "file": "f",
            "row": [1, 2],
        }
    )
    data, kwargs, _ = picks_layer(picks, None, 2.0)
    layer = sample.add_points(data, **kwargs)
    assert layer.data[:, 0].tolist() == [0, 1]
    matched = picks_from_layer(layer, image, micrographs_from_layer(image))
    assert matched["index"].tolist() == [1, 0]
    np.testing.assert_allclose(matched[["x", "y"]], [[100, 110], [120, 130]])


def test_picks_of_a_micrograph_the_layer_lacks_are_named_by_file_and_row(sample):
    from napari_spatial_vae._micrographs import picks_layer

    names = sample.layers[0].metadata["micrograph_names"]
    picks = pd.DataFrame(
        {
            "micrograph": [names[0], "other.mrc"],
            "x": [1.0, 2.0],
            "y": [1.0, 2.0],
            "score": np.nan,
            "file": "p.star",
            "row": [1, 2],
        }
    )
    with pytest.raises(StackError, match=r"p.star: row 2: micrograph 'other.mrc' is not among"):
        picks_layer(picks, names, 2.0)
