"""Plain image arrays: ``.npy``, ``.npz``, TIFF stacks, PNG/JPEG files and folders of them.

Shapes accepted everywhere: ``(H, W)`` (one image), ``(N, H, W)``, ``(N, H, W, 1)`` (grey)
and ``(N, H, W, 3)`` (RGB, kept as colour). Opening reads headers only.
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StackError
from .sources import (
    ArraySource,
    FileSource,
    ImageFilesSource,
    ImageSource,
    LazyArraySource,
    TiffPageSource,
    file_size,
)
from .stack import ParticleStack

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "read_image_file",
    "read_image_folder",
    "read_npy",
    "read_npz",
    "read_tiff",
    "stack_shape",
]

IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg")
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def stack_shape(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Check an array's shape and type and say how to view it as a stack.

    Returns
    -------
    tuple of int
        ``(N, H, W)`` or ``(N, H, W, 3)``, with the same number of elements as ``shape``
        (so a C-ordered buffer can be reinterpreted without copying).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise StackError(path, f"unsupported pixel type {dtype} (need integers or floats)")
    expected = "expected images (N, H, W), (H, W) or (N, H, W, 3)"
    if len(shape) < 2:
        raise StackError(path, f"is a {len(shape)}-D array of shape {shape}; {expected}")
    if len(shape) == 2:
        shape = (1, *shape)
    elif len(shape) == 4 and shape[-1] == 1:
        shape = shape[:3]
    elif len(shape) > 3 and not (len(shape) == 4 and shape[-1] == 3):
        raise StackError(path, f"array of shape {shape}; {expected}")
    if shape[0] == 0:
        raise StackError(path, "empty stack (0 images)")
    if shape[1] == 0 or shape[2] == 0:
        raise StackError(path, f"images of size {shape[1]}x{shape[2]}")
    return tuple(int(s) for s in shape)


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _raw_source(
    path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool
) -> ImageSource:
    """A lazy source over an ``.npy`` payload at ``offset`` in ``path``."""
    view = stack_shape(path, shape, dtype)
    if fortran:
        # Rare; a Fortran-ordered array is not image-contiguous, let numpy map it.
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
        return ArraySource(mapped.reshape(view, order="A"))
    return FileSource(path, offset, dtype, view)


def read_npy(path: str | Path) -> ParticleStack:
    """Open a ``.npy`` array lazily (its header is parsed, its data left on disk)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_npy_header(f)
            offset = f.tell()
    except FileNotFoundError:
        raise StackError(path, "no such file") from None
    except ValueError as exc:
        raise StackError(path, f"not a .npy array file ({exc})") from None
    if dtype.hasobject:
        raise StackError(path, "holds Python objects (pickled), not an image array")
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if file_size(path) < needed:
        raise StackError(
            path, f"truncated .npy file: header announces {shape} {dtype} ({needed} bytes)"
        )
    return ParticleStack(path, _raw_source(path, offset, shape, dtype, fortran))


def _stored_member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of an uncompressed zip member's data within the archive."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    # local file header: signature, ..., file name length (offset 26), extra length (28)
    signature, name_len, extra_len = struct.unpack("<I22xHH", local)
    if signature != 0x04034B50:
        raise zipfile.BadZipFile("bad local file header")
    return info.header_offset + 30 + name_len + extra_len


def read_npz(path: str | Path) -> ParticleStack:
    """Open the ``images`` array (or the only array) of an ``.npz`` file lazily.

    Members saved with :func:`numpy.savez` (stored, not compressed) are read in place;
    members of :func:`numpy.savez_compressed` files can only be decompressed whole, which
    happens on first access, not when opening.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
            if not members:
                raise StackError(path, "holds no arrays")
            if "images" in members:
                key = "images"
            elif len(members) == 1:
                key = next(iter(members))
            else:
                keys = ", ".join(sorted(members))
                raise StackError(
                    path, f"holds several arrays and none is called 'images' (keys: {keys})"
                )
            info = zf.getinfo(members[key])
            with zf.open(info) as member:
                shape, fortran, dtype = _read_npy_header(member)
                header_len = member.tell()
            stored = info.compress_type == zipfile.ZIP_STORED
            offset = _stored_member_offset(path, info) + header_len if stored else 0
    except FileNotFoundError:
        raise StackError(path, "no such file") from None
    except (zipfile.BadZipFile, ValueError, struct.error) as exc:
        if isinstance(exc, StackError):
            raise
        raise StackError(path, f"not a valid .npz file ({exc})") from None
    if dtype.hasobject:
        raise StackError(path, f"array '{key}' holds Python objects, not images")
    if stored:
        return ParticleStack(path, _raw_source(path, offset, shape, dtype, fortran))
    view = stack_shape(path, shape, dtype)

    def load() -> np.ndarray:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]

    return ParticleStack(path, LazyArraySource(load, view, dtype))


def read_tiff(path: str | Path) -> ParticleStack:
    """Open a TIFF stack lazily: in place when its data are contiguous, else page by page."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise StackError(path, "holds no images")
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            offset = series.dataoffset
            n_pages = len(series.pages)
    except FileNotFoundError:
        raise StackError(path, "no such file") from None
    except (tifffile.TiffFileError, ValueError, struct.error) as exc:
        if isinstance(exc, StackError):
            raise
        raise StackError(path, f"not a readable TIFF file ({exc})") from None
    samples = shape[-1] if axes.endswith("S") else 1
    if axes.endswith("S") and samples not in (1, 3):
        raise StackError(
            path, f"{samples} samples per pixel (RGBA?); only grey or RGB is supported"
        )
    plane = shape[-3:] if axes.endswith("S") else shape[-2:]
    count = int(np.prod(shape[: len(shape) - len(plane)]))  # leading axes become images
    view = stack_shape(path, (count, *plane), dtype)
    if offset is not None:
        return ParticleStack(path, FileSource(path, offset, dtype, view))
    if n_pages != view[0]:
        # e.g. one tiled page holding a whole volume: only readable whole
        return ParticleStack(path, LazyArraySource(lambda: tifffile.imread(path), view, dtype))
    return ParticleStack(path, TiffPageSource(path, view, dtype))


def _natural_key(path: Path) -> list[object]:
    # "img2.png" before "img10.png": users rarely zero-pad their file names.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _read_image_files(path: Path, files: list[Path]) -> ParticleStack:
    from PIL import Image, UnidentifiedImageError

    sizes, modes = [], []
    for f in files:
        try:
            with Image.open(f) as im:  # reads the header only
                sizes.append(im.size)
                modes.append(im.mode)
        except (UnidentifiedImageError, OSError) as exc:
            raise StackError(path, f"cannot read image {f.name} ({exc})") from None
    for f, size in zip(files, sizes, strict=True):
        if size != sizes[0]:
            raise StackError(
                path,
                f"mixed image sizes: {files[0].name} is {sizes[0][1]}x{sizes[0][0]}"
                f" but {f.name} is {size[1]}x{size[0]} (HxW)",
            )
    w, h = sizes[0]
    colour = any(m in _COLOUR_MODES for m in modes)
    shape: tuple[int, ...]
    dtype: np.dtype
    if colour:
        shape, dtype = (len(files), h, w, 3), np.dtype("uint8")
    elif all(m in ("L", "1", "LA") for m in modes):
        shape, dtype = (len(files), h, w), np.dtype("uint8")
    else:  # 16-bit or float greyscale: float32 holds them all
        shape, dtype = (len(files), h, w), np.dtype("float32")
    metadata = pd.DataFrame({"file_name": [f.name for f in files]})
    return ParticleStack(path, ImageFilesSource(files, shape, dtype), metadata=metadata)


def read_image_folder(path: str | Path) -> ParticleStack:
    """Open a folder of PNG/JPEG images (natural name order) as one lazy stack."""
    path = Path(path)
    files = sorted(
        (
            p
            for p in path.iterdir()
            if p.suffix.lower() in IMAGE_FILE_SUFFIXES and not p.name.startswith(".")
        ),
        key=_natural_key,
    )
    if not files:
        raise StackError(path, "folder holds no PNG or JPEG images")
    return _read_image_files(path, files)


def read_image_file(path: str | Path) -> ParticleStack:
    """Open a single PNG/JPEG image as a stack of one."""
    path = Path(path)
    if not path.is_file():
        raise StackError(path, "no such file")
    return _read_image_files(path, [path])
