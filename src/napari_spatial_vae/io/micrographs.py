"""Micrographs in: single 2-D MRC files, several, a folder, or a RELION micrographs STAR.

A :class:`MicrographSet` reads headers only; :attr:`MicrographSet.images` is a lazy
``(N, H, W)`` stack that reads one micrograph when asked for it. The per-micrograph table of
a STAR file (``rlnMicrographName``, the CTF columns, the optics merged in) is kept so that
extracted particles can carry their micrograph's CTF. Names in a STAR resolve against the
STAR's folder and the current folder (RELION runs from its project folder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StackError
from .mrc import open_mrc
from .paths import resolve_stack_path
from .sources import ArraySource, FileSource, GatherSource, ImageSource
from .star import merge_optics, pixel_sizes_per_row, read_star_blocks

__all__ = [
    "MICROGRAPH_SUFFIXES",
    "MicrographSet",
    "micrograph_key",
    "read_micrographs",
]

MICROGRAPH_SUFFIXES = (".mrc",)
MICROGRAPHS_BLOCK = "micrographs"
# Tolerance on "the same pixel size": MRC headers store float32.
_PIXEL_SIZE_RTOL = 1e-4


def micrograph_key(name: str) -> str:
    """The base name that coordinate files use for a micrograph: no folder, no suffix."""
    return Path(str(name)).stem


@dataclass(repr=False)
class MicrographSet:
    """Micrographs of one size and pixel size, opened lazily.

    Attributes
    ----------
    source : pathlib.Path
        What the user named (a STAR file, a folder, or the first MRC file).
    paths : list of pathlib.Path
        The resolved micrograph files, in order.
    names : list of str
        Names as the input gives them (``rlnMicrographName``, or the path as passed); these
        go into ``rlnMicrographName`` of extracted particles.
    images : ImageSource
        ``(N, H, W)`` lazy micrographs; ``images[i]`` reads micrograph ``i`` only.
    pixel_size : float or None
        Å per pixel (STAR optics, else the MRC headers); None when unknown.
    table : pandas.DataFrame or None
        One row per micrograph, the STAR's columns with the optics merged in.
    """

    source: Path
    paths: list[Path]
    names: list[str]
    images: ImageSource
    pixel_size: float | None
    table: pd.DataFrame | None = None

    @classmethod
    def from_array(
        cls,
        images: np.ndarray,
        names: Sequence[str] | None = None,
        pixel_size: float | None = None,
        table: pd.DataFrame | None = None,
        source: str = "<layer>",
    ) -> MicrographSet:
        """Wrap micrographs already in memory (or a dask array) ``(N, H, W)`` or ``(H, W)``.

        ``names`` default to ``micrograph_001.mrc``, ...; ``table`` is one row per
        micrograph (CTF and optics labels), as a micrographs STAR would give.
        """
        shape = tuple(images.shape)
        if len(shape) == 2:
            images = images[None]
            shape = tuple(images.shape)
        if len(shape) != 3 or shape[0] == 0:
            raise StackError(source, f"micrographs must be (N, H, W) or (H, W), got {shape}")
        n = shape[0]
        names = (
            list(names) if names is not None else [f"micrograph_{k + 1:03d}.mrc" for k in range(n)]
        )
        if len(names) != n:
            raise StackError(source, f"{len(names)} micrograph names for {n} micrographs")
        if table is not None and len(table) != n:
            raise StackError(source, f"{len(table)} table rows for {n} micrographs")
        keys = [micrograph_key(name) for name in names]
        if len(set(keys)) != n:
            raise StackError(source, "two micrographs share a base name")
        paths = [Path(name) for name in names]
        return cls(Path(source), paths, names, ArraySource(images), pixel_size, table)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"MicrographSet(source={str(self.source)!r}, n={len(self)}, shape={self.shape},"
            f" pixel_size={self.pixel_size})"
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of every micrograph."""
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    @property
    def keys(self) -> list[str]:
        """Base names (:func:`micrograph_key`) that coordinate files are matched by."""
        return [micrograph_key(n) for n in self.names]

    def read(self, index: int) -> np.ndarray:
        """Micrograph ``index`` as ``(H, W)`` float32."""
        return np.asarray(self.images[int(index)], dtype=np.float32)


def read_micrographs(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> MicrographSet:
    """Open micrographs lazily.

    Parameters
    ----------
    paths : path or list of paths
        One or several 2-D ``.mrc`` files, a folder of them, or a RELION micrographs STAR
        (``data_micrographs`` or a 3.0 table with ``rlnMicrographName``; optics merged).

    Returns
    -------
    MicrographSet

    Raises
    ------
    StackError
        A missing or unreadable micrograph, a movie (3-D stack) instead of a micrograph,
        micrographs of different sizes or of different pixel sizes, two micrographs with
        the same base name.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [Path(p).expanduser() for p in paths]
    if not files:
        raise StackError("<micrographs>", "no micrograph files given")
    if len(files) == 1 and files[0].suffix.lower() == ".star":
        return _read_micrographs_star(files[0])
    if len(files) == 1 and files[0].is_dir():
        folder = files[0]
        found = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in MICROGRAPH_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            raise StackError(folder, "no .mrc micrographs in this folder")
        return _open_files(folder, found, [str(p) for p in found], None, None)
    for f in files:
        if f.suffix.lower() not in MICROGRAPH_SUFFIXES:
            raise StackError(f, "not a micrograph: expected .mrc files, a folder or a .star file")
    return _open_files(files[0], files, [str(p) for p in files], None, None)


def _read_micrographs_star(path: Path) -> MicrographSet:
    blocks = read_star_blocks(path)
    optics = blocks.get("optics")
    candidates = {n: b for n, b in blocks.items() if "rlnMicrographName" in b.columns}
    if not candidates:
        raise StackError(path, "no rlnMicrographName column (not a micrographs STAR file?)")
    name = MICROGRAPHS_BLOCK if MICROGRAPHS_BLOCK in candidates else next(iter(candidates))
    table = merge_optics(path, candidates[name], optics if name != "optics" else None)
    if len(table) == 0:
        raise StackError(path, f"no micrographs in block data_{name}")
    names = table["rlnMicrographName"].astype(str).tolist()
    base_dirs = [path.parent, Path.cwd()]
    files = []
    for row, micrograph in enumerate(names):
        found = resolve_stack_path(micrograph, base_dirs, None)
        if found is None:
            raise StackError(
                path,
                f"row {row + 1}: micrograph '{micrograph}' not found (looked in {path.parent}"
                f" and the current folder {Path.cwd()})",
            )
        files.append(found)
    return _open_files(path, files, names, table, _star_pixel_size(path, table))


def _star_pixel_size(path: Path, table: pd.DataFrame) -> float | None:
    """The one micrograph pixel size a STAR table gives, None when it gives none."""
    if "rlnMicrographPixelSize" in table.columns:
        values = pd.to_numeric(table["rlnMicrographPixelSize"], errors="coerce").to_numpy()
    else:
        per_row = pixel_sizes_per_row(table)
        if per_row is None:
            return None
        values = per_row
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise StackError(path, f"row {row + 1}: invalid micrograph pixel size {values[row]}")
    differs = np.abs(values - values[0]) > _PIXEL_SIZE_RTOL * values[0]
    if differs.any():
        row = int(np.argmax(differs))
        raise StackError(
            path,
            f"row {row + 1}: micrographs of different pixel sizes in one run ({values[row]:g} Å"
            f" here, {values[0]:g} Å on row 1); extract each pixel size separately",
        )
    return float(values[0])


def _open_files(
    source: Path,
    files: list[Path],
    names: list[str],
    table: pd.DataFrame | None,
    pixel_size: float | None,
) -> MicrographSet:
    """Open every micrograph's header and check they form one consistent set."""
    sources: list[FileSource] = []
    header_sizes: list[float | None] = []
    seen: dict[str, Path] = {}
    for f in files:
        key = micrograph_key(f.name)
        if key in seen:
            raise StackError(
                f, f"two micrographs share the base name '{key}' ({seen[key]}); rename one"
            )
        seen[key] = f
        images, size = open_mrc(f)
        if len(images) != 1:
            raise StackError(
                f, f"holds {len(images)} images (a movie or a stack), not one 2-D micrograph"
            )
        if sources and images.shape[1:] != sources[0].shape[1:]:
            h0, w0 = sources[0].shape[1:]
            h, w = images.shape[1:]
            raise StackError(
                f, f"is {w}x{h} pixels but {files[0].name} is {w0}x{h0}; use one size per run"
            )
        sources.append(images)
        header_sizes.append(size)
    if pixel_size is None:
        pixel_size = _header_pixel_size(files, header_sizes)
    n = len(sources)
    gathered = GatherSource(sources, np.arange(n), np.zeros(n, dtype=np.int64))
    return MicrographSet(source, list(files), list(names), gathered, pixel_size, table)


def _header_pixel_size(files: list[Path], sizes: list[float | None]) -> float | None:
    """The MRC headers' common pixel size (unknown headers are ignored)."""
    known = [(f, s) for f, s in zip(files, sizes, strict=True) if s is not None]
    if not known:
        return None
    first_file, first = known[0]
    for f, s in known[1:]:
        if abs(s - first) > _PIXEL_SIZE_RTOL * first:
            raise StackError(
                f,
                f"micrographs of different pixel sizes in one run ({s:g} Å here,"
                f" {first:g} Å in {first_file.name}); extract each pixel size separately",
            )
    return first
