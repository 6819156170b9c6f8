"""Write and read the pose table (theta, dx, dy, z ...) as CSV or RELION 3.1 STAR.

Geometry (see docs/io.md for the reasoning): in the displayed image (x right, y down,
i.e. x = column and y = row of the array, origin at the geometric image centre) a particle
is the pose-free reconstruction rotated by ``theta`` counter-clockwise on screen, then
centred at ``(dx, dy)`` pixels. RELION works in the same array frame (first pixel upper
left), rotates the reference into the image by ``rlnAnglePsi`` with the matrix
``[[cos, sin], [-sin, cos]]`` (counter-clockwise on that screen) about pixel
``(W // 2, H // 2)``, and its ``rlnOrigin`` shifts the image back onto that centre.
Therefore::

    rlnAnglePsi     = degrees(theta)                       (no sign flip)
    rlnOriginX[px]  = (W // 2 - (W - 1) / 2) - dx          (sign flip, + half a pixel
    rlnOriginY[px]  = (H // 2 - (H - 1) / 2) - dy           for even box sizes)
    rlnOriginXAngst = rlnOriginX[px] * pixel_size
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_spatial_vae._atomic import atomic_output

from .errors import StackError
from .mrc import open_mrc
from .paths import as_datadir, describe_search, resolve_stack_path
from .sources import ArraySource, FileSource, GatherSource, SubsetSource
from .stack import ParticleStack
from .star import (
    merge_optics,
    pixel_sizes_per_row,
    read_star_blocks,
    split_image_names,
)
from .writers import write_mrcs

__all__ = ["read_poses", "relion_centre_offset", "write_poses"]

_PREFIX = "rlnSpatialVae"
_FLOAT_FORMAT = "%.10g"
_MRC_SUFFIXES = (".mrc", ".mrcs", ".map")
# The input's pose labels: kept as rlnSpatialVaeInput<label without "rln"> when ours replace them.
_INPUT_POSE = (
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginX",
    "rlnOriginY",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
)
# What RELION assumes most often; written (and reported) when the input has no value.
OPTICS_DEFAULTS = {
    "rlnVoltage": 300.0,  # kV
    "rlnSphericalAberration": 2.7,  # mm
    "rlnAmplitudeContrast": 0.1,
}
DEFAULT_PIXEL_SIZE = 1.0  # Å, when the input has no pixel size
# Labels that RELION 3.1+ keeps in data_optics rather than per particle.
OPTICS_LABELS = (
    "rlnOpticsGroupName",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnMicrographOriginalPixelSize",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMtfFileName",
)
# cryoSPARC fields with a RELION equivalent: (cs field, RELION label, scale)
_CS_TO_RELION = (
    ("ctf/df1_A", "rlnDefocusU", 1.0),
    ("ctf/df2_A", "rlnDefocusV", 1.0),
    ("ctf/df_angle_rad", "rlnDefocusAngle", 180.0 / np.pi),
    ("ctf/phase_shift_rad", "rlnPhaseShift", 180.0 / np.pi),
    ("ctf/accel_kv", "rlnVoltage", 1.0),
    ("ctf/cs_mm", "rlnSphericalAberration", 1.0),
    ("ctf/amp_contrast", "rlnAmplitudeContrast", 1.0),
    ("ctf/bfactor", "rlnCtfBfactor", 1.0),
    ("ctf/scale", "rlnCtfScalefactor", 1.0),
    ("blob/psize_A", "rlnImagePixelSize", 1.0),
)


def relion_centre_offset(size: int | None) -> float:
    """RELION's rotation centre minus the geometric image centre, in pixels.

    RELION rotates about pixel ``size // 2``; the geometric centre is ``(size - 1) / 2``.
    They differ by half a pixel for even sizes, and not at all for odd sizes or when the
    size is unknown (None).
    """
    if size is None:
        return 0.0
    return size // 2 - (size - 1) / 2


# ---------------------------------------------------------------------------- names


def _star_label(column: str) -> str:
    """STAR label for a pose-table column other than theta/dx/dy."""
    if column == "theta_std":
        return f"{_PREFIX}AnglePsiStd"
    if column == "dx_std":
        return f"{_PREFIX}OriginXStd"
    if column == "dy_std":
        return f"{_PREFIX}OriginYStd"
    if column == "image_index":
        return f"{_PREFIX}ImageIndex"
    m = re.fullmatch(r"z(\d+)(_std)?", column)
    if m:
        return f"{_PREFIX}Z{m.group(1)}{'Std' if m.group(2) else ''}"
    return f"{_PREFIX}_{column}"


def _pose_column(label: str) -> str | None:
    """Inverse of :func:`_star_label`; None for labels that are not ours."""
    fixed = {
        f"{_PREFIX}AnglePsiStd": "theta_std",
        f"{_PREFIX}OriginXStd": "dx_std",
        f"{_PREFIX}OriginYStd": "dy_std",
        f"{_PREFIX}ImageIndex": "image_index",
    }
    if label in fixed:
        return fixed[label]
    m = re.fullmatch(rf"{_PREFIX}Z(\d+)(Std)?", label)
    if m:
        return f"z{m.group(1)}{'_std' if m.group(2) else ''}"
    if label.startswith(f"{_PREFIX}_"):
        return label[len(_PREFIX) + 1 :]
    return None


# ---------------------------------------------------------------------------- writing


def _relion_metadata(metadata: pd.DataFrame) -> pd.DataFrame:
    """The RELION columns of a stack's metadata (cryoSPARC fields translated)."""
    out = metadata[[c for c in metadata.columns if str(c).startswith("rln")]].copy()
    if "blob/idx" in metadata.columns:  # a cryoSPARC table
        for field, label, scale in _CS_TO_RELION:
            if field in metadata.columns and label not in out.columns:
                out[label] = metadata[field].to_numpy(dtype=np.float64) * scale
        if "ctf/exp_group_id" in metadata.columns and "rlnOpticsGroup" not in out.columns:
            out["rlnOpticsGroup"] = pd.factorize(metadata["ctf/exp_group_id"], sort=True)[0] + 1
    return out


def _rows(path: Path, table: pd.DataFrame, stack: ParticleStack | None) -> np.ndarray:
    """Index into the stack of each pose row."""
    if "image_index" in table.columns:
        rows = table["image_index"].to_numpy()
        if rows.dtype.kind not in "iu":
            raise StackError(path, "image_index must hold integers")
        if stack is not None and len(rows) and (rows.min() < 0 or rows.max() >= len(stack)):
            raise StackError(path, f"image_index outside 0..{len(stack) - 1}")
        return rows.astype(np.int64)
    if stack is not None and len(table) != len(stack):
        raise StackError(
            path, f"{len(table)} poses for {len(stack)} images (add an image_index column)"
        )
    return np.arange(len(table), dtype=np.int64)


@dataclass
class _StarOutput:
    """What writing a STAR file involves besides the file itself."""

    links: list[tuple[Path, Path]] = field(default_factory=list)  # (.mrcs name, target)
    copy: tuple[Path, ParticleStack] | None = None  # (.mrcs to write, images in row order)
    notes: list[str] = field(default_factory=list)


def _mrc_files(stack: ParticleStack, rows: np.ndarray) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The MRC files behind ``stack`` images ``rows``: (files, file per row, 0-based index).

    Empty ``files`` when the images do not come from MRC files (numpy, TIFF, PNG, memory).
    """
    source = stack.images
    idx = rows
    if isinstance(source, SubsetSource):
        idx = source.indices[idx]
        source = source.base
    if isinstance(source, GatherSource):  # a cryoSPARC (or STAR) list of stacks
        files = [Path(s.path) for s in source.sources if isinstance(s, FileSource)]
        if len(files) == len(source.sources):
            return files, source.stack_ids[idx].astype(np.int64), source.local_indices[idx]
    elif isinstance(source, FileSource) and source.path.suffix.lower() in _MRC_SUFFIXES:
        return [source.path], np.zeros(len(idx), np.int64), idx
    return [], np.zeros(0, np.int64), np.zeros(0, np.int64)


def _relative(target: Path, folder: Path) -> str:
    """``target`` relative to ``folder`` (absolute when no relative path exists)."""
    try:
        return Path(os.path.relpath(target, folder)).as_posix()
    except ValueError:  # another drive on Windows
        return target.as_posix()


def _mrcs_link(target: Path, folder: Path, taken: set[Path]) -> Path:
    """A free ``<stem>.mrcs`` name in ``folder`` for a link to ``target`` (reused if it is one)."""
    for k in range(10_000):
        candidate = folder / (f"{target.stem}.mrcs" if k == 0 else f"{target.stem}_{k}.mrcs")
        if candidate in taken:
            continue
        if not os.path.lexists(candidate):
            return candidate
        if candidate.exists() and os.path.samefile(candidate, target):
            return candidate
    raise StackError(target, "no free name for an .mrcs link to it")


def _image_names(
    path: Path, stack: ParticleStack | None, rows: np.ndarray, out: _StarOutput
) -> list[str]:
    """``rlnImageName`` for each row, resolvable from the STAR file's folder.

    RELION reads ``N@file`` only from ``.mrcs`` files (a ``.mrc`` is a single image or a
    volume to it), so ``.mrc``/``.map`` stacks get an ``.mrcs`` link beside the STAR file,
    and images that are not in MRC files at all are written there as ``<stem>_particles.mrcs``.
    """
    folder = Path(os.path.abspath(path)).parent
    if stack is None:
        name = f"{path.stem}.mrcs"
        out.notes.append(
            f"{path}: no stack given; rlnImageName points at {name}, which must hold the images"
        )
        return [f"{i + 1:06d}@{name}" for i in rows.tolist()]
    files, which, local = _mrc_files(stack, rows)
    if files:
        names: list[str] = []
        taken: set[Path] = set()
        for f in files:
            target = Path(os.path.abspath(f))
            if target.suffix.lower() == ".mrcs":
                names.append(_relative(target, folder))
                continue
            link = _mrcs_link(target, folder, taken)
            taken.add(link)
            if not os.path.lexists(link):
                out.links.append((link, target))
            names.append(link.name)
        return [
            f"{i + 1:06d}@{names[w]}" for w, i in zip(which.tolist(), local.tolist(), strict=True)
        ]
    base = stack.images.base if isinstance(stack.images, SubsetSource) else stack.images
    if stack.path.exists() and not isinstance(base, ArraySource):
        # numpy, TIFF, PNG...: RELION needs an MRC copy (in-memory stacks have no file)
        copy = folder / f"{path.stem}_particles.mrcs"
        out.copy = (copy, stack.subset(rows))
        out.notes.append(
            f"{path}: wrote the {len(rows)} particle images to {copy.name} beside it"
            f" (RELION cannot read {stack.path.suffix or 'image folders'})"
        )
        return [f"{i + 1:06d}@{copy.name}" for i in range(len(rows))]
    name = stack.path.with_suffix(".mrcs").name
    out.notes.append(f"{path}: rlnImageName points at {name}, which must hold the images")
    return [f"{i + 1:06d}@{name}" for i in rows.tolist()]


def _box_size(path: Path, stack: ParticleStack | None, image_size: int | None) -> int:
    """The square box size in pixels, from the stack or ``image_size``."""
    if stack is not None:
        height, width = stack.shape[1], stack.shape[2]
        if height != width:
            raise StackError(
                path,
                f"images are {height}x{width} (HxW); a RELION STAR file describes square boxes"
                " only (write .csv instead)",
            )
        return int(width)
    if image_size is None:
        raise StackError(path, "a STAR file needs the box size: pass the stack or image_size")
    if int(image_size) < 1:
        raise StackError(path, f"invalid image_size {image_size}")
    return int(image_size)


def _move_input_poses(meta: pd.DataFrame) -> pd.DataFrame:
    """Keep the input's orientation and origins under ``rlnSpatialVaeInput...`` labels.

    Our pose is in-plane only; leaving the input's ``rlnAngleRot``/``rlnAngleTilt`` next to
    our ``rlnAnglePsi`` would describe a 3-D orientation that nobody estimated.
    """
    meta = meta.drop(columns=[c for c in meta.columns if str(c).startswith(_PREFIX)])
    renamed = {c: f"{_PREFIX}Input{c[3:]}" for c in _INPUT_POSE if c in meta.columns}
    return meta.rename(columns=renamed)


def _fill_optics(
    path: Path, optics: pd.DataFrame, given: dict[str, float], out: _StarOutput
) -> None:
    """Fill the optics values RELION requires, from ``given`` or documented defaults."""
    defaulted = []
    for label, default in OPTICS_DEFAULTS.items():
        value = given.get(label, default)
        if label not in optics.columns:
            optics[label] = value
        elif optics[label].isna().any():
            optics[label] = optics[label].fillna(value)
        else:
            continue
        if label not in given:
            defaulted.append(f"{label} {default:g}")
    if defaulted:
        out.notes.append(
            f"{path}: the input has no {', '.join(d.split()[0] for d in defaulted)};"
            f" wrote RELION defaults ({', '.join(defaulted)}): correct them if they differ"
        )


def _star_tables(
    path: Path,
    table: pd.DataFrame,
    stack: ParticleStack | None,
    image_size: int | None,
    given: dict[str, float],
    out: _StarOutput,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the (optics, particles) blocks of a RELION 3.1 STAR file."""
    missing = [c for c in ("theta", "dx", "dy") if c not in table.columns]
    if missing:
        raise StackError(path, f"pose table lacks column(s) {', '.join(missing)}")
    rows = _rows(path, table, stack)
    n = len(table)
    size = _box_size(path, stack, image_size)
    if stack is not None and stack.metadata is not None:
        meta = _relion_metadata(stack.metadata.iloc[rows].reset_index(drop=True))
    else:
        meta = pd.DataFrame(index=pd.RangeIndex(n))
    meta = _move_input_poses(meta)
    if "rlnImageName" not in meta.columns:
        meta["rlnImageName"] = _image_names(path, stack, rows, out)

    per_row = pixel_sizes_per_row(meta)
    if per_row is None and stack is not None and stack.pixel_size is not None:
        per_row = np.full(n, stack.pixel_size)
    if per_row is None and "rlnImagePixelSize" in given:
        per_row = np.full(n, float(given["rlnImagePixelSize"]))
    if per_row is not None and not (np.all(np.isfinite(per_row)) and np.all(per_row > 0)):
        per_row = None
    if per_row is None:
        per_row = np.full(n, DEFAULT_PIXEL_SIZE)
        out.notes.append(
            f"{path}: pixel size unknown; wrote rlnImagePixelSize {DEFAULT_PIXEL_SIZE:g}"
            " (origins in Å then equal pixels): set the real value"
        )

    # optics groups: RELION's own if present, else one per distinct optics setting
    optics_cols = [c for c in OPTICS_LABELS if c in meta.columns]
    if "rlnOpticsGroup" not in meta.columns:
        if optics_cols:
            groups = meta.groupby(optics_cols, sort=False, dropna=False).ngroup() + 1
            meta["rlnOpticsGroup"] = groups.to_numpy()
        else:
            meta["rlnOpticsGroup"] = 1
    meta["rlnOpticsGroup"] = meta["rlnOpticsGroup"].astype(np.int64)
    optics = meta.groupby("rlnOpticsGroup", sort=True)[optics_cols].first().reset_index()
    if "rlnOpticsGroupName" not in optics.columns:
        optics.insert(
            1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
        )
    _fill_optics(path, optics, given, out)
    if "rlnImagePixelSize" not in optics.columns:
        first = meta.groupby("rlnOpticsGroup", sort=True).cumcount() == 0
        optics["rlnImagePixelSize"] = per_row[first.to_numpy()]
    optics["rlnImageSize"] = size  # RELION needs the true box size of these images
    optics["rlnImageDimensionality"] = 2
    particles = meta.drop(columns=optics_cols)

    # poses, in the table's column order so read_poses restores it
    theta = table["theta"].to_numpy(dtype=np.float64)
    origin_x = relion_centre_offset(size) - table["dx"].to_numpy(dtype=np.float64)
    origin_y = relion_centre_offset(size) - table["dy"].to_numpy(dtype=np.float64)
    for column in table.columns:
        values = table[column].to_numpy()
        if column == "theta":
            particles["rlnAnglePsi"] = np.degrees(theta)
        elif column == "dx":
            particles["rlnOriginXAngst"] = origin_x * per_row
        elif column == "dy":
            particles["rlnOriginYAngst"] = origin_y * per_row
        elif column == "theta_std":
            particles[_star_label(column)] = np.degrees(values.astype(np.float64))
        else:
            particles[_star_label(column)] = values
    return optics, particles


def _make_link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (relative symlink; a hard link where symlinks are refused)."""
    try:
        os.symlink(_relative(target, link.parent), link)
    except OSError:
        try:
            os.link(target, link)
        except OSError as exc:
            raise StackError(link, f"cannot link to {target} ({exc.strerror})") from None


def write_poses(
    path: str | os.PathLike[str],
    table: pd.DataFrame,
    stack: ParticleStack | None = None,
    *,
    image_size: int | None = None,
    optics: Mapping[str, float] | None = None,
) -> list[str]:
    """Write a pose table as ``.csv`` or RELION 3.1 ``.star``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv`` (the table as is, radians and pixels) or ``.star``.
    table : pandas.DataFrame
        One row per image: ``theta`` (rad), ``theta_std``, ``dx``, ``dy`` (px), ``dx_std``,
        ``dy_std``, ``z1..zK``, ``z1_std..zK_std``; optional ``image_index`` (0-based row of
        ``stack``; without it row i is image i).
    stack : ParticleStack, optional
        The images the poses belong to. For STAR output its metadata (RELION columns, or
        cryoSPARC CTF fields translated to RELION labels) is kept, except the old
        orientation and origins, which move to ``rlnSpatialVaeInput...`` labels; its image
        names, pixel size and (square) box size are used.
    image_size : int, optional
        Box size in pixels for a STAR file written without ``stack``.
    optics : mapping of str to float, optional
        RELION optics values (``rlnVoltage``, ``rlnSphericalAberration``,
        ``rlnAmplitudeContrast``, ``rlnImagePixelSize``) to use where the input has none.

    Returns
    -------
    list of str
        One-line notes for the user (defaults written, companion files made); empty for
        CSV and when nothing had to be assumed.

    Notes
    -----
    STAR mapping (see docs/io.md): ``rlnAnglePsi = degrees(theta)``;
    ``rlnOriginX/YAngst = (c - dx/dy) * pixel_size`` with ``c`` = 0.5 for an even box, 0 for
    odd; ``zK`` -> ``rlnSpatialVaeZK``, ``zK_std`` -> ``rlnSpatialVaeZKStd``, ``theta_std``
    -> ``rlnSpatialVaeAnglePsiStd`` (degrees), ``dx_std``/``dy_std`` ->
    ``rlnSpatialVaeOriginX/YStd`` (pixels), ``image_index`` -> ``rlnSpatialVaeImageIndex``.
    Image names are relative to the STAR file's folder (``.mrc`` stacks get an ``.mrcs``
    link there; non-MRC images are written there as ``<stem>_particles.mrcs``); missing
    optics values get RELION's usual defaults (300 kV, 2.7 mm, 0.1, 1 Å/px), each
    reported in the returned notes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with atomic_output(path) as tmp:
            table.to_csv(tmp, index=False)
        return []
    if suffix != ".star":
        raise StackError(path, f"unknown pose file type '{path.suffix}'; use .csv or .star")
    out = _StarOutput()
    optics_table, particles = _star_tables(path, table, stack, image_size, dict(optics or {}), out)
    if out.copy is not None:
        copy, images = out.copy
        write_mrcs(copy, images.images, images.pixel_size)
    for link, target in out.links:
        _make_link(link, target)
    with atomic_output(path) as tmp:
        starfile.write(
            {"optics": optics_table, "particles": particles}, tmp, float_format=_FLOAT_FORMAT
        )
    return out.notes


# ---------------------------------------------------------------------------- reading


def _box_from_stack(path: Path, particles: pd.DataFrame, datadir: Path | None) -> int:
    """The box size of the stack that row 1's ``rlnImageName`` points at (header only)."""
    if "rlnImageName" not in particles.columns:
        raise StackError(
            path,
            "no rlnImageSize and no rlnImageName to find the box size (needed for RELION's"
            " half-pixel centre); pass image_size=",
        )
    stacks, _ = split_image_names(path, particles["rlnImageName"].iloc[:1])
    folders = [Path(os.path.abspath(path)).parent]
    found = resolve_stack_path(str(stacks[0]), folders, datadir)
    if found is None:
        raise StackError(
            path,
            f"no rlnImageSize, and stack '{stacks[0]}' (row 1), which would give the box size"
            " (needed for RELION's half-pixel centre), not found;"
            f" {describe_search(folders, datadir)}, or pass image_size=",
        )
    try:
        source, _ = open_mrc(found)
    except StackError as exc:
        raise StackError(path, f"stack '{stacks[0]}' ({found}): {exc.problem}") from None
    return int(source.shape[2])


def _read_poses_star(path: Path, image_size: int | None, datadir: Path | None) -> pd.DataFrame:
    blocks = read_star_blocks(path)
    optics = blocks.get("optics")
    name = (
        "particles"
        if "particles" in blocks
        else next(
            (n for n, b in blocks.items() if n != "optics" and "rlnAnglePsi" in b.columns), None
        )
    )
    if name is None:
        raise StackError(path, "no particle block with rlnAnglePsi")
    particles = merge_optics(path, blocks[name], optics)
    if "rlnAnglePsi" not in particles.columns:
        raise StackError(path, "no rlnAnglePsi column")
    pixel = pixel_sizes_per_row(particles)
    # RELION's centre is W // 2, ours (W - 1) / 2: even boxes differ by half a pixel, so
    # the box size is needed (RELION 3.0 files have no rlnImageSize: ask the stack).
    if "rlnImageSize" in particles.columns:
        size = int(pd.to_numeric(particles["rlnImageSize"]).iloc[0])
    elif image_size is not None:
        size = int(image_size)
    else:
        size = _box_from_stack(path, particles, datadir)
    centre = relion_centre_offset(size)

    out: dict[str, np.ndarray] = {}
    for label in particles.columns:
        values = particles[label].to_numpy()
        if label == "rlnAnglePsi":
            out["theta"] = np.radians(values.astype(np.float64))
        elif label in ("rlnOriginXAngst", "rlnOriginYAngst"):
            if pixel is None:
                raise StackError(path, f"{label} without a pixel size")
            axis = "dx" if label == "rlnOriginXAngst" else "dy"
            out[axis] = centre - values.astype(np.float64) / pixel
        elif label in ("rlnOriginX", "rlnOriginY"):
            axis = "dx" if label == "rlnOriginX" else "dy"
            out.setdefault(axis, centre - values.astype(np.float64))
        else:
            column = _pose_column(str(label))
            if column == "theta_std":
                out[column] = np.radians(values.astype(np.float64))
            elif column is not None:
                out[column] = values
    for axis in ("dx", "dy"):
        out.setdefault(axis, np.zeros(len(particles)))  # RELION omits zero origins
    return pd.DataFrame(out)


def read_poses(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    datadir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Read a pose table written by :func:`write_poses` (or any RELION particle STAR).

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv`` or ``.star``.
    image_size : int, optional
        Box size in pixels, for a STAR file without ``rlnImageSize`` (RELION 3.0). Without
        it the box size is read from the header of the stack that row 1 names (looked for
        as :func:`read_stack` does, ``datadir`` included).
    datadir : str or os.PathLike, optional
        Where that stack lives, when not beside the STAR file or in the current folder.

    Returns
    -------
    pandas.DataFrame
        Columns ``theta`` (rad), ``dx``, ``dy`` (px) and whatever else was written
        (``theta_std``, ``dx_std``, ``dy_std``, ``zK``, ``zK_std``, ``image_index``).
    """
    path = Path(path)
    if not path.is_file():
        raise StackError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise StackError(path, f"cannot parse CSV ({exc})") from None
    if suffix == ".star":
        return _read_poses_star(path, image_size, as_datadir(datadir))
    raise StackError(path, f"unknown pose file type '{path.suffix}'; use .csv or .star")
