"""One entry point that opens any supported particle stack."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .arrays import (
    IMAGE_FILE_SUFFIXES,
    read_image_file,
    read_image_folder,
    read_npy,
    read_npz,
    read_tiff,
)
from .cryosparc import read_cs_stack
from .errors import StackError
from .mrc import open_mrc
from .stack import ParticleStack
from .star import read_star_stack

__all__ = ["SUPPORTED_SUFFIXES", "can_read", "read_mrc_stack", "read_stack"]

MRC_SUFFIXES = (".mrc", ".mrcs", ".map")
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    *MRC_SUFFIXES,
    ".star",
    ".cs",
    ".npy",
    ".npz",
    ".tif",
    ".tiff",
    *IMAGE_FILE_SUFFIXES,
)


def read_mrc_stack(path: str | Path) -> ParticleStack:
    """Open an MRC image, stack or map as a lazy ``(N, H, W)`` stack."""
    path = Path(path)
    images, pixel_size = open_mrc(path)
    return ParticleStack(path, images, pixel_size)


def read_stack(
    path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
) -> ParticleStack:
    """Open a particle stack of any supported kind, lazily.

    Structure is validated here (headers, sizes, that every referenced stack exists and
    holds the referenced images), which is cheap; pixel values are only checked as they are
    read (:meth:`ParticleStack.read_batch`).

    Parameters
    ----------
    path : str or os.PathLike
        ``.mrc``/``.mrcs``/``.map``, RELION ``.star``, cryoSPARC ``.cs``, ``.npy``,
        ``.npz``, ``.tif``/``.tiff``, a PNG/JPEG file, or a folder of PNG/JPEG images.
    datadir : str or os.PathLike, optional
        Where the stacks named in a ``.star``/``.cs`` file live, when not beside it.

    Returns
    -------
    ParticleStack
        Lazy images ``(N, H, W)`` (``(N, H, W, 3)`` for colour), pixel size, metadata.

    Raises
    ------
    StackError
        With a one-line ``"<path>: <problem>"`` message.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise StackError(path, "no such file or folder")
    if path.is_dir():
        return read_image_folder(path)
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return read_mrc_stack(path)
    if suffix == ".star":
        return read_star_stack(path, datadir)
    if suffix == ".cs":
        return read_cs_stack(path, datadir)
    if suffix == ".npy":
        return read_npy(path)
    if suffix == ".npz":
        return read_npz(path)
    if suffix in (".tif", ".tiff"):
        return read_tiff(path)
    if suffix in IMAGE_FILE_SUFFIXES:
        return read_image_file(path)
    raise StackError(
        path,
        f"unknown file type '{path.suffix or path.name}'; supported: "
        + ", ".join(SUPPORTED_SUFFIXES)
        + " or a folder of PNG/JPEG images",
    )


def can_read(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> bool:
    """Cheap check (suffix, or a folder holding PNG/JPEG files) for napari's reader hook.

    A list of paths is readable when every path is. Nothing is opened.
    """
    if isinstance(path, (list, tuple)):
        return bool(path) and all(can_read(p) for p in path)
    p = Path(path)  # type: ignore[arg-type]  # lists were handled above
    if p.is_dir():
        try:
            with os.scandir(p) as entries:
                return any(
                    Path(e.name).suffix.lower() in IMAGE_FILE_SUFFIXES
                    for e in entries
                    if not e.name.startswith(".")
                )
        except OSError:
            return False
    return p.suffix.lower() in SUPPORTED_SUFFIXES
