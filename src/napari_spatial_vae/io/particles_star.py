"""RELION 3.1 STAR files out: extracted particles (with their micrographs' CTF) and micrographs.

Blocks are written by :mod:`starfile`, each preceded by RELION's ``# version 30001`` line,
atomically (:func:`napari_spatial_vae._atomic.atomic_output`). Labels are RELION's own, so
RELION and :func:`~.reader.read_stack` read the particles directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_spatial_vae._atomic import atomic_output

__all__ = [
    "CTF_LABELS",
    "OPTICS_LABELS",
    "micrographs_star_tables",
    "particles_star_tables",
    "write_star",
]

#: Per-micrograph CTF labels copied into every particle of that micrograph.
CTF_LABELS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    "rlnCtfAstigmatism",
    "rlnCtfMaxResolution",
    "rlnCtfFigureOfMerit",
)
#: Microscope labels that belong to an optics group.
OPTICS_LABELS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
RELION_VERSION_LINE = "# version 30001"


def write_star(path: str | os.PathLike[str], blocks: Mapping[str, pd.DataFrame]) -> None:
    """Write ``data_<name>`` loop blocks to a RELION 3.1 STAR file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file.
    blocks : mapping of str to pandas.DataFrame
        Block name (without ``data_``) to table; columns are the labels without ``_``.
    """
    with atomic_output(path) as tmp:
        starfile.write(dict(blocks), tmp, overwrite=True)
        # RELION 3.1+ reads files without the version line, but marks them as 3.0 in logs;
        # say which convention these labels follow.
        lines = Path(tmp).read_text().splitlines()
        out = []
        for line in lines:
            if line.startswith("data_"):
                out.extend([RELION_VERSION_LINE, ""])
            out.append(line)
        Path(tmp).write_text("\n".join(out) + "\n")


def _optics_groups(table: pd.DataFrame | None, n: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Optics group (1-based) of each of ``n`` micrographs and the groups' optics values."""
    labels = [c for c in OPTICS_LABELS if table is not None and c in table.columns]
    if table is None or not labels:
        return np.ones(n, dtype=np.int64), pd.DataFrame(index=[0])
    # unknown values (NaN) compare unequal to themselves; -1 groups them together
    values = table[labels].apply(pd.to_numeric, errors="coerce").fillna(-1.0)
    codes, uniques = pd.factorize(pd.Series(list(map(tuple, values.to_numpy()))), sort=False)
    groups = pd.DataFrame(list(uniques), columns=labels).replace(-1.0, np.nan)
    return codes.astype(np.int64) + 1, groups


def particles_star_tables(
    micrograph_names: Sequence[str],
    micrograph_table: pd.DataFrame | None,
    micrograph_index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    image_names: Sequence[str],
    micrograph_pixel_size: float | None,
    image_pixel_size: float | None,
    image_size: int,
    scores: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """The ``optics`` and ``particles`` blocks of an extracted particle STAR file.

    Parameters
    ----------
    micrograph_names : sequence of str
        ``rlnMicrographName`` of every micrograph (``M`` of them).
    micrograph_table : pandas.DataFrame or None
        ``(M, ...)`` the micrographs STAR's rows (optics merged in): CTF and optics labels
        are copied from it where present.
    micrograph_index : numpy.ndarray
        ``(N,)`` which micrograph each particle comes from.
    x, y : numpy.ndarray
        ``(N,)`` coordinates in micrograph pixels.
    image_names : sequence of str
        ``(N,)`` ``rlnImageName`` (``000001@stack.mrcs``).
    micrograph_pixel_size, image_pixel_size : float or None
        Å per pixel before and after downsampling (omitted when unknown).
    image_size : int
        Side of the extracted images.
    scores : numpy.ndarray, optional
        ``(N,)`` picker scores, written as ``rlnAutopickFigureOfMerit`` unless all NaN.

    Returns
    -------
    dict
        ``{"optics": ..., "particles": ...}`` for :func:`write_star`.
    """
    index = np.asarray(micrograph_index, dtype=np.int64)
    group_of_micrograph, groups = _optics_groups(micrograph_table, len(micrograph_names))
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(groups) + 1),
            "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(groups) + 1)],
        }
    )
    for label in groups.columns:
        optics[label] = groups[label].to_numpy()
    if micrograph_pixel_size is not None and image_pixel_size is not None:
        optics["rlnMicrographOriginalPixelSize"] = micrograph_pixel_size
        optics["rlnImagePixelSize"] = image_pixel_size
    optics["rlnImageSize"] = int(image_size)
    optics["rlnImageDimensionality"] = 2

    particles = pd.DataFrame(
        {
            "rlnCoordinateX": np.asarray(x, dtype=np.float64),
            "rlnCoordinateY": np.asarray(y, dtype=np.float64),
            "rlnImageName": list(image_names),
            "rlnMicrographName": np.asarray(micrograph_names, dtype=object)[index],
            "rlnOpticsGroup": group_of_micrograph[index],
        }
    )
    if micrograph_table is not None:
        for label in CTF_LABELS:
            if label in micrograph_table.columns:
                values = pd.to_numeric(micrograph_table[label], errors="coerce").to_numpy()
                particles[label] = values[index]
    if scores is not None and np.isfinite(scores).any():
        particles["rlnAutopickFigureOfMerit"] = np.asarray(scores, dtype=np.float64)
    return {"optics": optics, "particles": particles}


def micrographs_star_tables(
    micrograph_names: Sequence[str],
    pixel_size: float,
    ctf: pd.DataFrame,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> dict[str, pd.DataFrame]:
    """The ``optics`` and ``micrographs`` blocks of a RELION 3.1 micrographs STAR file.

    Parameters
    ----------
    micrograph_names : sequence of str
        ``(M,)`` ``rlnMicrographName``.
    pixel_size : float
        Å per micrograph pixel.
    ctf : pandas.DataFrame
        ``(M, ...)`` per-micrograph CTF columns (:data:`CTF_LABELS`).
    voltage, spherical_aberration, amplitude_contrast : float
        kV, mm and fraction, one optics group.
    """
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnMicrographOriginalPixelSize": [pixel_size],
            "rlnVoltage": [voltage],
            "rlnSphericalAberration": [spherical_aberration],
            "rlnAmplitudeContrast": [amplitude_contrast],
            "rlnMicrographPixelSize": [pixel_size],
        }
    )
    micrographs = pd.DataFrame({"rlnMicrographName": list(micrograph_names), "rlnOpticsGroup": 1})
    for label in ctf.columns:
        micrographs[label] = ctf[label].to_numpy()
    return {"optics": optics, "micrographs": micrographs}
