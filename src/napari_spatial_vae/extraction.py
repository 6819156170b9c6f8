"""Micrographs + picks -> a RELION 3.1 particle STAR with one ``.mrcs`` per micrograph.

The job that ``spatial-vae extract`` and the napari extract widget share. It joins the io
layer (reading micrographs and coordinates, writing stacks and STAR files) and the numpy
extraction of :mod:`napari_spatial_vae.core.extract`. Memory stays at one micrograph, its
boxes and its output stack, whatever the number of micrographs.

Output layout: ``PARTICLES.star`` and, next to it, ``PARTICLES_<micrograph>.mrcs`` for every
micrograph with particles. ``rlnImageName`` holds the stack's path relative to the current
folder (RELION resolves names against its project folder, the folder it runs in); this
project's reader tries the STAR's own folder too, where the stacks are. Nothing appears
under its final name until everything is written: stacks are staged under hidden names and
moved into place together with the STAR file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_spatial_vae.core.extract import box_corners, boxes_inside, extract_boxes
from napari_spatial_vae.io.errors import StackError
from napari_spatial_vae.io.micrographs import MicrographSet
from napari_spatial_vae.io.particles_star import particles_star_tables, write_star
from napari_spatial_vae.io.writers import MrcsWriter

__all__ = ["ExtractionResult", "check_box_sizes", "extract_particles", "stack_name"]

Progress = Callable[[int, int], None]


@dataclass
class ExtractionResult:
    """What :func:`extract_particles` wrote.

    Attributes
    ----------
    star : pathlib.Path
        The particle STAR file.
    stacks : list of pathlib.Path
        One ``.mrcs`` per micrograph with particles.
    n_particles : int
        Particles written.
    n_skipped : int
        Picks whose box left the micrograph (not extracted).
    pixel_size : float or None
        Å per pixel of the extracted images.
    skipped_per_micrograph : dict of str to int
        Skipped picks by micrograph name (only those with some).
    """

    star: Path
    stacks: list[Path]
    n_particles: int
    n_skipped: int
    pixel_size: float | None
    skipped_per_micrograph: dict[str, int] = field(default_factory=dict)


def check_box_sizes(micrographs: MicrographSet, box: int, size: int | None) -> int:
    """Validate ``box`` and ``size`` (even, size <= box <= micrograph); returns the size.

    RELION needs even boxes (its box centre is pixel ``box // 2``), and Fourier cropping
    between even sizes keeps that centre in place.
    """
    height, width = micrographs.shape
    if box < 2 or box % 2:
        raise StackError(micrographs.source, f"box {box} px: must be even and at least 2")
    if box > min(height, width):
        raise StackError(
            micrographs.source,
            f"box {box} px is larger than the micrographs ({width}x{height} pixels)",
        )
    out = box if size is None else int(size)
    if out < 2 or out % 2 or out > box:
        raise StackError(
            micrographs.source, f"size {out} px: must be even, at least 2 and at most the box {box}"
        )
    return out


def stack_name(star: Path, micrograph_key: str) -> Path:
    """The ``.mrcs`` that holds one micrograph's particles, next to the STAR file."""
    return star.with_name(f"{star.stem}_{micrograph_key}.mrcs")


def _image_name_prefix(stack: Path) -> str:
    """How ``rlnImageName`` spells a stack: relative to the current folder when possible."""
    try:
        return os.path.relpath(stack.resolve(), Path.cwd())
    except ValueError:  # another drive (Windows)
        return str(stack.resolve())


def extract_particles(
    micrographs: MicrographSet,
    picks: pd.DataFrame,
    output: str | os.PathLike[str],
    box: int,
    size: int | None = None,
    invert: bool = True,
    normalise: bool = True,
    pixel_size: float | None = None,
    progress: Progress | None = None,
) -> ExtractionResult:
    """Extract every pick whose box lies on its micrograph and write a particle STAR.

    Parameters
    ----------
    micrographs : MicrographSet
        The micrographs (read one at a time).
    picks : pandas.DataFrame
        :func:`~napari_spatial_vae.io.coordinates.match_picks`'s table: ``index``
        (micrograph), ``x``, ``y``, ``score``.
    output : str or os.PathLike
        The particle STAR file to write.
    box : int
        Box side in micrograph pixels (even).
    size : int, optional
        Side after Fourier cropping (even, at most ``box``; default ``box``).
    invert : bool
        Multiply by -1: dark particles on a bright background (cryo-EM micrographs) become
        white, as RELION and this project's models expect.
    normalise : bool
        Background outside 75% of the box to mean 0, standard deviation 1.
    pixel_size : float, optional
        Å per micrograph pixel when the micrographs do not say (or to override them).
    progress : callable, optional
        ``progress(done, total)`` after each micrograph.

    Returns
    -------
    ExtractionResult

    Raises
    ------
    StackError
        Box or size invalid, or no pick whose box fits; nothing is written then.
    """
    star = Path(output)
    size = check_box_sizes(micrographs, box, size)
    if len(picks) == 0:
        raise StackError(star, "no picks to extract (are the coordinate files empty?)")
    mic_pixel = pixel_size if pixel_size is not None else micrographs.pixel_size
    out_pixel = None if mic_pixel is None else mic_pixel * box / size

    index = picks["index"].to_numpy(dtype=np.int64)
    x = picks["x"].to_numpy(dtype=np.float64)
    y = picks["y"].to_numpy(dtype=np.float64)
    rows, cols = box_corners(x, y, box)
    inside = boxes_inside(rows, cols, box, micrographs.shape)
    if not inside.any():
        raise StackError(
            star, f"none of the {len(picks)} picks has its {box} px box inside its micrograph"
        )
    skipped: dict[str, int] = {}
    for i, count in zip(*np.unique(index[~inside], return_counts=True), strict=True):
        skipped[micrographs.names[int(i)]] = int(count)

    # particles grouped by micrograph (micrograph order), input order within each
    order = np.flatnonzero(inside)
    order = order[np.argsort(index[order], kind="stable")]
    keys = micrographs.keys
    staged: list[tuple[Path, Path]] = []
    image_names: list[str] = []
    per_micrograph = np.unique(index[order])
    try:
        for done, i in enumerate(per_micrograph.tolist()):
            rows_i = order[index[order] == i]
            final = stack_name(star, keys[i])
            hidden = final.with_name(f".{final.name}.staged")
            images = extract_boxes(
                micrographs.read(i), x[rows_i], y[rows_i], box, size, normalise, invert
            )
            with MrcsWriter(hidden, len(images), (size, size), out_pixel) as writer:
                writer.write(0, images)
            staged.append((hidden, final))
            prefix = _image_name_prefix(final)
            image_names.extend(f"{k + 1:06d}@{prefix}" for k in range(len(images)))
            if progress is not None:
                progress(done + 1, len(per_micrograph))
        score = picks["score"].to_numpy(dtype=np.float64) if "score" in picks else None
        blocks = particles_star_tables(
            micrographs.names,
            micrographs.table,
            index[order],
            x[order],
            y[order],
            image_names,
            mic_pixel,
            out_pixel,
            size,
            None if score is None else score[order],
        )
        # the stacks move into place just before the STAR file that lists them
        for hidden, final in staged:
            os.replace(hidden, final)
        staged_done = [final for _, final in staged]
        try:
            write_star(star, blocks)
        except BaseException:
            for final in staged_done:
                final.unlink(missing_ok=True)
            raise
    except BaseException:
        for hidden, _ in staged:
            hidden.unlink(missing_ok=True)
        raise
    return ExtractionResult(
        star=star,
        stacks=staged_done,
        n_particles=len(order),
        n_skipped=int((~inside).sum()),
        pixel_size=out_pixel,
        skipped_per_micrograph=skipped,
    )
