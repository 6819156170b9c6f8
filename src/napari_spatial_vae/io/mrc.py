"""Open MRC images, stacks and maps (``.mrc``, ``.mrcs``, ``.map``) lazily.

Only the header goes through :mod:`mrcfile` (``header_only=True``: the data are neither
read nor mapped); pixels are then read on demand by :class:`~.sources.FileSource`. Every
3-D file is treated as a stack of sections ``(N, H, W)`` whatever its space group says:
many particle stacks are stamped as volumes (ispg=1), and a volume is a stack of sections
anyway. A single 2-D image becomes a stack of one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.utils import data_dtype_from_header

from .errors import StackError
from .sources import FileSource, file_size

__all__ = ["MRC_HEADER_BYTES", "looks_like_text", "open_mrc", "pixel_size_from_voxel"]

MRC_HEADER_BYTES = 1024
# Dimensions beyond these are garbage from a file that is not an MRC file.
_MAX_SIDE = 1 << 20
_MAX_SECTIONS = 1 << 31


def looks_like_text(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) is plain text.

    An MRC header always holds binary zeros (unused fields, padding), so a NUL-free,
    printable start means a STAR file, a list or similar under an image file's name.
    """
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # the cut at len(head) may split a multi-byte character; judge the rest
        text = head[:-4].decode("utf-8", errors="replace")
    return all(ch.isprintable() or ch in "\t\r\n\f\v" for ch in text)


def pixel_size_from_voxel(vx: float, vy: float) -> float | None:
    """In-plane pixel size in Å, or None where the header does not know it.

    Zero (never set) and negative values mean unknown; so do non-square pixels, which a
    single pixel size cannot describe. The float32 header value is returned at its
    shortest decimal spelling (3.5953124, not 3.595312356948853).
    """
    vx, vy = float(vx), float(vy)
    if not np.isfinite(vx) or vx <= 0:
        return None
    if vy > 0 and abs(vx - vy) > 1e-3 * vx:
        return None
    return float(np.format_float_positional(np.float32(vx), unique=True, trim="-"))


def _read_header(path: Path) -> tuple[np.recarray, float | None, bool, str]:
    """Header, pixel size, whether the MAP ID was found, and the strict-open complaint."""
    # mrcfile warns about every header oddity; callers get one StackError or nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, mode="r", header_only=True) as mrc:
                vs = mrc.voxel_size
                return mrc.header.copy(), pixel_size_from_voxel(vs.x, vs.y), True, ""
        except ValueError as exc:
            strict_problem = str(exc).rstrip(".")
        # RELION and cryoDRGN write stacks without the "MAP " ID (and a zero machine
        # stamp); the rest of such headers is fine, so retry permissively.
        try:
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                if mrc.header is None:
                    raise StackError(path, f"not an MRC file ({strict_problem})")
                vs = mrc.voxel_size
                return mrc.header.copy(), pixel_size_from_voxel(vs.x, vs.y), False, strict_problem
        except (ValueError, OSError) as exc:
            if isinstance(exc, StackError):
                raise
            raise StackError(path, f"not an MRC file ({strict_problem}; {exc})") from exc


def open_mrc(path: str | Path) -> tuple[FileSource, float | None]:
    """Validate an MRC file's structure and return a lazy source over its images.

    Parameters
    ----------
    path : str or pathlib.Path
        An MRC image, stack or map.

    Returns
    -------
    source : FileSource
        ``(N, H, W)`` images in the file's data type (float32, float16, int8, int16,
        uint16, ...); nothing is read yet.
    pixel_size : float or None
        Å per pixel from the header, None when zero, negative or non-square.

    Raises
    ------
    StackError
        Missing, empty, text, truncated or non-MRC files; unsupported modes; a header that
        announces more data than the file holds.
    """
    path = Path(path)
    try:
        size = file_size(path)
        with open(path, "rb") as f:
            head = f.read(MRC_HEADER_BYTES)
    except FileNotFoundError:
        raise StackError(path, "no such file") from None
    except IsADirectoryError:
        raise StackError(path, "is a folder, not an MRC file") from None
    except OSError as exc:
        raise StackError(path, f"cannot read file ({exc.strerror})") from None
    if size == 0:
        raise StackError(path, "empty file (0 bytes), not an MRC file")
    if looks_like_text(head):
        raise StackError(path, "is a text file, not an MRC image file")
    if size < MRC_HEADER_BYTES:
        raise StackError(
            path, f"truncated MRC file: {size} bytes, shorter than the 1024-byte MRC header"
        )

    header, pixel_size, has_map_id, strict_problem = _read_header(path)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    nsymbt, mode = int(header.nsymbt), int(header.mode)
    plausible = (
        0 < nx <= _MAX_SIDE and 0 < ny <= _MAX_SIDE and 0 <= nz < _MAX_SECTIONS and nsymbt >= 0
    )
    if not has_map_id and not plausible:
        raise StackError(path, f"not an MRC file ({strict_problem}; header sizes {nx}x{ny}x{nz})")
    if not plausible:
        raise StackError(
            path, f"invalid MRC header: sizes nx={nx} ny={ny} nz={nz}, nsymbt={nsymbt}"
        )
    if mode in (3, 4):
        raise StackError(path, f"complex-valued MRC data (mode {mode}) are not images")
    if mode == 101:
        raise StackError(path, "packed 4-bit MRC data (mode 101) are not supported")
    try:
        dtype = np.dtype(data_dtype_from_header(header))
    except ValueError:
        what = "not an MRC file" if not has_map_id else "unsupported MRC data mode"
        raise StackError(path, f"{what} (mode {mode})") from None
    if nz == 0:
        raise StackError(path, "empty stack (0 images)")

    start = MRC_HEADER_BYTES + nsymbt
    data_bytes = nx * ny * nz * dtype.itemsize
    if start + data_bytes > size:
        if not has_map_id and size - start < nx * ny * dtype.itemsize:
            raise StackError(path, f"not an MRC file ({strict_problem})")
        raise StackError(
            path,
            f"header announces {nz} image(s) of {ny}x{nx} {dtype.name} ({data_bytes} bytes"
            f" after {start} header bytes) but the file holds only {size} bytes:"
            " truncated file or wrong header",
        )
    if not has_map_id and start + data_bytes != size:
        # Without the ID, a header that does not describe the file exactly is garbage.
        raise StackError(
            path,
            f"not an MRC file ({strict_problem}; the header describes {start + data_bytes}"
            f" bytes, the file has {size})",
        )
    return FileSource(path, start, dtype, (nz, ny, nx)), pixel_size
