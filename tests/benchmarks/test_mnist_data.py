"""The MNIST transforms the Figure 2 benchmark relies on: poses as documented, data intact."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mnist_data import MNIST_DIR, load_mnist, train_test_split, transform_digits


def square_digit() -> np.ndarray:
    """``(1, 28, 28)`` uint8: an off-centre bright square (its centroid shows the shift)."""
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 8:14, 14:20] = 255
    return digit


def centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    return np.array([(cols * image).sum(), (rows * image).sum()]) / image.sum()


def test_rotated_variant_moves_the_content_by_the_recorded_pose():
    digits = np.repeat(square_digit(), 200, axis=0)
    images, theta, shift = transform_digits(digits, "rotated", seed=3)
    assert images.shape == (200, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert 0.6 < np.std(theta) / (np.pi / 4) < 1.4
    assert 0.6 < np.std(shift) / 1.4 < 1.4
    # content at offset q from the centre lands at q R(theta) + shift (the model's convention)
    centre = (28 - 1) / 2.0
    q = centroid(digits[0].astype(float)) - centre
    for k in range(10):
        cos, sin = np.cos(theta[k]), np.sin(theta[k])
        expected = np.array([q[0] * cos + q[1] * sin, -q[0] * sin + q[1] * cos]) + shift[k]
        assert np.abs(centroid(images[k]) - centre - expected).max() < 0.3


def test_translated_variant_uses_a_larger_canvas():
    images, _, shift = transform_digits(np.repeat(square_digit(), 50, axis=0), "rotated_translated")
    assert images.shape[1:] == (56, 56)
    assert 8 < np.std(shift) < 20


def test_split_is_seeded_and_disjoint():
    data = np.arange(100)
    train, test = train_test_split(data, 20, seed=1)
    again, _ = train_test_split(data, 20, seed=1)
    assert len(test) == 20 and not set(train) & set(test) and np.array_equal(train, again)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"the shared MNIST data is absent ({MNIST_DIR})")
def test_real_mnist_loads_with_the_known_statistics():
    digits = load_mnist()
    assert digits.shape == (10000, 28, 28) and digits.dtype == np.uint8
    assert abs(digits.mean() / 255 - 0.13251) < 1e-4


def test_a_file_that_is_not_idx3_is_refused(tmp_path):
    import gzip

    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + b"\x00" * 20)
    with pytest.raises(ValueError, match="not an idx3 image file"):
        load_mnist(tmp_path)
