"""One PNG of z1 traversals of several trained runs, one row per run (the paper's Fig. 4 look).

Used to show what a model's z does beyond the numbers, for example a run whose template turns
upside down part-way along z (docs/results.md)::

    python benchmarks/traversal_figure.py RUN_A RUN_B --labels "seed 2" "seed 4" -o out.png

Each run folder is one ``spatial-vae train`` output (or ``design_family.py --keep-runs``).
Rows share the 9 latent values of ``spatial-vae traverse`` (5 % .. 95 % of N(0, 1)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from figures import montage, save_panels  # same folder: run as a script

from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.errors import SpatialVAEError
from napari_spatial_vae.core.infer import latent_traversal, traversal_values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG path")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (got {args.steps})")
    rows = []
    try:
        for run in args.runs:
            model, _, _ = load_model(run)
            walk = latent_traversal(model, args.steps)[0]  # (steps, H, W): z1, others at 0
            # each image scaled to its own range, so rows of different runs compare by shape
            low = walk.min(axis=(1, 2), keepdims=True)
            high = walk.max(axis=(1, 2), keepdims=True)
            rows.append((walk - low) / np.maximum(high - low, 1e-12))
    except SpatialVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    values = ", ".join(f"{v:.2f}" for v in traversal_values(args.steps))
    title = "z1 = " + values + "; rows: " + " / ".join(labels)
    print(save_panels([montage(np.stack(rows))], [title], args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
