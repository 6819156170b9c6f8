"""Particle coordinates in: RELION STAR, EMAN/crYOLO ``.box``, crYOLO ``.cbox``, topaz ``.txt``,
cryoSPARC ``.cs``.

Every reader returns the same table, one row per pick:

``micrograph``
    the micrograph's name as the file gives it (a column of the file, or, for a
    per-micrograph file, the file's own base name);
``x``, ``y``
    the particle centre in pixels, x = column, y = row, 0-based, as RELION's
    ``rlnCoordinateX``/``rlnCoordinateY``;
``score``
    the picker's figure of merit (NaN where the format has none);
``file``, ``row``
    where the pick came from (row counts data rows from 1), for error messages.

:func:`match_picks` then ties every pick to a micrograph of a
:class:`~.micrographs.MicrographSet` by base name and checks that it lies on it.

Format notes. ``.box`` (EMAN, crYOLO): ``x y w h`` per line, the box's lower-left corner
then its size; the centre is ``(x + w/2, y + h/2)`` in the same pixel frame as RELION's
coordinates for MRC micrographs. A fifth column, where present, becomes the score. crYOLO
``.cbox`` is a STAR file (``_CoordinateX _CoordinateY _Width _Height _Confidence``; corner
and size as in ``.box``) or, from old crYOLO versions, ``.box`` columns followed by the
confidence. topaz ``.txt``: tab-separated ``image_name x_coord y_coord score`` (centres).
cryoSPARC ``.cs``: ``location/center_x_frac`` and ``..._y_frac`` times
``location/micrograph_shape`` ``(H, W)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .cryosparc import parse_cs_table
from .errors import StackError
from .micrographs import MicrographSet, micrograph_key
from .star import read_star_blocks

__all__ = [
    "COORDINATE_SUFFIXES",
    "PICK_COLUMNS",
    "find_coordinate_files",
    "match_micrograph_key",
    "match_picks",
    "read_coordinate_file",
    "read_coordinates",
]

COORDINATE_SUFFIXES = (".star", ".box", ".cbox", ".txt", ".cs")
PICK_COLUMNS = ("micrograph", "x", "y", "score", "file", "row")
BOX_COLUMNS = (4, 5)
TOPAZ_COLUMNS = ("image_name", "x_coord", "y_coord")
CS_FIELDS = (
    "location/micrograph_path",
    "location/center_x_frac",
    "location/center_y_frac",
    "location/micrograph_shape_0",
    "location/micrograph_shape_1",
)
# figure-of-merit columns, most specific first
STAR_SCORES = ("rlnAutopickFigureOfMerit", "rlnParticleFigureOfMerit")
CS_SCORES = ("pick_stats/ncc_score", "pick_stats/power")


def _picks(
    path: Path,
    micrograph: Sequence[str] | str,
    x: np.ndarray,
    y: np.ndarray,
    score: np.ndarray | None = None,
) -> pd.DataFrame:
    """The common pick table; checks that every coordinate is a finite number."""
    n = len(x)
    table = pd.DataFrame(
        {
            "micrograph": [micrograph] * n if isinstance(micrograph, str) else list(micrograph),
            "x": np.asarray(x, dtype=np.float64),
            "y": np.asarray(y, dtype=np.float64),
            "score": np.full(n, np.nan) if score is None else np.asarray(score, np.float64),
            "file": str(path),
            "row": np.arange(1, n + 1),
        }
    )
    bad = ~(np.isfinite(table["x"]) & np.isfinite(table["y"]))
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise StackError(path, f"row {row + 1}: the coordinate is not a number")
    return table


def _numeric(path: Path, table: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise StackError(
            path, f"row {row + 1}: {column} '{table[column].iloc[row]}' is not a number"
        )
    return values


def read_star_coordinates(path: Path) -> pd.DataFrame:
    """Picks from a RELION coordinate or particle STAR file (or a crYOLO STAR ``.cbox``)."""
    blocks = read_star_blocks(path)
    for block in blocks.values():
        if {"rlnCoordinateX", "rlnCoordinateY"} <= set(block.columns):
            x = _numeric(path, block, "rlnCoordinateX")
            y = _numeric(path, block, "rlnCoordinateY")
            names = (
                block["rlnMicrographName"].astype(str).tolist()
                if "rlnMicrographName" in block.columns
                else path.stem
            )
            score = next((block[c] for c in STAR_SCORES if c in block.columns), None)
            return _picks(path, names, x, y, None if score is None else _numeric_score(score))
        if {"CoordinateX", "CoordinateY", "Width", "Height"} <= set(block.columns):
            corner_x = _numeric(path, block, "CoordinateX")
            corner_y = _numeric(path, block, "CoordinateY")
            x = corner_x + _numeric(path, block, "Width") / 2
            y = corner_y + _numeric(path, block, "Height") / 2
            score = block["Confidence"] if "Confidence" in block.columns else None
            return _picks(path, path.stem, x, y, None if score is None else _numeric_score(score))
    raise StackError(
        path, "no rlnCoordinateX/rlnCoordinateY columns (not a coordinate or particle STAR file?)"
    )


def _numeric_score(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)


def _text_rows(path: Path) -> list[list[str]]:
    """Whitespace-separated fields of every non-empty, non-comment line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StackError(path, f"cannot read file ({exc.strerror})") from None
    return [line.split() for line in text.splitlines() if line.strip() and line[0] != "#"]


def read_box(path: Path, allowed_columns: Sequence[int] = BOX_COLUMNS) -> pd.DataFrame:
    """Picks from an EMAN/crYOLO ``.box`` file (corner x, corner y, width, height[, score])."""
    rows = _text_rows(path)
    values = np.zeros((len(rows), 5), dtype=np.float64)
    values[:, 4] = np.nan
    for k, fields in enumerate(rows):
        if len(fields) not in allowed_columns:
            expected = " or ".join(str(c) for c in allowed_columns)
            raise StackError(
                path, f"row {k + 1}: {len(fields)} columns, expected {expected} (x y width height)"
            )
        try:
            numbers = [float(f) for f in fields[:5]]
        except ValueError:
            raise StackError(
                path, f"row {k + 1}: '{' '.join(fields)}' holds a non-number"
            ) from None
        values[k, : len(numbers)] = numbers
    x = values[:, 0] + values[:, 2] / 2
    y = values[:, 1] + values[:, 3] / 2
    return _picks(path, path.stem, x, y, values[:, 4])


def read_cbox(path: Path) -> pd.DataFrame:
    """Picks from a crYOLO ``.cbox`` file (STAR from crYOLO 1.8, text before)."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace")
    if "data_" in head:
        return read_star_coordinates(path)
    # old text cbox: x y w h confidence [estimated sizes ...]
    rows = _text_rows(path)
    for k, fields in enumerate(rows):
        if len(fields) < 5:
            raise StackError(
                path, f"row {k + 1}: {len(fields)} columns, expected at least 5 (x y w h score)"
            )
    table = pd.DataFrame([r[:5] for r in rows], columns=["x", "y", "w", "h", "score"])
    numbers = {c: _numeric(path, table, c) for c in table.columns}
    return _picks(
        path,
        path.stem,
        numbers["x"] + numbers["w"] / 2,
        numbers["y"] + numbers["h"] / 2,
        numbers["score"],
    )


def read_topaz(path: Path) -> pd.DataFrame:
    """Picks from a topaz ``.txt`` file (``image_name x_coord y_coord [score]``, centres)."""
    try:
        table = pd.read_csv(path, sep=r"\s+", dtype={"image_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StackError(path, f"not a topaz coordinate file ({type(exc).__name__})") from None
    missing = [c for c in TOPAZ_COLUMNS if c not in table.columns]
    if missing:
        raise StackError(
            path,
            f"no {', '.join(missing)} column(s) (a topaz file starts with a header line"
            " image_name x_coord y_coord score)",
        )
    score = _numeric(path, table, "score") if "score" in table.columns else None
    return _picks(
        path,
        table["image_name"].astype(str).tolist(),
        _numeric(path, table, "x_coord"),
        _numeric(path, table, "y_coord"),
        score,
    )


def read_cs_coordinates(path: Path) -> pd.DataFrame:
    """Picks from a cryoSPARC ``.cs`` file (fractional centres times the micrograph shape)."""
    table = parse_cs_table(path)
    missing = [c for c in CS_FIELDS if c not in table.columns]
    if missing:
        raise StackError(path, f"no {', '.join(missing)} field(s) (not a cryoSPARC pick file?)")
    height = table["location/micrograph_shape_0"].to_numpy(dtype=np.float64)
    width = table["location/micrograph_shape_1"].to_numpy(dtype=np.float64)
    x = table["location/center_x_frac"].to_numpy(dtype=np.float64) * width
    y = table["location/center_y_frac"].to_numpy(dtype=np.float64) * height
    names = table["location/micrograph_path"].astype(str).str.removeprefix(">").tolist()
    score = next((table[c] for c in CS_SCORES if c in table.columns), None)
    return _picks(path, names, x, y, None if score is None else _numeric_score(score))


def read_coordinate_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Picks from one coordinate file of any supported kind (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StackError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".star":
        return read_star_coordinates(path)
    if suffix == ".box":
        return read_box(path)
    if suffix == ".cbox":
        return read_cbox(path)
    if suffix == ".txt":
        return read_topaz(path)
    if suffix == ".cs":
        return read_cs_coordinates(path)
    raise StackError(
        path,
        f"unknown coordinate file type '{path.suffix}'; supported: "
        + ", ".join(COORDINATE_SUFFIXES),
    )


def find_coordinate_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """Expand folders into their coordinate files (sorted; hidden files skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in (Path(q).expanduser() for q in paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.suffix.lower() in COORDINATE_SUFFIXES and not f.name.startswith(".")
            )
            if not found:
                raise StackError(
                    p, f"no coordinate files ({', '.join(COORDINATE_SUFFIXES)}) in this folder"
                )
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise StackError("<coordinates>", "no coordinate files given")
    return files


def read_coordinates(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> pd.DataFrame:
    """Picks from one or several coordinate files or folders, in file order.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PICK_COLUMNS`; ``micrograph`` is the name as the file gives it.
    """
    tables = [read_coordinate_file(f) for f in find_coordinate_files(paths)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=PICK_COLUMNS)


def match_micrograph_key(name: str, keys: dict[str, int]) -> int | None:
    """Index of the micrograph a coordinate file's name refers to, or None.

    Exact base names first; else the longest micrograph base name that the name contains
    as a whole ``_``-separated part (``mic01_autopick`` from RELION, ``012345_mic01`` and
    ``012345_mic01_patch_aligned_doseweighted`` from cryoSPARC).
    """
    stem = micrograph_key(name)
    if stem in keys:
        return keys[stem]
    best: tuple[int, int] | None = None
    for key, index in keys.items():
        if (
            stem.startswith(key + "_") or stem.endswith("_" + key) or ("_" + key + "_") in stem
        ) and (best is None or len(key) > best[0]):
            best = (len(key), index)
    return None if best is None else best[1]


def match_picks(picks: pd.DataFrame, micrographs: MicrographSet) -> pd.DataFrame:
    """Tie every pick to a micrograph and check it lies on it.

    Parameters
    ----------
    picks : pandas.DataFrame
        :func:`read_coordinates`'s table.
    micrographs : MicrographSet
        The micrographs the picks were made on.

    Returns
    -------
    pandas.DataFrame
        ``picks`` with an added ``index`` column (the micrograph's position in
        ``micrographs``), in the input order.

    Raises
    ------
    StackError
        Naming the coordinate file and row: a micrograph that is not among
        ``micrographs``, or a coordinate outside its micrograph.
    """
    keys = {k: i for i, k in enumerate(micrographs.keys)}
    names = picks["micrograph"].astype(str)
    cache = {name: match_micrograph_key(name, keys) for name in names.unique()}
    index = names.map(cache)
    unmatched = index.isna().to_numpy()
    if unmatched.any():
        k = int(np.argmax(unmatched))
        shown = ", ".join(list(keys)[:3]) + (", ..." if len(keys) > 3 else "")
        raise StackError(
            picks["file"].iloc[k],
            f"row {picks['row'].iloc[k]}: micrograph '{names.iloc[k]}' is not among the"
            f" {len(keys)} micrographs ({shown})",
        )
    out = picks.copy()
    out["index"] = index.to_numpy(dtype=np.int64)
    height, width = micrographs.shape
    x, y = out["x"].to_numpy(), out["y"].to_numpy()
    outside = (x < 0) | (y < 0) | (x > width - 1) | (y > height - 1)
    if outside.any():
        k = int(np.argmax(outside))
        raise StackError(
            out["file"].iloc[k],
            f"row {out['row'].iloc[k]}: coordinate ({x[k]:g}, {y[k]:g}) lies outside"
            f" micrograph '{micrographs.names[out['index'].iloc[k]]}' ({width}x{height} pixels;"
            " binned coordinates?)",
        )
    return out
