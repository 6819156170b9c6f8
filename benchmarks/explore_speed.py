"""Speed of the explore tools: pose-aligned averages and subset export.

Prints one JSON row with

* ``average_s`` / ``average_ctf_s``: averaging ``--n`` particles of ``--size`` px by their
  poses, plain and CTF-Wiener-filtered (images come from a generator that makes each batch
  of noise on request, so the number is the averaging itself, not the disk);
* ``star_write_s``: writing a ``--rows``-row RELION STAR (optics + particle block, 20
  columns) with starfile, ``subset_s``: :func:`io.subset.write_subset` selecting half of
  its rows (it re-reads the input STAR, so this includes parsing all of it).

    python benchmarks/explore_speed.py                 # 100,000 x 128 px, 1,000,000 rows
    python benchmarks/explore_speed.py --n 64 --size 16 --rows 200   # smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

from napari_spatial_vae.core.explore import aligned_average
from napari_spatial_vae.io.sources import ArraySource
from napari_spatial_vae.io.stack import ParticleStack
from napari_spatial_vae.io.subset import write_subset


class NoiseStack:
    """``(N, S, S)`` float32 images made on request (memory for one batch only)."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        self.shape = (n, size, size)
        self.dtype = np.dtype(np.float32)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.shape[0]

    def read_batch(self, indices: np.ndarray) -> np.ndarray:
        return self.rng.standard_normal((len(indices), *self.shape[1:]), dtype=np.float32)


class NoiseCtf:
    """``(N, S, S//2+1)`` CTF rows on request: a simple isotropic formula, defocus per row."""

    def __init__(self, n: int, size: int) -> None:
        self.shape = (n, size, size // 2 + 1)
        k2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
        self.k2 = k2.astype(np.float32)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        defocus = 500.0 + (np.asarray(rows, np.float32) % 600)[:, None, None]
        return -np.sin(np.pi * defocus * self.k2 * 4).astype(np.float32)


def time_averages(n: int, size: int, batch: int, ctf: bool) -> tuple[float, float | None]:
    rng = np.random.default_rng(1)
    theta = rng.uniform(-np.pi, np.pi, n)
    dx, dy = rng.normal(0, 2, n), rng.normal(0, 2, n)
    start = time.perf_counter()
    aligned_average(NoiseStack(n, size), theta, dx, dy, batch_size=batch)
    plain = time.perf_counter() - start
    if not ctf:
        return plain, None
    start = time.perf_counter()
    aligned_average(NoiseStack(n, size), theta, dx, dy, ctf=NoiseCtf(n, size), batch_size=batch)
    return plain, time.perf_counter() - start


def time_subset(rows: int, folder: Path) -> tuple[float, float]:
    rng = np.random.default_rng(2)
    particles = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(0, 4096, rows),
            "rlnCoordinateY": rng.uniform(0, 4096, rows),
            "rlnImageName": [f"{i % 1000 + 1:06d}@Extract/mic{i // 1000:05d}.mrcs"
                             for i in range(rows)],
            "rlnMicrographName": [f"MotionCorr/mic{i // 1000:05d}.mrc" for i in range(rows)],
            "rlnDefocusU": rng.uniform(8000, 25000, rows),
            "rlnDefocusV": rng.uniform(8000, 25000, rows),
            "rlnDefocusAngle": rng.uniform(-180, 180, rows),
            "rlnCtfBfactor": np.zeros(rows),
            "rlnCtfScalefactor": np.ones(rows),
            "rlnPhaseShift": np.zeros(rows),
            "rlnOpticsGroup": np.ones(rows, dtype=np.int64),
            "rlnAngleRot": rng.uniform(-180, 180, rows),
            "rlnAngleTilt": rng.uniform(0, 180, rows),
            "rlnAnglePsi": rng.uniform(-180, 180, rows),
            "rlnOriginXAngst": rng.normal(0, 3, rows),
            "rlnOriginYAngst": rng.normal(0, 3, rows),
            "rlnClassNumber": rng.integers(1, 5, rows),
            "rlnRandomSubset": rng.integers(1, 3, rows),
            "rlnGroupNumber": rng.integers(1, 50, rows),
            "rlnNormCorrection": np.ones(rows),
        }
    )  # fmt: skip
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
         "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
         "rlnImagePixelSize": [1.1], "rlnImageSize": [128], "rlnImageDimensionality": [2]}
    )  # fmt: skip
    source = folder / "particles.star"
    start = time.perf_counter()
    starfile.write({"optics": optics, "particles": particles}, source)
    write_s = time.perf_counter() - start
    # the images themselves are never read by the subset writer: a zero-memory stand-in
    images = ArraySource(np.broadcast_to(np.zeros((1, 1, 1), np.float32), (rows, 128, 128)))
    stack = ParticleStack(source, images, 1.1)
    selected = np.flatnonzero(rng.random(rows) < 0.5)
    poses = pd.DataFrame(
        {"theta": rng.uniform(-np.pi, np.pi, len(selected)), "dx": rng.normal(0, 2, len(selected)),
         "dy": rng.normal(0, 2, len(selected)), "z1": rng.normal(0, 1, len(selected)),
         "z2": rng.normal(0, 1, len(selected))}
    )  # fmt: skip
    start = time.perf_counter()
    write_subset(folder / "subset.star", stack, selected, poses)
    return write_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="particles to average")
    parser.add_argument("--size", type=int, default=128, help="particle size in pixels")
    parser.add_argument("--batch", type=int, default=256, help="particles per batch")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the STAR file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ctf", action=argparse.BooleanOptionalAction, default=True,
        help="also time the CTF-Wiener average",
    )  # fmt: skip
    parser.add_argument("--dir", default=None, help="folder for the temporary STAR files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    average_s, average_ctf_s = time_averages(args.n, args.size, args.batch, args.ctf)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        star_write_s, subset_s = time_subset(args.rows, Path(folder))
    row = {
        "n": args.n, "size": args.size, "threads": args.threads,
        "average_s": round(average_s, 2),
        "average_ctf_s": None if average_ctf_s is None else round(average_ctf_s, 2),
        "particles_per_s": round(args.n / average_s),
        "rows": args.rows, "star_write_s": round(star_write_s, 2), "subset_s": round(subset_s, 2),
    }  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()
