"""cryoSPARC particle files (``.cs``: a numpy structured array saved with ``np.save``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .ctf_params import ctf_from_cs_table
from .errors import StackError
from .gather import gather_stacks
from .mrc import pixel_size_from_voxel
from .paths import as_datadir
from .stack import ParticleStack

__all__ = ["parse_cs_table", "read_cs_stack"]


def _decode(column: np.ndarray) -> np.ndarray:
    try:
        return column.astype(str)
    except UnicodeDecodeError:  # non-ASCII bytes: decode as UTF-8, never fail on a name
        return np.array([b.decode("utf-8", errors="replace") for b in column], dtype=object)


def parse_cs_table(path: str | Path) -> pd.DataFrame:
    """A cryoSPARC ``.cs`` file as a flat table, one row per particle.

    Byte strings become ``str``; vector fields become one column per element, named
    ``<field>_<k>`` (``alignments2D/shift`` -> ``alignments2D/shift_0``, ``..._1``).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.cs`` file (loaded with ``allow_pickle=False``: it is data, not code).

    Returns
    -------
    pandas.DataFrame
        Columns in field order.
    """
    path = Path(path)
    if not path.is_file():
        raise StackError(path, "no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StackError(path, f"not a cryoSPARC .cs file ({exc})") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise StackError(path, "is a zip (.npz) archive, not a cryoSPARC .cs file")
    if array.dtype.names is None or array.ndim != 1:
        raise StackError(
            path,
            f"not a cryoSPARC .cs file (expected a 1-D structured array, got {array.dtype}"
            f" of shape {array.shape})",
        )
    columns: dict[str, np.ndarray] = {}
    for name in array.dtype.names:
        column = array[name]
        if column.ndim == 1:
            columns[name] = _decode(column) if column.dtype.kind == "S" else column
            continue
        flat = column.reshape(len(array), -1)
        for k in range(flat.shape[1]):
            columns[f"{name}_{k}"] = flat[:, k]
    return pd.DataFrame(columns)


def read_cs_stack(
    path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
) -> ParticleStack:
    """Open the particles of a cryoSPARC ``.cs`` file lazily.

    ``blob/path`` names the stack (a leading ``>`` marks a path relative to the cryoSPARC
    project folder, which is usually the parent of the job folder holding the ``.cs``);
    ``blob/idx`` is the 0-based image index in it.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.cs`` file.
    datadir : str or pathlib.Path, optional
        Fallback folder for the stacks.

    Returns
    -------
    ParticleStack
        Images in file order; metadata is :func:`parse_cs_table`'s table; pixel size from
        ``blob/psize_A``.
    """
    path = Path(path)
    table = parse_cs_table(path)
    if not {"blob/path", "blob/idx"} <= set(table.columns):
        raise StackError(
            path, "no blob/path and blob/idx fields (not a particle .cs file, e.g. a passthrough?)"
        )
    if len(table) == 0:
        raise StackError(path, "no particle rows")
    stacks = table["blob/path"].str.removeprefix(">")
    local = table["blob/idx"].to_numpy(dtype=np.int64)
    images = gather_stacks(
        path,
        stacks.to_numpy(dtype=object),
        local,
        [path.parent, path.parent.parent],
        as_datadir(datadir),
        "blob/path",
        index_base=0,
    )
    pixel_size = None
    if "blob/psize_A" in table.columns:
        sizes = table["blob/psize_A"].to_numpy(dtype=np.float64)
        if np.all(sizes == sizes[0]):
            pixel_size = pixel_size_from_voxel(sizes[0], sizes[0])
    names = [f"{i + 1:06d}@{s}" for i, s in zip(local.tolist(), stacks.tolist(), strict=True)]
    ctf, ctf_problem = ctf_from_cs_table(path, table)
    return ParticleStack(path, images, pixel_size, table, names, ctf, ctf_problem)
