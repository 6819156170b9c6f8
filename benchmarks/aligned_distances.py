"""How far apart a design's conformations stay once a model may turn and shift one onto another.

For each design (``core/designs.py``), noise-free projections at tilt 0 of conformations
0, 0.1, ..., 1 (first motion; others at 0) are each compared with every other conformation
rendered at every in-plane turn within ``--turn`` degrees (1-degree steps) and shift within
``--shift`` pixels (half-pixel steps); the best Pearson correlation is kept. A row that stops
falling says the rest of the motion moves the aligned image no further from that
conformation: a short path that a one-dimensional z can lay out straight or fold at almost
no cost in likelihood (docs/defaults.md, "Why `out-of-plane` folds"). About a minute per
design on one core:

    python benchmarks/aligned_distances.py --designs three-domain tilted-hinge out-of-plane
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_spatial_vae.core.designs import DESIGNS, render_design


def _standardised(images: np.ndarray) -> np.ndarray:
    """``(N, H * W)`` rows of zero mean and unit variance."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / flat.std(axis=1, keepdims=True)


def aligned_correlations(
    name: str, steps: int = 11, turn_deg: float = 40.0, shift_px: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Conformations ``(C,)`` and ``(C, C)`` best correlations: row i at pose 0 against
    column j at its best turn and shift."""
    design = DESIGNS[name]
    conformations = np.linspace(0.0, 1.0, steps)
    n_motions = len(design.motions)

    def motion(values: np.ndarray) -> np.ndarray:
        out = np.zeros((len(values), n_motions))
        out[:, 0] = values
        return out

    count = len(conformations)
    reference = _standardised(
        render_design(
            design, motion(conformations), np.zeros(count), np.zeros((count, 2)), np.zeros(count)
        )
    )
    turns = np.radians(np.arange(-turn_deg, turn_deg + 0.5, 1.0))
    offsets = np.arange(-shift_px, shift_px + 0.01, 0.5)
    shifts = np.array([(x, y) for x in offsets for y in offsets])
    poses = len(turns) * len(shifts)
    theta = np.repeat(turns, len(shifts))
    shift = np.tile(shifts, (len(turns), 1))
    best = np.empty((count, count))
    for j, value in enumerate(conformations):
        posed = _standardised(
            render_design(design, motion(np.full(poses, value)), theta, shift, np.zeros(poses))
        )
        best[:, j] = (reference @ posed.T / reference.shape[1]).max(axis=1)
    return conformations, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--designs", nargs="+", default=["three-domain", "tilted-hinge", "out-of-plane"]
    )
    parser.add_argument("--turn", type=float, default=40.0, help="degrees either way")
    parser.add_argument("--shift", type=float, default=2.0, help="pixels either way")
    args = parser.parse_args()
    for name in args.designs:
        if name not in DESIGNS:
            parser.error(f"unknown design {name!r}; choose from {', '.join(DESIGNS)}")
        conformations, best = aligned_correlations(name, turn_deg=args.turn, shift_px=args.shift)
        print(f"{name}: best correlation, row at pose 0 against column turned and shifted")
        print("      " + " ".join(f"{c:6.1f}" for c in conformations))
        for c, row in zip(conformations, best, strict=True):
            print(f"{c:5.1f} " + " ".join(f"{v:6.3f}" for v in row))


if __name__ == "__main__":
    main()
