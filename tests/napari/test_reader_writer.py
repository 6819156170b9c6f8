"""Every format opens through the plugin's reader; layers save through its writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_spatial_vae import _layers as L
from napari_spatial_vae import _reader
from napari_spatial_vae._reader import get_reader, read_particle_stacks
from napari_spatial_vae._writer import write_image_stack, write_poses_layer
from napari_spatial_vae.io import read_poses, read_stack, write_mrcs

PLUGIN = "napari-spatial-vae"


@pytest.fixture
def stack_array() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(6, 16, 16)).astype(np.float32)


def write_format(path: Path, images: np.ndarray) -> Path:
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, images)
    elif suffix == ".npz":
        np.savez(path, images=images)
    elif suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, images)
    else:
        write_mrcs(path, images, pixel_size=1.7)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".tif", ".tiff", ".mrcs", ".mrc"])
def test_viewer_opens_each_array_format(make_napari_viewer, tmp_path, stack_array, suffix):
    path = write_format(tmp_path / f"particles{suffix}", stack_array)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == (6, 16, 16)
    np.testing.assert_allclose(np.asarray(layer.data), stack_array)
    expected = 1.7 if suffix.startswith(".mrc") else 1.0
    np.testing.assert_allclose(layer.scale, (1.0, expected, expected), rtol=1e-6)
    assert layer.metadata[L.META_KEY]["path"] == str(path)


REAL = [
    # file, shape, pixel size (None: scale 1), has a particle table
    ("cryodrgn/relion31.star", (5, 256, 256), 2.806, True),
    ("cryodrgn/empiar_10076_7.cs", (7, 320, 320), 1.31, True),
    ("cryodrgn/empiar_10076_7.mrc", (7, 320, 320), None, False),
    ("cryodrgn/hand.5.mrcs", (5, 64, 64), 1.0, False),
    ("aspire/sample_particles_relion31.star", (17, 200, 200), 1.4, True),
    ("mrcfile/EMD-3001.map", (25, 43, 73), None, False),
]


@pytest.mark.parametrize(("name", "shape", "pixel", "table"), REAL)
def test_viewer_opens_real_files(shared_data, name, shape, pixel, table, request):
    path = shared_data / "cryoem" / name
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout of the shared data")
    # requested only after the skips: napari's fixture errors at teardown when a test skips
    # after it was set up (a fresh clone without ../shared)
    viewer = request.getfixturevalue("make_napari_viewer")()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer.data.shape == shape
    np.testing.assert_allclose(layer.scale[-2:], [pixel or 1.0] * 2, rtol=1e-4)
    particle_table = layer.metadata["particle_table"]
    assert (particle_table is not None) == table
    if table:
        assert isinstance(particle_table, pd.DataFrame) and len(particle_table) == shape[0]


def test_reader_declines_other_files(tmp_path):
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(tmp_path / "a.npy"), str(tmp_path / "b.txt")]) is None
    assert get_reader(str(tmp_path / "a.mrcs")) is read_particle_stacks


def test_broken_file_reports_its_one_line_reason(make_napari_viewer, tmp_path):
    path = tmp_path / "broken.mrcs"
    path.write_bytes(b"not an mrc file")
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:  # napari wraps it in a ReaderPluginError
        viewer.open(path, plugin=PLUGIN)
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert any("broken.mrcs" in message for message in chain)


def test_large_stacks_stay_lazy(monkeypatch, tmp_path, stack_array):
    monkeypatch.setattr(_reader, "EAGER_LIMIT_BYTES", 0)
    path = write_format(tmp_path / "big.mrcs", stack_array)
    ((data, kwargs, kind),) = read_particle_stacks(str(path))
    assert kind == "image" and type(data).__module__.startswith("dask")
    assert data.chunksize == (1, 16, 16)
    np.testing.assert_allclose(np.asarray(data[3]), stack_array[3])
    low, high = kwargs["contrast_limits"]
    assert low < high


def test_image_writer_round_trip(make_napari_viewer, tmp_path, stack_array):
    viewer = make_napari_viewer()
    viewer.add_image(stack_array, scale=(1, 2.5, 2.5), name="particles")
    out = tmp_path / "saved.mrcs"
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert written == [str(out)]
    stack = read_stack(out)
    np.testing.assert_allclose(stack.read_batch(slice(None)), stack_array)
    assert stack.pixel_size == pytest.approx(2.5)


def test_image_writer_flattens_traversals_and_refuses_rgb(tmp_path):
    traversal = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    write_image_stack(str(tmp_path / "t.mrcs"), traversal, {"scale": (1, 1, 1, 1)})
    stack = read_stack(tmp_path / "t.mrcs")
    np.testing.assert_array_equal(stack.read_batch([4])[0], traversal[1, 1])
    with pytest.raises(ValueError, match="RGB"):
        write_image_stack(str(tmp_path / "c.mrcs"), np.zeros((2, 4, 4, 3)), {"rgb": True})


@pytest.mark.parametrize("suffix", [".csv", ".star"])
def test_poses_writer_round_trip(make_napari_viewer, tmp_path, suffix, make_results):
    results = make_results(n=6, size=(16, 16), pixel=1.7)
    results.source_path = None
    data, kwargs, _ = L.poses_layer(results)
    viewer = make_napari_viewer()
    layer = viewer.add_points(data, **{k: v for k, v in kwargs.items()})
    out = tmp_path / f"poses{suffix}"
    assert viewer.layers.save(str(out), selected=False, plugin=PLUGIN) == [str(out)]
    poses = read_poses(out)
    for column in ("theta", "dx", "dy", "z1", "z2", "z2_std"):
        np.testing.assert_allclose(poses[column], results.columns[column], atol=1e-6)
    assert layer.features.shape[0] == 6


def test_poses_writer_needs_pose_features(tmp_path):
    with pytest.raises(ValueError, match="pose features"):
        write_poses_layer(str(tmp_path / "p.csv"), np.zeros((2, 3)), {"features": pd.DataFrame()})
