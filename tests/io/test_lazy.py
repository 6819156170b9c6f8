"""Opening is lazy and reading is bounded; subsets, splits and ImageSource indexing."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_spatial_vae.io import ParticleStack, read_stack, split_indices


@pytest.fixture
def sparse_stack(tmp_path: Path):
    """A 3.1 GB MRC stack (48,000 x 128 x 128 float32) that is sparse on disk."""
    path = tmp_path / "huge.mrcs"
    n = 48_000
    with mrcfile.new_mmap(path, shape=(n, 128, 128), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 2.0
        mrc.data[n - 1] = 7.0  # a few real pages at the far end
    yield path, n
    path.unlink(missing_ok=True)  # never leave gigabytes behind, even sparse ones


def test_large_stack_opens_and_reads_with_bounded_memory(sparse_stack) -> None:
    path, n = sparse_stack
    assert path.stat().st_size > 3e9
    tracemalloc.start()
    try:
        stack = read_stack(path)
        _, after_open = tracemalloc.get_traced_memory()
        for start in (0, n // 2, n - 500):
            batch = stack.read_batch(np.arange(start, start + 500))
            assert batch.shape == (500, 128, 128)
        scattered = stack.read_batch([n - 1, 17, 30_000, 5])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stack.shape == (n, 128, 128)
    assert stack.pixel_size == 2.0
    assert after_open < 1 << 20  # opening allocates well under 1 MiB
    # one 500-image batch is 31 MiB (float32); the file is 3.1 GB
    assert peak < 100 << 20
    assert scattered[0].min() == 7.0 and scattered[1].max() == 0.0


def test_read_batch_order_and_dtype(small_mrcs) -> None:
    path, data = small_mrcs
    stack = read_stack(path)
    order = [4, 0, 4, 2]
    batch = stack.read_batch(order)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, data[order])
    np.testing.assert_array_equal(stack.read_batch(slice(1, 5, 2)), data[1:5:2])
    np.testing.assert_array_equal(stack.read_batch(range(3)), data[:3])
    np.testing.assert_array_equal(stack.read_batch(np.array([-1])), data[[-1]])
    mask = np.array([True, False, True, False, False, True])
    np.testing.assert_array_equal(stack.read_batch(mask), data[mask])


def test_image_source_indexing(small_mrcs) -> None:
    path, data = small_mrcs
    images = read_stack(path).images
    assert images.shape == (6, 16, 16) and images.ndim == 3 and len(images) == 6
    np.testing.assert_array_equal(images[2], data[2])
    np.testing.assert_array_equal(images[-1], data[-1])
    np.testing.assert_array_equal(images[1:4], data[1:4])
    np.testing.assert_array_equal(images[np.array([5, 1, 3])], data[[5, 1, 3]])
    np.testing.assert_array_equal(images[2, 3:5, :], data[2, 3:5, :])  # napari-style tuple
    with pytest.raises(IndexError):
        images[6]


def test_subset_is_lazy_view_with_metadata(cryoem: Path) -> None:
    stack = read_stack(cryoem / "cryodrgn/relion31.star")
    sub = stack.subset([4, 1])
    assert len(sub) == 2 and sub.shape == (2, 256, 256)
    assert sub.image_names == ["000005@relion31.mrcs", "000002@relion31.mrcs"]
    assert sub.metadata["rlnImageName"].tolist() == sub.image_names
    assert list(sub.metadata.index) == [0, 1]
    np.testing.assert_array_equal(sub.read_batch([1, 0]), stack.read_batch([1, 4]))
    subsub = sub.subset([1])
    np.testing.assert_array_equal(subsub.read_batch([0]), stack.read_batch([1]))
    assert sub.pixel_size == stack.pixel_size


@pytest.mark.parametrize(("n", "fraction", "n_test"), [(100, 0.1, 10), (10, 0.01, 1), (5, 0.0, 0)])
def test_split_indices(n: int, fraction: float, n_test: int) -> None:
    train, test = split_indices(n, fraction, seed=3)
    assert len(test) == n_test
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    again = split_indices(n, fraction, seed=3)
    np.testing.assert_array_equal(again[1], test)


def test_split_seed_changes_split_and_validates() -> None:
    assert not np.array_equal(split_indices(1000, 0.2, 1)[1], split_indices(1000, 0.2, 2)[1])
    with pytest.raises(ValueError, match="test_fraction"):
        split_indices(10, 1.0, 0)
    assert len(split_indices(1, 0.5, 0)[0]) == 1  # always one training image


def test_from_array() -> None:
    data = np.arange(2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3)
    stack = ParticleStack.from_array(data, pixel_size=1.2)
    np.testing.assert_array_equal(stack.read_batch([1]), data[[1]].astype(np.float32))
    assert "shape=(2, 3, 3)" in repr(stack)
