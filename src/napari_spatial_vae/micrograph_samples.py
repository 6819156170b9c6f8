"""Synthetic micrographs on disk: MRC files, a micrographs STAR with CTF, and the true picks.

One generator (:func:`~napari_spatial_vae.core.simulate_micrographs.simulate_micrograph`)
feeds the napari sample data, the tests, the benchmark and ``spatial-vae
simulate-micrographs``; this module writes its output in the formats a user's own data
come in, one micrograph in memory at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from napari_spatial_vae.core.simulate_micrographs import OPTICS, simulate_micrograph
from napari_spatial_vae.io.particles_star import micrographs_star_tables, write_star
from napari_spatial_vae.io.writers import write_mrcs

__all__ = ["SyntheticMicrographFiles", "write_synthetic_micrographs"]


@dataclass
class SyntheticMicrographFiles:
    """Where :func:`write_synthetic_micrographs` wrote what.

    Attributes
    ----------
    micrographs_star : pathlib.Path
        RELION 3.1 ``micrographs_ctf.star`` (optics + ``data_micrographs`` with CTF).
    coordinates_star : pathlib.Path
        One RELION coordinate STAR with ``rlnMicrographName`` for all true picks.
    micrographs : list of pathlib.Path
        The ``.mrc`` files.
    truth : pandas.DataFrame
        One row per particle: ``micrograph`` (index), ``x``, ``y``, ``conformation``,
        ``theta`` (radians).
    ctf : pandas.DataFrame
        One row per micrograph: the RELION CTF labels written to the STAR file.
    """

    micrographs_star: Path
    coordinates_star: Path
    micrographs: list[Path]
    truth: pd.DataFrame
    ctf: pd.DataFrame


def write_synthetic_micrographs(
    folder: str | os.PathLike[str],
    n_micrographs: int = 4,
    shape: tuple[int, int] = (1024, 1024),
    n_particles: int = 50,
    particle_size: int = 64,
    pixel_size: float = 1.0,
    noise_std: float = 1.0,
    seed: int = 0,
) -> SyntheticMicrographFiles:
    """Write synthetic micrographs, their CTF and their true particle positions.

    Layout: ``folder/Micrographs/mic_001.mrc ...``, ``folder/micrographs_ctf.star`` (names
    relative to ``folder``) and ``folder/picks.star``. Parameters are those of
    :func:`~napari_spatial_vae.core.simulate_micrographs.simulate_micrograph`; micrograph
    ``k`` uses seed ``seed + k``.
    """
    root = Path(folder)
    mic_dir = root / "Micrographs"
    mic_dir.mkdir(parents=True, exist_ok=True)
    names, files, truth, ctf = [], [], [], []
    for k in range(n_micrographs):
        sim = simulate_micrograph(
            shape, n_particles, particle_size, pixel_size, noise_std, seed=seed + k
        )
        path = mic_dir / f"mic_{k + 1:03d}.mrc"
        write_mrcs(path, sim.image[None], pixel_size)
        names.append(f"Micrographs/{path.name}")
        files.append(path)
        ctf.append(sim.ctf)
        truth.append(
            pd.DataFrame(
                {
                    "micrograph": k,
                    "x": sim.x,
                    "y": sim.y,
                    "conformation": sim.conformation,
                    "theta": sim.theta,
                }
            )
        )
        del sim
    ctf_table = pd.DataFrame(ctf)
    truth_table = pd.concat(truth, ignore_index=True)
    star = root / "micrographs_ctf.star"
    write_star(star, micrographs_star_tables(names, pixel_size, ctf_table, **OPTICS))
    picks = root / "picks.star"
    coordinates = pd.DataFrame(
        {
            "rlnMicrographName": [names[i] for i in truth_table["micrograph"]],
            "rlnCoordinateX": truth_table["x"],
            "rlnCoordinateY": truth_table["y"],
        }
    )
    write_star(picks, {"particles": coordinates})
    return SyntheticMicrographFiles(star, picks, files, truth_table, ctf_table)
