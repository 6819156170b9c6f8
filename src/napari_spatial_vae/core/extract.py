"""Micrograph + coordinates -> particle boxes: crop, Fourier downsample, normalise.

Geometry follows RELION's ``relion_preprocess --extract``: a coordinate ``(x, y)`` is in
pixels from the first pixel of the micrograph (x = column, y = row, 0-based), it is rounded
to the nearest pixel, and the ``box x box`` window starts ``box // 2`` pixels before it, so
the rounded coordinate becomes pixel ``(box // 2, box // 2)`` of the box (the centre of the
Fourier transform). Downsampling crops the Fourier transform (no interpolation, no aliasing);
normalisation sets the background (pixels outside a circle) to mean 0 and standard deviation
1, as RELION's ``--norm`` does (RELION also subtracts a fitted ramp by default; we do not).

numpy only: a micrograph's boxes are a few tens of MB, and the extraction runs where torch
may not be wanted (the napari reader thread, a login node).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BACKGROUND_DIAMETER_FRACTION",
    "background_mask",
    "box_corners",
    "boxes_inside",
    "crop_boxes",
    "extract_boxes",
    "fourier_crop",
    "normalise_background",
]

#: RELION's default background circle: a diameter of 75% of the (output) box.
BACKGROUND_DIAMETER_FRACTION = 0.75

# Boxes are Fourier-cropped in chunks so that the complex transforms stay small
# (64 boxes of 256 px: 17 MB of complex64).
_FFT_CHUNK = 64


def box_corners(x: np.ndarray, y: np.ndarray, box: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixel ``(row, column)`` of the box around each coordinate.

    Parameters
    ----------
    x, y : numpy.ndarray
        ``(B,)`` coordinates in pixels (x = column, y = row).
    box : int
        Box side in pixels.

    Returns
    -------
    rows, cols : numpy.ndarray
        ``(B,)`` int64: ``round(y) - box // 2`` and ``round(x) - box // 2``, rounding halves
        up as RELION's ``ROUND`` does (``floor(v + 0.5)``).
    """
    half = int(box) // 2
    rows = np.floor(np.asarray(y, dtype=np.float64) + 0.5).astype(np.int64) - half
    cols = np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64) - half
    return rows, cols


def boxes_inside(
    rows: np.ndarray, cols: np.ndarray, box: int, shape: tuple[int, int]
) -> np.ndarray:
    """``(B,)`` bool: which boxes lie entirely inside a micrograph of ``shape`` ``(H, W)``."""
    height, width = shape
    return (rows >= 0) & (cols >= 0) & (rows + box <= height) & (cols + box <= width)


def crop_boxes(micrograph: np.ndarray, rows: np.ndarray, cols: np.ndarray, box: int) -> np.ndarray:
    """Copy ``box x box`` windows out of a micrograph.

    Parameters
    ----------
    micrograph : numpy.ndarray
        ``(H, W)``.
    rows, cols : numpy.ndarray
        ``(B,)`` top-left corners; every box must lie inside (see :func:`boxes_inside`).
    box : int
        Box side.

    Returns
    -------
    numpy.ndarray
        ``(B, box, box)`` float32.
    """
    out = np.empty((len(rows), box, box), dtype=np.float32)
    for k, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        out[k] = micrograph[r : r + box, c : c + box]
    return out


def fourier_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Downsample square images by keeping the central ``size x size`` Fourier components.

    The mean (and so the scale of the values) is preserved: the inverse transform is
    multiplied by ``(size / box)**2``. ``size == box`` returns the images unchanged.

    Parameters
    ----------
    images : numpy.ndarray
        ``(B, box, box)``.
    size : int
        Output side, even and at most ``box``.

    Returns
    -------
    numpy.ndarray
        ``(B, size, size)`` float32.
    """
    box = images.shape[-1]
    if size == box:
        return np.asarray(images, dtype=np.float32)
    if size > box or size % 2 or box % 2:
        raise ValueError(f"cannot Fourier-crop {box} px boxes to {size} px (need even size <= box)")
    half = size // 2
    out = np.empty((len(images), size, size), dtype=np.float32)
    for start in range(0, len(images), _FFT_CHUNK):
        spectrum = np.fft.rfft2(np.asarray(images[start : start + _FFT_CHUNK], dtype=np.float32))
        # rows hold frequencies 0..box/2-1 then -box/2..-1; keep -size/2..size/2-1
        cropped = np.concatenate(
            [spectrum[:, :half, : half + 1], spectrum[:, -half:, : half + 1]], 1
        )
        out[start : start + _FFT_CHUNK] = np.fft.irfft2(cropped, s=(size, size))
    out *= (size / box) ** 2
    return out


def background_mask(size: int, diameter: float | None = None) -> np.ndarray:
    """``(size, size)`` bool, True outside the circle around pixel ``(size // 2, size // 2)``.

    ``diameter`` in pixels defaults to 75% of ``size`` (RELION's default).
    """
    if diameter is None:
        diameter = BACKGROUND_DIAMETER_FRACTION * size
    offsets = np.arange(size) - size // 2
    r2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return r2 > (diameter / 2) ** 2


def normalise_background(images: np.ndarray, diameter: float | None = None) -> np.ndarray:
    """Shift and scale each image so its background has mean 0 and standard deviation 1.

    Parameters
    ----------
    images : numpy.ndarray
        ``(B, S, S)``.
    diameter : float, optional
        Background circle diameter in pixels (default 75% of ``S``).

    Returns
    -------
    numpy.ndarray
        ``(B, S, S)`` float32. A flat background (standard deviation 0) is only shifted.
    """
    mask = background_mask(images.shape[-1], diameter)
    background = images[:, mask].astype(np.float64)
    mean = background.mean(axis=1)
    std = background.std(axis=1)
    std[std == 0] = 1.0
    out = (images - mean[:, None, None]) / std[:, None, None]
    return out.astype(np.float32)


def extract_boxes(
    micrograph: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    box: int,
    size: int | None = None,
    normalise: bool = True,
    invert: bool = False,
) -> np.ndarray:
    """Particles of one micrograph, as RELION extracts them.

    Parameters
    ----------
    micrograph : numpy.ndarray
        ``(H, W)``.
    x, y : numpy.ndarray
        ``(B,)`` particle centres in pixels (x = column, y = row); every box must lie inside
        the micrograph (check with :func:`box_corners` and :func:`boxes_inside`).
    box : int
        Box side in micrograph pixels.
    size : int, optional
        Output side after Fourier cropping (default ``box``: no downsampling).
    normalise : bool
        Background outside 75% of the box to mean 0, standard deviation 1.
    invert : bool
        Multiply by -1 at the end (dark particles become white).

    Returns
    -------
    numpy.ndarray
        ``(B, size, size)`` float32.
    """
    rows, cols = box_corners(x, y, box)
    if not np.all(boxes_inside(rows, cols, box, micrograph.shape)):
        raise ValueError("some boxes leave the micrograph")
    images = fourier_crop(crop_boxes(micrograph, rows, cols, box), size or box)
    if normalise:
        images = normalise_background(images)
    if invert:
        np.negative(images, out=images)
    return images
