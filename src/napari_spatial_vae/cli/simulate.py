"""``spatial-vae simulate``: synthetic particles with ground truth, optionally with a CTF."""

from __future__ import annotations

import argparse
from typing import Any

from napari_spatial_vae.cli._common import UsageError, check_suffix, say

# the issue-11 benchmark's microscope: 3 Å/px, 300 kV, Cs 2.7 mm, 10 % amplitude contrast
CTF_PIXEL_SIZE = 3.0


def cmd_simulate(args: argparse.Namespace) -> int:
    import pandas as pd

    from napari_spatial_vae._atomic import atomic_output
    from napari_spatial_vae.core.simulate import simulate_particles
    from napari_spatial_vae.io import write_mrcs
    from napari_spatial_vae.io.ctf_params import write_particles_star

    out = check_suffix(args.output, (".mrcs", ".mrc", ".star"), "OUT")
    if args.n < 1 or args.size < 8:
        raise UsageError("--n must be at least 1 and --size at least 8")
    if args.snr is not None and args.snr <= 0:
        raise UsageError(f"--snr must be positive, got {args.snr}")
    ctf = None
    pixel_size = args.pixel_size
    if args.ctf:
        if out.suffix.lower() != ".star":
            raise UsageError(
                "--ctf writes a RELION .star file (the CTF travels with the particles): "
                f"use -o NAME.star, got {args.output!r}"
            )
        ctf = _ctf_settings(args)
        pixel_size = ctf.pixel_size
    if pixel_size is not None and pixel_size <= 0:
        raise UsageError(f"--pixel-size must be positive, got {pixel_size}")
    sim = simulate_particles(args.n, args.size, snr=args.snr, seed=args.seed, ctf=ctf)
    truth_table = pd.DataFrame(
        {
            "conformation": sim.conformation,
            "theta": sim.theta,
            "dx": sim.shift_px[:, 0],
            "dy": sim.shift_px[:, 1],
        }
    )
    if out.suffix.lower() == ".star":
        mrcs = write_particles_star(out, sim.images, pixel_size, sim.ctf, truth_table)
        what = "with their CTF and ground truth" if ctf else "with their ground truth"
        say(f"wrote {args.n} simulated {args.size}x{args.size} particles to {mrcs}, {out} {what}")
        if ctf is not None and sim.ctf is not None:
            say("CTF: " + sim.ctf.summary())
        return 0
    write_mrcs(out, sim.images, pixel_size)
    truth = out.with_name(out.stem + "_truth.csv")
    with atomic_output(truth) as tmp:
        truth_table.to_csv(tmp, index=False)
    say(
        f"wrote {args.n} simulated {args.size}x{args.size} particles to {out} and their "
        f"ground truth to {truth}"
    )
    return 0


def _ctf_settings(args: argparse.Namespace) -> Any:
    from napari_spatial_vae.core.simulate import CtfSimulation

    low, high = args.defocus
    if not 0 < low <= high:
        raise UsageError(f"--defocus needs 0 < MIN <= MAX in µm, got {low:g} {high:g}")
    if args.astigmatism < 0 or args.astigmatism / 2 >= low * 1e4:
        raise UsageError(
            f"--astigmatism must be >= 0 Å and below twice the smallest defocus, got "
            f"{args.astigmatism:g}"
        )
    if args.voltage <= 0 or args.cs < 0 or not 0 <= args.amplitude_contrast < 1:
        raise UsageError("--voltage must be > 0, --cs >= 0 and --amplitude-contrast in [0, 1)")
    return CtfSimulation(
        defocus_um=(low, high),
        astigmatism=args.astigmatism,
        voltage=args.voltage,
        cs=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        pixel_size=args.pixel_size if args.pixel_size is not None else CTF_PIXEL_SIZE,
        dark=args.dark,
    )


def register(sub: Any) -> None:
    """Add the ``simulate`` subcommand to the subparsers ``sub``."""
    sim_p = sub.add_parser(
        "simulate",
        help="write a synthetic particle stack with ground truth",
        description="Synthetic particles: a hinged two-domain object with a "
        "continuous motion, random in-plane rotations and shifts, noise; optionally "
        "filtered by a per-particle astigmatic CTF (written to a RELION .star).",
    )
    sim_p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="OUT.mrcs (+ OUT_truth.csv) or OUT.star (+ OUT.mrcs; ground truth in the STAR)",
    )
    sim_p.add_argument("--n", type=int, default=4000, help="number of particles (default 4000)")
    sim_p.add_argument("--size", type=int, default=40, help="box size in pixels (default 40)")
    sim_p.add_argument(
        "--snr", type=float, default=1.0, help="signal-to-noise ratio, after the CTF (default 1)"
    )
    sim_p.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        help=f"Å per pixel to record (default with --ctf: {CTF_PIXEL_SIZE})",
    )
    sim_p.add_argument("--seed", type=int, default=0)
    ctf = sim_p.add_argument_group("CTF (RELION conventions; see docs/conventions.md)")
    ctf.add_argument("--ctf", action="store_true", help="filter every particle by its CTF")
    ctf.add_argument(
        "--defocus",
        type=float,
        nargs=2,
        default=(0.5, 3.5),
        metavar=("MIN", "MAX"),
        help="mean defocus range in µm, uniform (default 0.5 3.5)",
    )
    ctf.add_argument(
        "--astigmatism",
        type=float,
        default=300.0,
        metavar="Å",
        help="largest |defocus U - V| in Å, random angle (default 300)",
    )
    ctf.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    ctf.add_argument("--cs", type=float, default=2.7, help="spherical aberration, mm (default 2.7)")
    ctf.add_argument("--amplitude-contrast", type=float, default=0.1, help="fraction (default 0.1)")
    ctf.add_argument(
        "--dark",
        action="store_true",
        help="dark particles as recorded (default: white, contrast inverted as RELION extracts)",
    )
    sim_p.set_defaults(run=cmd_simulate)
