"""Per-particle CTF parameters from RELION STAR tables and cryoSPARC ``.cs`` tables.

The readers (:mod:`.star`, :mod:`.cryosparc`) call :func:`ctf_from_star_table` /
:func:`ctf_from_cs_table` on the particle table they already parsed. A table without any
defocus column carries no CTF (the stack trains as before). A table whose CTF columns are
partly missing does not fail to open: the problem is kept as one line (naming the missing
label and the file) and raised only when the CTF is asked for, so ``--ctf off`` still trains.

All values are converted to RELION's units (see docs/conventions.md): defocus in Å,
angles in degrees, voltage in kV, Cs in mm, B-factor in Å², pixel size in Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StackError
from .sources import ArraySource

__all__ = [
    "CTF_COLUMNS",
    "CtfTable",
    "ctf_from_cs_table",
    "ctf_from_star_table",
    "relion_ctf_columns",
    "write_particles_star",
]

# One column per parameter, RELION units; the core's napari_spatial_vae.core.ctf.PARAMETER_NAMES.
CTF_COLUMNS: tuple[str, ...] = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "voltage",
    "cs",
    "amplitude_contrast",
    "phase_shift",
    "bfactor",
    "scale",
    "pixel_size",
)

# STAR label of each column; optional ones have a default.
_STAR_REQUIRED = {
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "voltage": "rlnVoltage",
    "cs": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
}
_STAR_OPTIONAL = {
    "phase_shift": ("rlnPhaseShift", 0.0),
    "bfactor": ("rlnCtfBfactor", 0.0),
    "scale": ("rlnCtfScalefactor", 1.0),
}
_CS_REQUIRED = {
    "defocus_u": "ctf/df1_A",
    "defocus_v": "ctf/df2_A",
    "defocus_angle": "ctf/df_angle_rad",
    "voltage": "ctf/accel_kv",
    "cs": "ctf/cs_mm",
    "amplitude_contrast": "ctf/amp_contrast",
}
_CS_OPTIONAL = {
    "phase_shift": ("ctf/phase_shift_rad", 0.0),
    "bfactor": ("ctf/bfactor", 0.0),
    "scale": ("ctf/scale", 1.0),
}


@dataclass
class CtfTable:
    """The CTF of every particle of a stack.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per particle (stack order), columns :data:`CTF_COLUMNS` as float64.
    phase_flipped : bool
        The images were phase-flipped (they see ``|CTF|``): ``rlnCtfDataArePhaseFlipped``.
    premultiplied : bool
        The images were multiplied by their CTF (they see ``CTF^2``):
        ``rlnCtfDataAreCtfPremultiplied``.
    source : str
        The file the parameters came from (for messages).
    """

    table: pd.DataFrame
    phase_flipped: bool = False
    premultiplied: bool = False
    source: str = field(default="")

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, indices: np.ndarray) -> CtfTable:
        """The rows ``indices`` (0-based), renumbered from 0."""
        rows = self.table.iloc[np.asarray(indices)].reset_index(drop=True)
        return CtfTable(rows, self.phase_flipped, self.premultiplied, self.source)


def _numbers(table: pd.DataFrame, label: str) -> np.ndarray:
    return pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=np.float64)


def _flag(path: Path, table: pd.DataFrame, label: str) -> bool:
    """A 0/1 RELION flag column (absent: 0); it must be the same for every particle."""
    if label not in table.columns:
        return False
    values = _numbers(table, label)
    values = values[np.isfinite(values)]
    if values.size and values.min() != values.max():
        raise StackError(path, f"{label} differs between optics groups; split the file by group")
    return bool(values.size and values[0] != 0)


def _missing(path: Path, table: pd.DataFrame, required: dict[str, str], what: str) -> None:
    lacking = [label for label in required.values() if label not in table.columns]
    if lacking:
        raise StackError(
            path,
            f"CTF columns partly missing: no {lacking[0]}"
            + (f" (nor {', '.join(lacking[1:])})" if len(lacking) > 1 else "")
            + f" although {what} is present; fix the file or train with --ctf off",
        )


def ctf_from_star_table(
    path: str | Path, table: pd.DataFrame, pixel_sizes: np.ndarray | None
) -> tuple[CtfTable | None, str | None]:
    """The CTF of a RELION particle table (optics columns already merged into the rows).

    Parameters
    ----------
    path : str or pathlib.Path
        The STAR file (for messages).
    table : pandas.DataFrame
        :func:`~.star.parse_star_table`'s table.
    pixel_sizes : numpy.ndarray or None
        ``(N,)`` Å per pixel of every row (:func:`~.star.pixel_sizes_per_row`).

    Returns
    -------
    ctf : CtfTable or None
        None when the file carries no defocus or its CTF is incomplete.
    problem : str or None
        One line (``"<file>: ..."``) saying why an incomplete CTF cannot be used.
    """
    path = Path(path)
    if "rlnDefocusU" not in table.columns:
        return None, None
    try:
        _missing(path, table, _STAR_REQUIRED, "rlnDefocusU")
        if pixel_sizes is None:
            raise StackError(
                path,
                "the CTF needs the pixel size: no rlnImagePixelSize (optics), rlnPixelSize or "
                "rlnDetectorPixelSize/rlnMagnification; fix the file or train with --ctf off",
            )
        columns = {name: _numbers(table, label) for name, label in _STAR_REQUIRED.items()}
        for name, (label, default) in _STAR_OPTIONAL.items():
            columns[name] = (
                _numbers(table, label) if label in table.columns else np.full(len(table), default)
            )
        columns["pixel_size"] = np.asarray(pixel_sizes, dtype=np.float64)
        ctf = CtfTable(
            pd.DataFrame({name: columns[name] for name in CTF_COLUMNS}),
            phase_flipped=_flag(path, table, "rlnCtfDataArePhaseFlipped"),
            premultiplied=_flag(path, table, "rlnCtfDataAreCtfPremultiplied"),
            source=str(path),
        )
    except StackError as err:
        return None, str(err)
    return ctf, None


def ctf_from_cs_table(path: str | Path, table: pd.DataFrame) -> tuple[CtfTable | None, str | None]:
    """The CTF of a cryoSPARC particle table (:func:`~.cryosparc.parse_cs_table`).

    cryoSPARC's ``df1``/``df2``/``df_angle`` are RELION's defocus U/V/angle (the angle in
    radians); the phase shift is in radians; the pixel size is ``blob/psize_A``.

    Returns
    -------
    ctf, problem
        As :func:`ctf_from_star_table`.
    """
    path = Path(path)
    if "ctf/df1_A" not in table.columns:
        return None, None
    try:
        _missing(path, table, _CS_REQUIRED, "ctf/df1_A")
        if "blob/psize_A" not in table.columns:
            raise StackError(
                path, "the CTF needs the pixel size: no blob/psize_A; train with --ctf off"
            )
        columns = {name: _numbers(table, label) for name, label in _CS_REQUIRED.items()}
        for name, (label, default) in _CS_OPTIONAL.items():
            columns[name] = (
                _numbers(table, label) if label in table.columns else np.full(len(table), default)
            )
        columns["defocus_angle"] = np.degrees(columns["defocus_angle"])
        columns["phase_shift"] = np.degrees(columns["phase_shift"])
        columns["pixel_size"] = _numbers(table, "blob/psize_A")
        values = pd.DataFrame({name: columns[name] for name in CTF_COLUMNS})
        ctf = CtfTable(values, source=str(path))
    except StackError as err:
        return None, str(err)
    return ctf, None


def relion_ctf_columns(table: pd.DataFrame) -> pd.DataFrame:
    """A CTF table (:data:`CTF_COLUMNS`) under RELION's labels, for writing a STAR file.

    The pixel size becomes ``rlnImagePixelSize`` (an optics label, like the voltage, Cs and
    amplitude contrast: :func:`~.poses.write_poses` moves them into ``data_optics``).
    """
    labels = {**_STAR_REQUIRED, **{k: label for k, (label, _) in _STAR_OPTIONAL.items()}}
    labels["pixel_size"] = "rlnImagePixelSize"
    return pd.DataFrame(
        {labels[name]: table[name].to_numpy(dtype=np.float64) for name in CTF_COLUMNS}
    )


def write_particles_star(
    path: str | Path,
    images: np.ndarray,
    pixel_size: float | None,
    ctf: object | None,
    truth: pd.DataFrame,
) -> Path:
    """Write images as ``<path>.mrcs`` and a RELION 3.1 STAR naming them, with CTF and poses.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.star`` file; the stack goes next to it with suffix ``.mrcs``.
    images : numpy.ndarray
        ``(N, H, W)``.
    pixel_size : float or None
        Å per pixel.
    ctf : object or None
        Anything with a ``values`` ``(N, 10)`` array in :data:`CTF_COLUMNS` order (the core's
        ``CtfParameters``), or None.
    truth : pandas.DataFrame
        ``theta``, ``dx``, ``dy`` and any other columns, as :func:`~.poses.write_poses` takes.

    Returns
    -------
    pathlib.Path
        The ``.mrcs`` written.
    """
    from .poses import write_poses  # poses imports the readers; keep this module light
    from .stack import ParticleStack
    from .writers import write_mrcs

    path = Path(path)
    mrcs = path.with_suffix(".mrcs")
    write_mrcs(mrcs, images, pixel_size)
    values = getattr(ctf, "values", None)
    if values is not None:
        metadata = relion_ctf_columns(pd.DataFrame(values, columns=list(CTF_COLUMNS)))
    else:
        metadata = pd.DataFrame(index=pd.RangeIndex(len(images)))
    names = [f"{i + 1:06d}@{mrcs.name}" for i in range(len(images))]
    metadata.insert(0, "rlnImageName", names)
    stack = ParticleStack(mrcs, ArraySource(images), pixel_size, metadata, names)
    write_poses(path, truth, stack)
    return mrcs
