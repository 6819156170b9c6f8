"""cryoSPARC particle files (``.cs``).

Two layouts exist. cryoSPARC itself writes a numpy structured array with ``np.save`` (the file
starts with numpy's ``\\x93NUMPY`` magic). cryosparc-tools (``Dataset.save(path,
format=CSDAT_FORMAT)``, the "newest" format since cryosparc-tools 4.4) writes a compressed
column stream that starts with ``\\x95CSDAT``: a JSON header, then LZ4-compressed columns and a
string heap. Only cryosparc-tools decodes the second layout reliably (its compression is
defined by that package's C code), so it is read through ``cryosparc.dataset.Dataset`` when that
package is installed, and named precisely otherwise.
"""

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

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"


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
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == CSDAT_MAGIC:
        array = _load_csdat(path)
    elif magic.startswith(b"PK"):
        raise StackError(path, "is a zip (.npz) archive, not a cryoSPARC .cs file")
    elif magic != NUMPY_MAGIC:
        raise StackError(
            path,
            f"not a cryoSPARC .cs file (starts with {magic!r}; expected numpy's {NUMPY_MAGIC!r}"
            f" or cryosparc-tools' {CSDAT_MAGIC!r})",
        )
    else:
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise StackError(path, f"not a cryoSPARC .cs file ({exc})") from None
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
        # explicit width: reshape(0, -1) is ambiguous for an empty dataset
        flat = column.reshape(len(array), int(np.prod(column.shape[1:])))
        for k in range(flat.shape[1]):
            columns[f"{name}_{k}"] = flat[:, k]
    return pd.DataFrame(columns)


def _load_csdat(path: Path) -> np.ndarray:
    """A cryosparc-tools CSDAT file as the same structured array that ``np.load`` gives."""
    try:
        from cryosparc.dataset import Dataset
    except ImportError:
        raise StackError(
            path,
            "a cryoSPARC dataset in cryosparc-tools' compressed CSDAT layout (starts with"
            " \\x95CSDAT); install cryosparc-tools (pip install cryosparc-tools) to read it, or"
            " re-save it in the numpy layout with cryosparc-tools:"
            " Dataset.load(path).save(new_path)",
        ) from None
    try:
        dataset = Dataset.load(path)
        # fixed=True: strings as fixed-width bytes, the layout cryoSPARC's numpy files have
        return np.asarray(dataset.to_records(fixed=True))
    except Exception as exc:  # cryosparc-tools raises DatasetLoadError and others
        cause = exc.__cause__ or exc
        raise StackError(
            path,
            f"cannot read this CSDAT (cryosparc-tools) .cs file ({type(cause).__name__}: {cause})",
        ) from None


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
        raise StackError(path, "no particle rows (an empty cryoSPARC dataset or selection)")
    stacks = table["blob/path"].astype(str).str.removeprefix(">")
    local = table["blob/idx"].to_numpy(dtype=np.int64)
    # The absolute location: for "particles.cs" opened inside its job folder the project
    # folder is the parent of the current folder, but Path(".").parent is Path(".").
    job_folder = Path(os.path.abspath(path)).parent
    images = gather_stacks(
        path,
        stacks.to_numpy(dtype=object),
        local,
        [job_folder, job_folder.parent],
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
