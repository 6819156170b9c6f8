"""``spatial-vae simulate``: synthetic particles with ground truth."""

from __future__ import annotations

import argparse
from typing import Any

from napari_spatial_vae.cli._common import UsageError, check_suffix, say


def cmd_simulate(args: argparse.Namespace) -> int:
    import pandas as pd

    from napari_spatial_vae._atomic import atomic_output
    from napari_spatial_vae.core.simulate import simulate_particles
    from napari_spatial_vae.io import write_mrcs

    out = check_suffix(args.output, (".mrcs", ".mrc"), "OUT")
    if args.n < 1 or args.size < 8:
        raise UsageError("--n must be at least 1 and --size at least 8")
    if args.snr is not None and args.snr <= 0:
        raise UsageError(f"--snr must be positive, got {args.snr}")
    sim = simulate_particles(args.n, args.size, snr=args.snr, seed=args.seed)
    write_mrcs(out, sim.images, args.pixel_size)
    truth = out.with_name(out.stem + "_truth.csv")
    table = pd.DataFrame(
        {
            "conformation": sim.conformation,
            "theta": sim.theta,
            "dx": sim.shift_px[:, 0],
            "dy": sim.shift_px[:, 1],
        }
    )
    with atomic_output(truth) as tmp:
        table.to_csv(tmp, index=False)
    say(
        f"wrote {args.n} simulated {args.size}x{args.size} particles to {out} and their "
        f"ground truth to {truth}"
    )
    return 0


def register(sub: Any) -> None:
    """Add the ``simulate`` subcommand to the subparsers ``sub``."""
    sim_p = sub.add_parser(
        "simulate",
        help="write a synthetic particle stack with ground truth",
        description="Synthetic particles: a hinged two-domain object with a "
        "continuous motion, random in-plane rotations and shifts, noise.",
    )
    sim_p.add_argument("-o", "--output", required=True, metavar="OUT.mrcs")
    sim_p.add_argument("--n", type=int, default=4000, help="number of particles (default 4000)")
    sim_p.add_argument("--size", type=int, default=40, help="box size in pixels (default 40)")
    sim_p.add_argument("--snr", type=float, default=1.0, help="signal-to-noise ratio (default 1)")
    sim_p.add_argument("--pixel-size", type=float, default=None, help="Å per pixel to record")
    sim_p.add_argument("--seed", type=int, default=0)
    sim_p.set_defaults(run=cmd_simulate)
