"""Write a subset of particles back for RELION or cryoSPARC, keeping all their metadata.

Every column of every selected row of the input particle list is copied unchanged (image
names, micrograph coordinates, CTF, optics, 3-D angles, classes); the in-plane pose and the
latent values are added as extra columns:

RELION STAR (any input)
    ``rlnAnglePsi`` (degrees) and ``rlnOriginXAngst``/``rlnOriginYAngst`` (``rlnOriginX/Y``
    in pixels when the pixel size is unknown) from ``theta``, ``dx``, ``dy`` with the
    mapping of :mod:`.poses`; ``zK`` -> ``rlnSpatialVaeZK`` and the other pose-table
    columns under the same names as :func:`.poses.write_poses` uses. The input's own
    orientation and origins (``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``,
    ``rlnOrigin*``) move to ``rlnSpatialVaeInput<Name>`` (``rlnAnglePsi`` ->
    ``rlnSpatialVaeInputAnglePsi``), so nothing of the input is lost and no half-replaced 3-D
    orientation is left;
    with ``keep_input_pose`` the input's stay and the inferred ones are written as
    ``rlnSpatialVae<Name>`` instead.
    The optics block and any other block are written as read.
cryoSPARC ``.cs`` (a ``.cs`` input only)
    All input fields unchanged; the pose table goes into new ``spatial_vae/<column>`` float
    fields (``theta`` radians, ``dx``/``dy`` pixels, ``z1..zK`` ...); the existing
    ``alignments2D`` fields are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_spatial_vae._atomic import atomic_output

from .errors import StackError
from .poses import _star_label, relion_centre_offset, write_poses
from .stack import ParticleStack
from .star import merge_optics, pixel_sizes_per_row, read_star_blocks, select_particle_block

__all__ = ["INPUT_PREFIX", "write_subset"]

#: Input psi/origin columns replaced by the inferred pose keep their values under this prefix.
INPUT_PREFIX = "rlnSpatialVaeInput"
# Replaced by the inferred in-plane pose: psi and origins. Rot and tilt move aside with them
# (the same labels as io.poses' POSES.star writer), since the input's rot/tilt next to our psi
# would describe a 3-D orientation nobody estimated.
_POSE_LABELS = ("rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst")
_MOVED_LABELS = ("rlnAngleRot", "rlnAngleTilt", *_POSE_LABELS)
_CS_PREFIX = "spatial_vae/"
_SPATIAL_VAE = "rlnSpatialVae"


def _check_rows(path: Path, rows: np.ndarray, table: pd.DataFrame, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise StackError(path, "the selected rows must be a 1-D integer array")
    if len(rows) == 0:
        raise StackError(path, "no particles selected; nothing written")
    if rows.min() < 0 or rows.max() >= n:
        raise StackError(path, f"selected rows outside 0..{n - 1}")
    if len(table) != len(rows):
        raise StackError(path, f"{len(table)} pose rows for {len(rows)} selected particles")
    return rows.astype(np.int64)


def _added_star_columns(
    poses: pd.DataFrame, merged: pd.DataFrame, image_shape: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    """The new STAR columns of the selected rows (``merged`` has optics columns merged in)."""
    if image_shape is not None:
        height, width = image_shape
    elif "rlnImageSize" in merged.columns:
        height = width = int(pd.to_numeric(merged["rlnImageSize"]).iloc[0])
    else:
        height = width = None  # type: ignore[assignment]
    pixel = pixel_sizes_per_row(merged)
    if pixel is not None and not (np.all(np.isfinite(pixel)) and np.all(pixel > 0)):
        pixel = None
    origin_x = relion_centre_offset(width) - poses["dx"].to_numpy(np.float64)
    origin_y = relion_centre_offset(height) - poses["dy"].to_numpy(np.float64)
    out: dict[str, np.ndarray] = {"rlnAnglePsi": np.degrees(poses["theta"].to_numpy(np.float64))}
    if pixel is None:
        out["rlnOriginX"], out["rlnOriginY"] = origin_x, origin_y
    else:
        out["rlnOriginXAngst"], out["rlnOriginYAngst"] = origin_x * pixel, origin_y * pixel
    for column in poses.columns:
        if column in ("theta", "dx", "dy"):
            continue
        values = poses[column].to_numpy()
        if column == "theta_std":
            values = np.degrees(values.astype(np.float64))
        out[_star_label(str(column))] = values
    return out


def _write_star_subset(
    path: Path,
    source: Path,
    rows: np.ndarray,
    poses: pd.DataFrame,
    image_shape: tuple[int, int] | None,
    keep_input_pose: bool,
) -> None:
    blocks = read_star_blocks(source)
    name, particles, optics = select_particle_block(source, blocks)
    rows = _check_rows(path, rows, poses, len(particles))
    selected = particles.iloc[rows].reset_index(drop=True)
    merged = merge_optics(source, selected, optics)
    added = _added_star_columns(poses.reset_index(drop=True), merged, image_shape)
    if keep_input_pose:
        # the input's psi/origins stay where they are; the inferred ones get our prefix
        added = {
            (f"{_SPATIAL_VAE}{label[3:]}" if label in _POSE_LABELS else label): values
            for label, values in added.items()
        }
        renamed = {}
    else:
        # the input's own psi/origins stay, renamed, beside the inferred ones
        renamed = {
            label: f"{INPUT_PREFIX}{label[3:]}"
            for label in _MOVED_LABELS
            if label in selected.columns
        }
    out = selected.rename(columns=renamed)
    for label, values in added.items():
        out[label] = values
    written = {
        block_name: (out if block_name == name else block) for block_name, block in blocks.items()
    }
    with atomic_output(path) as tmp:
        # float_format None: pandas writes the shortest text that reads back the same float
        starfile.write(written, tmp, float_format=None)


def _write_cs_subset(path: Path, source: Path, rows: np.ndarray, poses: pd.DataFrame) -> None:
    try:
        array = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StackError(source, f"not a cryoSPARC .cs file ({exc})") from None
    if getattr(array, "dtype", None) is None or array.dtype.names is None or array.ndim != 1:
        raise StackError(source, "not a cryoSPARC .cs file (expected a 1-D structured array)")
    rows = _check_rows(path, rows, poses, len(array))
    selected = array[rows]
    names = [f"{_CS_PREFIX}{column}" for column in poses.columns]
    kept = [field for field in selected.dtype.names or () if field not in names]
    descr = [(field, selected.dtype.fields[field][0]) for field in kept]
    descr += [(field, "<f4") for field in names]
    out = np.empty(len(selected), dtype=np.dtype(descr))
    for field in kept:
        out[field] = selected[field]
    for field, column in zip(names, poses.columns, strict=True):
        out[field] = poses[column].to_numpy(np.float32)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, out)  # a handle: np.save would append .npy to a file name


def write_subset(
    path: str | os.PathLike[str],
    stack: ParticleStack,
    rows: np.ndarray,
    poses: pd.DataFrame,
    keep_input_pose: bool = False,
) -> None:
    """Write the selected particles with all their input metadata plus pose and latents.

    Parameters
    ----------
    path : str or os.PathLike
        ``.star`` (from any input) or ``.cs`` (only from a cryoSPARC ``.cs`` input).
    stack : ParticleStack
        The particles the poses belong to (its ``path`` is re-read for the metadata, so
        every column survives exactly as written there).
    rows : numpy.ndarray
        ``(M,)`` 0-based indices of the selected particles in the stack, in output order.
    poses : pandas.DataFrame
        ``M`` rows (the selected particles' rows of POSES.csv): ``theta``, ``dx``, ``dy``
        and any further columns (``z1..zK``, std columns, ``cluster`` ...).
    keep_input_pose : bool
        STAR from a STAR input: leave the input's ``rlnAnglePsi``/``rlnOrigin*`` as they are
        and write the inferred ones as ``rlnSpatialVaeAnglePsi``/``rlnSpatialVaeOrigin*``
        (for local refinement from an earlier 3-D result). Default: the inferred pose takes
        the RELION names and the input's moves to ``rlnSpatialVaeInput*``.

    Raises
    ------
    StackError
        Empty selection, rows out of range, a ``.cs`` output from a non-``.cs`` input, or an
        unreadable input; nothing is written then.
    """
    path = Path(path)
    missing = [c for c in ("theta", "dx", "dy") if c not in poses.columns]
    if missing:
        raise StackError(path, f"the pose table lacks column(s) {', '.join(missing)}")
    source = stack.path
    suffix, source_suffix = path.suffix.lower(), source.suffix.lower()
    if suffix == ".cs":
        if source_suffix != ".cs":
            raise StackError(path, "a .cs subset needs a cryoSPARC .cs input; write .star")
        _write_cs_subset(path, source, rows, poses)
    elif suffix == ".star":
        if source_suffix == ".star":
            shape = (int(stack.shape[1]), int(stack.shape[2]))
            _write_star_subset(path, source, rows, poses, shape, keep_input_pose)
        else:
            # no STAR to copy from: the pose writer names each image N@stack itself and
            # carries cryoSPARC CTF fields over as RELION labels
            rows = _check_rows(path, rows, poses, len(stack))
            table = poses.reset_index(drop=True).copy()
            table["image_index"] = rows
            write_poses(path, table, stack)
    else:
        raise StackError(path, f"unknown subset file type '{path.suffix}'; use .star or .cs")
