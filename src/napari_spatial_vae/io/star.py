"""RELION STAR particle lists (3.0, 3.1, 4 and 5) via :mod:`starfile`.

RELION 3.0 files hold one particle block (``data_images``, ``data_`` or any name) whose
rows carry the optics (voltage, magnification, detector pixel size). From 3.1 on, a
``data_optics`` block (before or after ``data_particles``) holds one row per optics group
and particles refer to it through ``rlnOpticsGroup``. :func:`parse_star_table` merges the
optics columns into the particle rows, so both look alike downstream.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from .ctf_params import ctf_from_star_table
from .errors import StackError
from .gather import gather_stacks
from .paths import as_datadir
from .sources import GatherSource
from .stack import ParticleStack

__all__ = [
    "parse_star_table",
    "pixel_size_from_table",
    "pixel_sizes_per_row",
    "read_star_blocks",
    "read_star_stack",
    "select_particle_block",
]

OPTICS_BLOCK = "optics"
PARTICLES_BLOCK = "particles"


def read_star_blocks(path: str | Path) -> dict[str, pd.DataFrame]:
    """All data blocks of a STAR file as DataFrames (key-value blocks become one row)."""
    path = Path(path)
    if not path.is_file():
        raise StackError(path, "no such file")
    try:
        raw = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise StackError(path, f"cannot parse STAR file ({type(exc).__name__}: {exc})") from None
    blocks: dict[str, pd.DataFrame] = {}
    for name, block in raw.items():
        if isinstance(block, pd.DataFrame):
            blocks[name] = block
        elif isinstance(block, dict):
            blocks[name] = pd.DataFrame([block])
    if not blocks:
        raise StackError(path, "no data blocks found (not a STAR file?)")
    return blocks


def select_particle_block(
    path: Path, blocks: dict[str, pd.DataFrame]
) -> tuple[str, pd.DataFrame, pd.DataFrame | None]:
    """Pick the particle block (the one with ``rlnImageName``) and the optics block.

    Returns
    -------
    name : str
        Block name without ``data_`` (``""`` for an unnamed block).
    particles : pandas.DataFrame
        The particle rows, at least one.
    optics : pandas.DataFrame or None
        The optics block when present.
    """
    optics = blocks.get(OPTICS_BLOCK)
    if optics is not None and "rlnOpticsGroup" not in optics.columns:
        optics = None
    others = {n: b for n, b in blocks.items() if n != OPTICS_BLOCK}
    with_names = {n: b for n, b in others.items() if "rlnImageName" in b.columns}
    if not with_names:
        filled = [n for n, b in others.items() if len(b)]
        tomo = [n for n in filled if "rlnTomoName" in others[n].columns]
        if tomo:  # RELION 5 tomography: particles are coordinates in tomograms
            raise StackError(
                path,
                f"a tomography particle list (rlnTomoName in block data_{tomo[0]}, no"
                " rlnImageName): spatial-VAE works on 2-D particle images",
            )
        if filled:
            raise StackError(
                path,
                f"no rlnImageName column in block data_{filled[0]}"
                " (a micrograph or CTF table, not a particle list?)",
            )
        raise StackError(path, "no particle rows")
    name = PARTICLES_BLOCK if PARTICLES_BLOCK in with_names else next(iter(with_names))
    particles = with_names[name]
    if len(particles) == 0:
        raise StackError(path, f"no particle rows in block data_{name}")
    return name, particles, optics


def merge_optics(path: Path, particles: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """Copy each particle's optics-group columns into its row (particle values win)."""
    table = particles.reset_index(drop=True).copy()
    if optics is None or len(optics) == 0:
        return table
    if "rlnOpticsGroup" not in table.columns:
        if len(optics) != 1:
            raise StackError(
                path, f"particles lack rlnOpticsGroup but the optics block has {len(optics)} groups"
            )
        table["rlnOpticsGroup"] = optics["rlnOpticsGroup"].iloc[0]
    if optics["rlnOpticsGroup"].duplicated().any():
        raise StackError(path, "the optics block lists an rlnOpticsGroup twice")
    known = table["rlnOpticsGroup"].isin(optics["rlnOpticsGroup"])
    if not known.all():
        row = int(np.argmin(known.to_numpy()))
        group = table["rlnOpticsGroup"].iloc[row]
        raise StackError(
            path, f"row {row + 1} refers to optics group {group}, which data_optics lacks"
        )
    by_group = optics.set_index("rlnOpticsGroup")
    extra = {
        col: table["rlnOpticsGroup"].map(by_group[col]).to_numpy()
        for col in by_group.columns
        if col not in table.columns
    }
    return pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)


def pixel_sizes_per_row(table: pd.DataFrame) -> np.ndarray | None:
    """Å per pixel for every row, from whichever RELION labels the table has.

    ``rlnImagePixelSize`` (3.1+ optics), else ``rlnPixelSize``, else the 3.0 pair
    ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification``. None when absent.
    """
    if "rlnImagePixelSize" in table.columns:
        values = pd.to_numeric(table["rlnImagePixelSize"], errors="coerce")
    elif "rlnPixelSize" in table.columns:
        values = pd.to_numeric(table["rlnPixelSize"], errors="coerce")
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        detector = pd.to_numeric(table["rlnDetectorPixelSize"], errors="coerce")
        magnification = pd.to_numeric(table["rlnMagnification"], errors="coerce")
        values = detector * 1e4 / magnification
    else:
        return None
    return values.to_numpy(dtype=np.float64)


def pixel_size_from_table(table: pd.DataFrame) -> float | None:
    """The one pixel size of all rows, or None when unknown, invalid or not unique."""
    values = pixel_sizes_per_row(table)
    if values is None or values.size == 0:
        return None
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        return None
    if values.max() - values.min() > 1e-6 * values.max():
        return None  # optics groups differ; the per-row values stay in the metadata
    return float(values[0])


def parse_star_table(path: str | Path) -> pd.DataFrame:
    """The particle table of a STAR file, one row per particle, optics columns merged in.

    Parameters
    ----------
    path : str or pathlib.Path
        A RELION particle STAR file (3.0 to 5).

    Returns
    -------
    pandas.DataFrame
        Particle rows in file order; includes ``rlnImageName``.
    """
    path = Path(path)
    _, particles, optics = select_particle_block(path, read_star_blocks(path))
    return merge_optics(path, particles, optics)


def split_image_names(path: Path, names: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Split ``N@stack`` names into stack names and 0-based indices.

    A name without ``@`` is a single-image file (index 1), as in RELION.
    """
    names = names.astype(str)
    has_at = names.str.contains("@", regex=False)
    parts = names.str.split("@", n=1)
    index_text = parts.str[0].where(has_at, "1")
    stacks = parts.str[-1].where(has_at, names)
    numbers = pd.to_numeric(index_text.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.floor(numbers))
    bad |= stacks.str.len().to_numpy() == 0
    if bad.any():
        row = int(np.argmax(bad))
        raise StackError(
            path,
            f"row {row + 1}: rlnImageName '{names.iloc[row]}' is not of the form N@stack"
            " (N counts from 1)",
        )
    return stacks.to_numpy(dtype=object), numbers.astype(np.int64) - 1


def refuse_volumes(path: Path, table: pd.DataFrame) -> None:
    """Refuse a 3-D (subtomogram) particle list: its optics say ``rlnImageDimensionality 3``."""
    if "rlnImageDimensionality" not in table.columns:
        return
    dims = pd.to_numeric(table["rlnImageDimensionality"], errors="coerce").to_numpy()
    if np.any(dims == 3):
        row = int(np.argmax(dims == 3))
        raise StackError(
            path,
            f"a 3-D particle list (rlnImageDimensionality 3 on row {row + 1}: subtomograms);"
            " spatial-VAE works on 2-D particle images",
        )


def refuse_whole_file_names(path: Path, names: pd.Series, images: GatherSource) -> None:
    """Refuse names without ``N@`` that point at files holding more than one section.

    RELION reads such a name as the whole file: one 2-D image, or a 3-D volume (a
    subtomogram) when the file holds several sections. Reading section 1 of a volume
    would silently turn each subtomogram into one 2-D slice.
    """
    whole = ~names.astype(str).str.contains("@", regex=False).to_numpy()
    if not whole.any():
        return
    counts = np.array([len(s) for s in images.sources], dtype=np.int64)[images.stack_ids]
    bad = whole & (counts > 1)
    if bad.any():
        row = int(np.argmax(bad))
        raise StackError(
            path,
            f"row {row + 1}: rlnImageName '{names.iloc[row]}' names a whole file (no N@) that"
            f" holds {counts[row]} sections: a 3-D volume (subtomogram), which RELION reads"
            " as one 3-D particle; spatial-VAE works on 2-D images (write N@file to mean one"
            " image of a stack)",
        )


def read_star_stack(
    path: str | os.PathLike[str], datadir: str | os.PathLike[str] | None = None
) -> ParticleStack:
    """Open the particles of a RELION STAR file lazily.

    Parameters
    ----------
    path : str or pathlib.Path
        The STAR file.
    datadir : str or pathlib.Path, optional
        Fallback folder for the stacks (see :func:`~.paths.candidate_paths`).

    Returns
    -------
    ParticleStack
        Images in STAR order; metadata is :func:`parse_star_table`'s table.
    """
    path = Path(path)
    table = parse_star_table(path)
    refuse_volumes(path, table)
    stacks, local = split_image_names(path, table["rlnImageName"])
    folder = Path(os.path.abspath(path)).parent
    images = gather_stacks(
        path, stacks, local, [folder], as_datadir(datadir), "rlnImageName", index_base=1
    )
    refuse_whole_file_names(path, table["rlnImageName"], images)
    ctf, ctf_problem = ctf_from_star_table(path, table, pixel_sizes_per_row(table))
    return ParticleStack(
        path=path,
        images=images,
        pixel_size=pixel_size_from_table(table),
        metadata=table,
        image_names=table["rlnImageName"].astype(str).tolist(),
        ctf=ctf,
        ctf_problem=ctf_problem,
    )
