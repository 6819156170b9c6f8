"""Animated GIF and MP4 files (imageio), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_spatial_vae._atomic import atomic_output

from .errors import StackError

__all__ = ["MOVIE_SUFFIXES", "write_movie"]

MOVIE_SUFFIXES = (".gif", ".mp4")
# H.264 encoders work on 16 x 16 macro-blocks; pad rather than let the encoder rescale
_BLOCK = 16


def write_movie(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8.0) -> None:
    """Write ``(F, h, w)`` uint8 greyscale frames as a looping GIF or an H.264 MP4.

    Raises
    ------
    StackError
        Unknown suffix, or no MP4 encoder installed (``pip install imageio-ffmpeg``).
    """
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MOVIE_SUFFIXES:
        raise StackError(path, f"unknown movie type '{path.suffix}'; use .gif or .mp4")
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 3 or len(frames) == 0:
        raise StackError(path, f"need (F, h, w) frames, got shape {frames.shape}")
    with atomic_output(path) as tmp:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            pad_h = -frames.shape[1] % _BLOCK
            pad_w = -frames.shape[2] % _BLOCK
            padded = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w)))
            rgb = np.repeat(padded[..., None], 3, axis=-1)
            try:
                iio.imwrite(
                    tmp,
                    rgb,
                    extension=".mp4",
                    plugin="FFMPEG",
                    fps=fps,
                    output_params=["-f", "mp4"],  # the temporary name says no format
                )
            except (ImportError, RuntimeError, ValueError, OSError) as exc:
                raise StackError(
                    path, f"cannot write MP4 ({exc}); install imageio-ffmpeg or write a .gif"
                ) from None
