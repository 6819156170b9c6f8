"""``spatial-vae extract``: micrographs + coordinates -> a RELION particle STAR and stacks."""

from __future__ import annotations

import argparse
import time
from typing import Any

from napari_spatial_vae.cli._common import UsageError, check_suffix, say


def cmd_extract(args: argparse.Namespace) -> int:
    from napari_spatial_vae.extraction import check_box_sizes, extract_particles
    from napari_spatial_vae.io.coordinates import match_picks, read_coordinates
    from napari_spatial_vae.io.micrographs import read_micrographs

    out = check_suffix(args.output, (".star",), "-o PARTICLES")
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise UsageError(f"--pixel-size must be positive, got {args.pixel_size}")
    started = time.perf_counter()
    micrographs = read_micrographs(args.micrographs)
    check_box_sizes(micrographs, args.box, args.size)
    picks = match_picks(read_coordinates(args.coords), micrographs)
    say(
        f"{len(micrographs)} micrographs of {micrographs.shape[1]}x{micrographs.shape[0]} px,"
        f" {len(picks)} picks; extracting {args.box} px boxes"
        + (f" -> {args.size} px" if args.size and args.size != args.box else "")
        + (" (inverted)" if args.invert else "")
    )
    result = extract_particles(
        micrographs,
        picks,
        out,
        box=args.box,
        size=args.size,
        invert=args.invert,
        normalise=args.normalise,
        pixel_size=args.pixel_size,
    )
    if result.n_skipped:
        worst = sorted(result.skipped_per_micrograph.items(), key=lambda kv: -kv[1])[:3]
        say(
            f"skipped {result.n_skipped} of {len(picks)} picks whose box leaves the micrograph"
            f" (most on {', '.join(f'{name}: {n}' for name, n in worst)})"
        )
    pixel = f"{result.pixel_size:.4g} Å/px" if result.pixel_size else "unknown pixel size"
    say(
        f"wrote {result.n_particles} particles ({pixel}) to {out} and {len(result.stacks)}"
        f" stacks next to it in {time.perf_counter() - started:.1f} s"
    )
    if result.pixel_size is None:
        say("note: the pixel size is unknown (RELION needs it); give it with --pixel-size")
    if micrographs.table is None or "rlnDefocusU" not in micrographs.table.columns:
        say("note: the micrographs carry no CTF (give a micrographs STAR to copy it)")
    return 0


def cmd_simulate_micrographs(args: argparse.Namespace) -> int:
    from napari_spatial_vae.micrograph_samples import write_synthetic_micrographs

    if args.n < 1 or args.side < 64 or args.particles < 1:
        raise UsageError("--n and --particles must be at least 1, --side at least 64")
    if not args.pixel_size > 0:
        raise UsageError(f"--pixel-size must be positive, got {args.pixel_size}")
    files = write_synthetic_micrographs(
        args.output,
        n_micrographs=args.n,
        shape=(args.side, args.side),
        n_particles=args.particles,
        particle_size=args.particle_size,
        pixel_size=args.pixel_size,
        seed=args.seed,
    )
    say(
        f"wrote {args.n} micrographs to {files.micrographs[0].parent}, their CTF to"
        f" {files.micrographs_star} and {len(files.truth)} true picks to {files.coordinates_star}"
    )
    return 0


def register(sub: Any) -> None:
    """Add the ``extract`` and ``simulate-micrographs`` subcommands to the subparsers ``sub``."""
    p = sub.add_parser(
        "extract",
        help="extract particles from micrographs at picked coordinates",
        description="Cut boxes centred on the picked coordinates (rounded to the nearest pixel,"
        " as RELION does), optionally downsample them by Fourier cropping, normalise their"
        " background and write a RELION 3.1 particle STAR with one .mrcs per micrograph next"
        " to it; each particle carries its micrograph's CTF. Boxes that leave the micrograph"
        " are skipped and counted.",
    )
    p.add_argument(
        "micrographs",
        nargs="+",
        metavar="MICROGRAPHS",
        help="a RELION micrographs STAR (with CTF), .mrc files or a folder of them",
    )
    p.add_argument(
        "--coords",
        nargs="+",
        required=True,
        metavar="COORDS",
        help="RELION .star, .box, .cbox, topaz .txt or cryoSPARC .cs files, or a folder;"
        " per-micrograph files are matched to micrographs by base name",
    )
    p.add_argument("--box", type=int, required=True, metavar="PX", help="box side in pixels")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="PX",
        help="downsample to this side (default: box)",
    )
    p.add_argument(
        "--invert",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="invert contrast so that dark particles become white (default: on; cryo-EM"
        " micrographs show particles dark, and RELION and spatial-VAE expect them white)",
    )
    p.add_argument(
        "--normalise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="background outside 75%% of the box to mean 0, std 1, as RELION (default: on)",
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="Å",
        help="Å per micrograph pixel, when the micrographs do not say or say it wrong",
    )
    p.add_argument("-o", "--output", required=True, metavar="PARTICLES.star")
    p.set_defaults(run=cmd_extract)

    sim = sub.add_parser(
        "simulate-micrographs",
        help="write synthetic micrographs with CTF parameters and true picks",
        description="Synthetic micrographs (the simulate command's hinged particles, dark, at"
        " known positions, plus noise) as .mrc files under OUT/Micrographs, a RELION"
        " micrographs STAR with CTF parameters (OUT/micrographs_ctf.star) and the true picks"
        " (OUT/picks.star).",
    )
    sim.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    sim.add_argument("--n", type=int, default=4, help="number of micrographs (default 4)")
    sim.add_argument("--side", type=int, default=1024, help="micrograph side in px (default 1024)")
    sim.add_argument("--particles", type=int, default=50, help="particles per micrograph")
    sim.add_argument(
        "--particle-size", type=int, default=64, help="particle render size in px (default 64)"
    )
    sim.add_argument("--pixel-size", type=float, default=2.0, help="Å per pixel (default 2)")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(run=cmd_simulate_micrographs)
