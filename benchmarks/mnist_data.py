"""The real MNIST digits, rotated (and translated) as in the paper's Figure 2 experiments.

``../shared/data/mnist`` holds the MNIST test split (10,000 digits, idx format, gzip); the
benchmarks split it into train and test with a seed. Transforms are one batched
``grid_sample`` (the same resampling the model uses), not a per-image loop.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from napari_spatial_vae.core.coords import align_images

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
IDX3_MAGIC = 2051

#: name -> (rotation std in radians, shift std in pixels, canvas size in pixels)
VARIANTS: dict[str, tuple[float, float, int]] = {
    # the paper: theta ~ N(0, pi^2/16), dx ~ N(0, 1.4^2) px on the 28x28 digit
    "rotated": (math.pi / 4, 1.4, 28),
    # the paper: dx ~ N(0, 14^2) px; see translated_canvas() for the canvas
    "rotated_translated": (math.pi / 4, 14.0, 0),
}


def translated_canvas() -> int:
    """Canvas for the large shifts: the 28 px digit box plus +-1 std of shift on each side."""
    return 28 + 2 * 14


def load_mnist(directory: Path = MNIST_DIR) -> np.ndarray:
    """``(N, 28, 28)`` uint8 digits from an idx3 gzip file.

    Raises
    ------
    FileNotFoundError
        Where the shared data folder is absent (outside the development workplace).
    ValueError
        When the file is not an idx3 image file.
    """
    path = Path(directory) / IMAGES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"MNIST images not found at {path} (see shared/data/SOURCES.md)")
    with gzip.open(path) as handle:
        raw = handle.read()
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != IDX3_MAGIC or len(raw) != 16 + int(count) * int(rows) * int(cols):
        raise ValueError(f"{path} is not an idx3 image file (magic {magic})")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(int(count), int(rows), int(cols))


def transform_digits(
    digits: np.ndarray, variant: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate and shift each digit by a random pose on a canvas.

    Parameters
    ----------
    digits
        ``(N, 28, 28)`` uint8.
    variant
        A key of :data:`VARIANTS`.
    seed
        Poses are a deterministic function of the seed.

    Returns
    -------
    images, theta, shift_px
        ``(N, S, S)`` float32 in 0..1, ``(N,)`` radians, ``(N, 2)`` pixels (x, y).
    """
    rotation_std, shift_std, canvas = VARIANTS[variant]
    canvas = canvas or translated_canvas()
    rng = np.random.default_rng(seed)
    n = len(digits)
    theta = rng.normal(0.0, rotation_std, n)
    shift_px = rng.normal(0.0, shift_std, (n, 2))
    pad = (canvas - digits.shape[-1]) // 2
    padded = np.zeros((n, 1, canvas, canvas), np.float32)
    padded[:, 0, pad : pad + digits.shape[-2], pad : pad + digits.shape[-1]] = digits / 255.0
    half_width = (canvas - 1) / 2.0
    # align_images samples at (p - dx) R(-theta)^T, so content at offset q from the centre
    # lands at q R(theta) + shift_px: the model's own x R(theta) + dx convention, in pixels
    images = align_images(
        torch.from_numpy(padded),
        torch.from_numpy(-theta).float(),
        torch.from_numpy(shift_px / half_width).float(),
    )
    return images[:, 0].clamp(0.0, 1.0).numpy(), theta, shift_px


def train_test_split(
    images: np.ndarray, n_test: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random split with a seed: ``(N - n_test, ...)`` train and ``(n_test, ...)`` test."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[n_test:]], images[order[:n_test]]
