"""Write image stacks as MRC (``.mrcs``), atomically and with bounded memory."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import mrcfile
import numpy as np

from napari_spatial_vae._atomic import commit_temp_file, make_temp_file

from .errors import StackError
from .mrc import MRC_HEADER_BYTES

__all__ = ["MrcsWriter", "write_mrcs"]

_LABEL = "napari-spatial-vae"


class MrcsWriter:
    """Stream images into a new ``.mrcs`` stack (mode 2, float32).

    The stack is written to a hidden temporary file beside ``path``; it appears under its
    final name only when every image has been written and the writer is closed without an
    error. Data go to the file with ordinary writes (not a memory map), so memory stays at
    one batch however large the stack.

    Parameters
    ----------
    path : str or os.PathLike
        Final file name.
    n_images : int
        Number of images N.
    shape_hw : tuple of int
        Image size ``(H, W)``.
    pixel_size : float or None
        Å per pixel for the header (voxel size); None writes 0, "unknown".

    Examples
    --------
    >>> with MrcsWriter("out.mrcs", 10_000, (64, 64), 1.31) as out:  # doctest: +SKIP
    ...     for start in range(0, 10_000, 1000):
    ...         out.write(start, batch)  # (B, 64, 64)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_images: int,
        shape_hw: tuple[int, int],
        pixel_size: float | None = None,
    ) -> None:
        self.path = Path(path)
        h, w = (int(s) for s in shape_hw)
        if n_images < 1 or h < 1 or w < 1:
            raise StackError(self.path, f"cannot write an empty stack ({n_images} x {h}x{w})")
        if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
            raise StackError(self.path, f"invalid pixel size {pixel_size}")
        self.shape = (int(n_images), h, w)
        self._tmp = make_temp_file(self.path)
        try:
            # new_mmap lays out a valid header and sizes the (sparse) file; the map itself
            # is closed at once and never touched.
            with mrcfile.new_mmap(self._tmp, shape=self.shape, mrc_mode=2, overwrite=True) as mrc:
                mrc.set_image_stack()
                size = float(pixel_size) if pixel_size is not None else 0.0
                mrc.voxel_size = (size, size, size)
                mrc.add_label(_LABEL)
                self._header = mrc.header.copy()
            self._file: Any = open(self._tmp, "r+b")  # noqa: SIM115 - closed in close()/abort()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self._written = np.zeros(self.shape[0], dtype=bool)
        # running statistics (Chan et al.) for the header's dmin/dmax/dmean/rms
        self._count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min = np.inf
        self._max = -np.inf
        self._closed = False

    def __enter__(self) -> MrcsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, start_index: int, batch: np.ndarray) -> None:
        """Write images ``start_index .. start_index + B - 1``.

        Parameters
        ----------
        start_index : int
            Index of the first image of the batch in the stack.
        batch : numpy.ndarray
            ``(B, H, W)`` (or ``(H, W)`` for one image); converted to float32.
        """
        if self._closed:
            raise StackError(self.path, "write after close")
        data = np.asarray(batch, dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or data.shape[1:] != self.shape[1:]:
            raise StackError(
                self.path, f"batch of shape {data.shape} for images of size {self.shape[1:]}"
            )
        stop = start_index + data.shape[0]
        if start_index < 0 or stop > self.shape[0]:
            raise StackError(
                self.path, f"images {start_index}..{stop - 1} outside 0..{self.shape[0] - 1}"
            )
        data = np.ascontiguousarray(data, dtype=self._header.mode.dtype.byteorder + "f4")
        self._file.seek(MRC_HEADER_BYTES + start_index * self.shape[1] * self.shape[2] * 4)
        self._file.write(memoryview(data.data).cast("B"))
        self._written[start_index:stop] = True
        self._update_stats(data)

    def _update_stats(self, data: np.ndarray) -> None:
        n = data.size
        if n == 0:
            return
        mean = float(np.mean(data, dtype=np.float64))
        m2 = float(np.sum(np.square(data - mean, dtype=np.float64)))
        total = self._count + n
        delta = mean - self._mean
        self._mean += delta * n / total
        self._m2 += m2 + delta * delta * self._count * n / total
        self._count = total
        self._min = min(self._min, float(np.min(data)))
        self._max = max(self._max, float(np.max(data)))

    def close(self) -> None:
        """Finish the header and move the file to its final name.

        Raises
        ------
        StackError
            Some images were never written (the partial file is removed).
        """
        if self._closed:
            return
        missing = int(np.count_nonzero(~self._written))
        if missing:
            self.abort()
            raise StackError(
                self.path, f"{missing} of {self.shape[0]} images were never written; not saved"
            )
        header = self._header
        header.dmin, header.dmax, header.dmean = self._min, self._max, self._mean
        header.rms = float(np.sqrt(self._m2 / self._count))
        try:
            self._file.seek(0)
            self._file.write(header.tobytes())
            self._file.close()
            commit_temp_file(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Discard everything written; the final file is not created or changed."""
        self._closed = True
        try:
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def write_mrcs(path: str | os.PathLike[str], images: Any, pixel_size: float | None = None) -> None:
    """Write a stack of images to a ``.mrcs`` file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (conventionally ``.mrcs``).
    images : array-like
        ``(N, H, W)`` or ``(H, W)``; anything with ``shape`` and slicing, e.g. a numpy
        array or a lazy :class:`~.sources.ImageSource` (copied in chunks).
    pixel_size : float or None
        Å per pixel; None writes 0 ("unknown").
    """
    shape = tuple(images.shape) if hasattr(images, "shape") else np.shape(images)
    if len(shape) == 2:
        images = np.asarray(images)[None]
        shape = images.shape
    if len(shape) != 3:
        raise StackError(path, f"cannot write images of shape {shape} as an MRC stack (N, H, W)")
    n, h, w = shape
    chunk = max(1, (256 << 20) // max(1, h * w * 4))  # ~256 MB per write
    with MrcsWriter(path, n, (h, w), pixel_size) as out:
        for start in range(0, n, chunk):
            out.write(start, np.asarray(images[start : start + chunk]))
