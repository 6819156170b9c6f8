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
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_spatial_vae._atomic import atomic_output

from .errors import StackError
from .stack import ParticleStack
from .star import (
    merge_optics,
    pixel_sizes_per_row,
    read_star_blocks,
)

__all__ = ["read_poses", "relion_centre_offset", "write_poses"]

_PREFIX = "rlnSpatialVae"
_FLOAT_FORMAT = "%.10g"
_REPLACED = ("rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst")
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


def _synthetic_stack_name(path: Path, stack: ParticleStack | None) -> str:
    if stack is not None and stack.path.suffix.lower() in (".mrcs", ".mrc"):
        return stack.path.name
    # not an MRC stack: name the .mrcs that write_mrcs would make of it
    source = stack.path if stack is not None else path
    return source.with_suffix(".mrcs").name


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


def _star_tables(
    path: Path, table: pd.DataFrame, stack: ParticleStack | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the (optics, particles) blocks of a RELION 3.1 STAR file."""
    missing = [c for c in ("theta", "dx", "dy") if c not in table.columns]
    if missing:
        raise StackError(path, f"pose table lacks column(s) {', '.join(missing)}")
    rows = _rows(path, table, stack)
    n = len(table)
    if stack is not None and stack.metadata is not None:
        meta = _relion_metadata(stack.metadata.iloc[rows].reset_index(drop=True))
    else:
        meta = pd.DataFrame(index=pd.RangeIndex(n))
    meta = meta.drop(
        columns=[c for c in meta.columns if c in _REPLACED or str(c).startswith(_PREFIX)]
    )
    if "rlnImageName" not in meta.columns:
        if stack is not None and stack.image_names is not None:
            meta["rlnImageName"] = [stack.image_names[i] for i in rows.tolist()]
        else:
            name = _synthetic_stack_name(path, stack)
            meta["rlnImageName"] = [f"{i + 1:06d}@{name}" for i in rows.tolist()]

    height: int | None
    width: int | None
    if stack is not None:
        height, width = stack.shape[1], stack.shape[2]
    elif "rlnImageSize" in meta.columns:
        height = width = int(meta["rlnImageSize"].iloc[0])
    else:
        height = width = None
    per_row = pixel_sizes_per_row(meta)
    if per_row is None and stack is not None and stack.pixel_size is not None:
        per_row = np.full(n, stack.pixel_size)
    if per_row is not None and not (np.all(np.isfinite(per_row)) and np.all(per_row > 0)):
        per_row = None

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
    if per_row is not None and "rlnImagePixelSize" not in optics.columns:
        first = meta.groupby("rlnOpticsGroup", sort=True).cumcount() == 0
        optics["rlnImagePixelSize"] = per_row[first.to_numpy()]
    if width is not None:
        optics["rlnImageSize"] = width  # RELION needs the true box size of these images
    if "rlnImageDimensionality" not in optics.columns:
        optics["rlnImageDimensionality"] = 2
    particles = meta.drop(columns=optics_cols)

    # poses, in the table's column order so read_poses restores it
    theta = table["theta"].to_numpy(dtype=np.float64)
    origin_x = relion_centre_offset(width) - table["dx"].to_numpy(dtype=np.float64)
    origin_y = relion_centre_offset(height) - table["dy"].to_numpy(dtype=np.float64)
    for column in table.columns:
        values = table[column].to_numpy()
        if column == "theta":
            particles["rlnAnglePsi"] = np.degrees(theta)
        elif column == "dx":
            if per_row is None:
                particles["rlnOriginX"] = origin_x
            else:
                particles["rlnOriginXAngst"] = origin_x * per_row
        elif column == "dy":
            if per_row is None:
                particles["rlnOriginY"] = origin_y
            else:
                particles["rlnOriginYAngst"] = origin_y * per_row
        elif column == "theta_std":
            particles[_star_label(column)] = np.degrees(values.astype(np.float64))
        else:
            particles[_star_label(column)] = values
    return optics, particles


def write_poses(
    path: str | os.PathLike[str], table: pd.DataFrame, stack: ParticleStack | None = None
) -> None:
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
        ``rlnAnglePsi``/``rlnOrigin*``; its image names, pixel size and box size are used.

    Notes
    -----
    STAR mapping (see docs/io.md): ``rlnAnglePsi = degrees(theta)``;
    ``rlnOriginX/YAngst = (c - dx/dy) * pixel_size`` with ``c`` = 0.5 for an even box, 0 for
    odd (``rlnOriginX/Y`` in pixels when the pixel size is unknown); ``zK`` ->
    ``rlnSpatialVaeZK``, ``zK_std`` -> ``rlnSpatialVaeZKStd``, ``theta_std`` ->
    ``rlnSpatialVaeAnglePsiStd`` (degrees), ``dx_std``/``dy_std`` ->
    ``rlnSpatialVaeOriginX/YStd`` (pixels), ``image_index`` -> ``rlnSpatialVaeImageIndex``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with atomic_output(path) as tmp:
            table.to_csv(tmp, index=False)
    elif suffix == ".star":
        optics, particles = _star_tables(path, table, stack)
        with atomic_output(path) as tmp:
            starfile.write(
                {"optics": optics, "particles": particles}, tmp, float_format=_FLOAT_FORMAT
            )
    else:
        raise StackError(path, f"unknown pose file type '{path.suffix}'; use .csv or .star")


# ---------------------------------------------------------------------------- reading


def _read_poses_star(path: Path) -> pd.DataFrame:
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
    size = None
    if "rlnImageSize" in particles.columns:
        size = int(pd.to_numeric(particles["rlnImageSize"]).iloc[0])
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


def read_poses(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a pose table written by :func:`write_poses` (or any RELION particle STAR).

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv`` or ``.star``.

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
        return _read_poses_star(path)
    raise StackError(path, f"unknown pose file type '{path.suffix}'; use .csv or .star")
