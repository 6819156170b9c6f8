"""Lazy image sources: array-likes that read only the images they are asked for.

Every source has ``shape`` ``(N, H, W)`` or ``(N, H, W, C)``, ``dtype``, ``ndim``,
``len()`` and ``__getitem__`` for an int, a slice, an integer/boolean array or a tuple
whose first element is one of those (so napari can slice it like a numpy array). Results
are always fresh numpy arrays; a source never materialises the whole stack unless asked
for all of it.

Raw binary data (MRC, ``.npy``, uncompressed ``.npz`` members and contiguous TIFF) are read
with positioned file reads (:class:`FileSource`) rather than ``numpy.memmap``: a RELION
project can reference thousands of stacks, and every memory map keeps a file descriptor
open (CPython duplicates it), which runs into the default limit of 1024 open files; reading
through a map also leaves every touched page counted in the process's resident memory,
so iterating over a 20 GB stack would look like a 20 GB process.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StackError

__all__ = [
    "ArraySource",
    "FileSource",
    "GatherSource",
    "ImageFilesSource",
    "ImageSource",
    "LazyArraySource",
    "SubsetSource",
    "TiffPageSource",
    "normalize_indices",
]


def normalize_indices(key: Any, n: int) -> np.ndarray:
    """Turn an index expression into an array of non-negative image indices.

    Parameters
    ----------
    key : int, slice, range, sequence of int, or array of int or bool
        Which images. Negative integers count from the end, as in numpy.
    n : int
        Number of images in the stack.

    Returns
    -------
    numpy.ndarray
        ``(B,)`` int64 indices in ``[0, n)``, in the order given.

    Raises
    ------
    IndexError
        An index is out of range or a boolean mask has the wrong length.
    TypeError
        ``key`` is not an index expression (e.g. floats).
    """
    if isinstance(key, slice):
        return np.arange(*key.indices(n), dtype=np.int64)
    if isinstance(key, range):
        key = np.asarray(key, dtype=np.int64)
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("a boolean is not an image index")
    if isinstance(key, (int, np.integer)):
        key = np.asarray([key], dtype=np.int64)
    idx = np.asarray(key)
    if idx.dtype == np.bool_:
        if idx.shape != (n,):
            raise IndexError(f"boolean mask of shape {idx.shape} for {n} images")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise TypeError(
            f"image indices must be a 1-D array of integers, got {idx.dtype} {idx.shape}"
        )
    idx = idx.astype(np.int64)
    bad = (idx < -n) | (idx >= n)
    if bad.any():
        raise IndexError(f"image index {int(idx[bad][0])} out of range for {n} images")
    return np.where(idx < 0, idx + n, idx)


class ImageSource(abc.ABC):
    """Base class of lazy, read-only image stacks.

    Subclasses set ``shape`` and ``dtype`` and implement :meth:`_take_sorted`; the base class
    sorts requested indices (for file locality) and restores the caller's order.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of array dimensions (3 for grey stacks, 4 for RGB)."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            if not key:
                key = slice(None)
            else:
                key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            out = self._take(normalize_indices(int(key), len(self)))[0]
        else:
            out = self._take(normalize_indices(key, len(self)))
        return out[rest] if rest else out

    def _empty(self, count: int) -> np.ndarray:
        return np.empty((count, *self.shape[1:]), dtype=self.dtype)

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Images ``idx`` (any order, repeats allowed), shape ``(len(idx), *shape[1:])``."""
        if idx.size == 0:
            return self._empty(0)
        if idx.size > 1 and np.any(idx[1:] < idx[:-1]):
            order = np.argsort(idx, kind="stable")
            out = self._empty(idx.size)
            out[order] = self._take_sorted(idx[order])
            return out
        return self._take_sorted(idx)

    @abc.abstractmethod
    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:
        """Images for non-decreasing indices ``idx`` (valid, non-empty)."""


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted indices into ``[start, stop)`` positions of consecutive runs."""
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [idx.size]))
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


class FileSource(ImageSource):
    """A C-ordered raw array stored at a byte offset in a file, read on demand.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    offset : int
        Byte offset of the first image.
    dtype : numpy.dtype
        Element type with the file's byte order.
    shape : tuple of int
        ``(N, H, W)`` or ``(N, H, W, C)``.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.offset = int(offset)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self._image_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def _take(self, idx: np.ndarray) -> np.ndarray:
        # Read straight into the output rows, in file order: no second buffer is needed
        # to restore the caller's order, so memory stays at one batch.
        out = self._empty(idx.size)
        if idx.size == 0:
            return out
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        flat = memoryview(out.reshape(-1).view(np.uint8).data)
        size = self._image_bytes
        # A fresh handle per call keeps the source thread- and fork-safe and holds no
        # descriptor between batches; opening a file costs microseconds.
        with open(self.path, "rb", buffering=0) as f:
            for start, stop in _runs(sorted_idx):
                rows = order[start:stop]
                if rows.size == 1 or np.all(np.diff(rows) == 1):
                    first = int(rows[0])
                    self._read(
                        f, int(sorted_idx[start]), flat[first * size : (first + rows.size) * size]
                    )
                else:
                    for k, row in enumerate(rows.tolist()):
                        self._read(
                            f, int(sorted_idx[start]) + k, flat[row * size : (row + 1) * size]
                        )
        return out

    def _read(self, f: Any, index: int, view: memoryview) -> None:
        """Fill ``view`` from the file, starting at image ``index``."""
        f.seek(self.offset + index * self._image_bytes)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise StackError(
                    self.path,
                    f"file ended while reading image {index} (was it truncated after opening?)",
                )
            got += n

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - _take overrides
        return self._take(idx)


class ArraySource(ImageSource):
    """Wrap an in-memory or memory-mapped array of shape ``(N, H, W[, C])``."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:
        if idx[-1] - idx[0] + 1 == idx.size:  # one consecutive run: a cheap slice
            return np.array(self.array[int(idx[0]) : int(idx[-1]) + 1])
        return np.asarray(self.array[idx])


class LazyArraySource(ImageSource):
    """An array that can only be read whole (e.g. a compressed ``.npz`` member).

    Opening stays cheap: ``loader`` runs on the first access only, and its result is kept.
    """

    def __init__(
        self, loader: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: np.dtype
    ) -> None:
        self._loader = loader
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = np.asarray(self._loader()).reshape(self.shape)
        return np.array(self._array[idx])


class SubsetSource(ImageSource):
    """A lazy view of some images of another source, in a given order."""

    def __init__(self, base: ImageSource, indices: np.ndarray) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(base, SubsetSource):  # compose instead of nesting views
            idx = base.indices[idx]
            base = base.base
        self.base: ImageSource = base
        self.indices: np.ndarray = idx
        self.shape = (int(self.indices.size), *base.shape[1:])
        self.dtype = base.dtype

    def _take(self, idx: np.ndarray) -> np.ndarray:
        return self.base[self.indices[idx]]

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - _take overrides
        return self._take(idx)


class GatherSource(ImageSource):
    """Images gathered from several stacks (a STAR or cryoSPARC particle list).

    Parameters
    ----------
    sources : sequence of ImageSource
        One source per distinct stack file, all with the same image shape.
    stack_ids : numpy.ndarray
        ``(N,)`` which source each particle comes from.
    local_indices : numpy.ndarray
        ``(N,)`` 0-based index of each particle inside its source.
    """

    def __init__(
        self, sources: Sequence[ImageSource], stack_ids: np.ndarray, local_indices: np.ndarray
    ) -> None:
        self.sources = list(sources)
        self.stack_ids = np.asarray(stack_ids, dtype=np.int32)
        self.local_indices = np.asarray(local_indices, dtype=np.int64)
        self.shape = (int(self.stack_ids.size), *self.sources[0].shape[1:])
        self.dtype = np.result_type(*[s.dtype for s in self.sources])

    def _take(self, idx: np.ndarray) -> np.ndarray:
        out = self._empty(idx.size)
        if idx.size == 0:
            return out
        sid = self.stack_ids[idx]
        local = self.local_indices[idx]
        order = np.argsort(sid, kind="stable")
        sid_sorted = sid[order]
        cuts = np.flatnonzero(np.diff(sid_sorted)) + 1
        for rows in np.split(order, cuts):
            # each stack file is visited once per batch; the source sorts its own indices
            out[rows] = self.sources[int(sid[rows[0]])][local[rows]]
        return out

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - _take overrides
        return self._take(idx)


class TiffPageSource(ImageSource):
    """A TIFF stack read page by page (compressed or scattered pages cannot be mapped)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._tif: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tif"] = None  # file handles and locks do not pickle; reopen on demand
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:
        import tifffile

        out = self._empty(idx.size)
        with self._lock:
            # Keep one handle: tifffile indexes the page chain once, not on every batch.
            if self._tif is None:
                self._tif = tifffile.TiffFile(self.path)
            pages = self._tif.series[0].pages
            for k, i in enumerate(idx.tolist()):
                out[k] = np.asarray(pages[i].asarray()).reshape(self.shape[1:])
        return out


class ImageFilesSource(ImageSource):
    """One image per file (PNG/JPEG), decoded with Pillow on demand.

    Parameters
    ----------
    files : sequence of pathlib.Path
        The files, in stack order.
    shape : tuple of int
        ``(N, H, W)`` for grey or ``(N, H, W, 3)`` for colour stacks.
    dtype : numpy.dtype
        Common pixel type.
    """

    def __init__(self, files: Sequence[Path], shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.files = [Path(f) for f in files]
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    def _take_sorted(self, idx: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = self._empty(idx.size)
        colour = len(self.shape) == 4
        for k, i in enumerate(idx.tolist()):
            with Image.open(self.files[i]) as opened:
                im: Image.Image = opened
                if colour and im.mode != "RGB":
                    im = im.convert("RGB")
                elif not colour and im.mode in ("1", "P", "LA", "PA"):
                    im = im.convert("L")
                out[k] = np.asarray(im)
        return out


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes (a tiny helper so callers read as prose)."""
    return os.stat(path).st_size
