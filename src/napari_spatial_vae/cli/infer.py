"""``spatial-vae infer`` and ``traverse``: apply a trained model."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from napari_spatial_vae.cli._common import (
    HOLD_STILL_HELP,
    UsageError,
    check_suffix,
    hold_still_frame,
    open_stack,
    say,
)
from napari_spatial_vae.core.config import REFINE_Z_STEPS


def cmd_infer(args: argparse.Namespace) -> int:
    import pandas as pd

    from napari_spatial_vae.core.checkpoint import load_model
    from napari_spatial_vae.core.device import resolve_device
    from napari_spatial_vae.core.infer import Poses, check_rotation_search, iter_inference
    from napari_spatial_vae.core.performance import release_large_blocks
    from napari_spatial_vae.io import MrcsWriter, write_poses

    poses_path = check_suffix(args.output, (".csv", ".star"), "POSES")
    aligned_path = (
        check_suffix(args.aligned, (".mrcs", ".mrc"), "--aligned") if args.aligned else None
    )
    recon_path = (
        check_suffix(args.reconstructions, (".mrcs", ".mrc"), "--reconstructions")
        if args.reconstructions
        else None
    )
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.refine_steps is not None and args.refine_steps < 0:
        raise UsageError(f"--refine-steps must be 0 or more, got {args.refine_steps}")
    model, config, _ = load_model(Path(args.run_dir), resolve_device(args.device or "auto"))
    if args.search_rotation:
        check_rotation_search(model)  # before any output is started
    stack = open_stack(args.particles, args.datadir)
    frame = hold_still_frame(args.hold_still, model)
    height, width = stack.shape[1], stack.shape[2]
    from tqdm import tqdm

    # memory bounded by the batch over any number of images (process-wide: this process
    # only infers)
    release_large_blocks()
    parts = []
    half_turned = 0  # particles read a half turn from the encoder's pose
    with contextlib.ExitStack() as outputs:
        # each writer publishes its file only when the whole stack went through
        aligned_writer = recon_writer = None
        if aligned_path is not None:
            aligned_writer = outputs.enter_context(
                MrcsWriter(aligned_path, len(stack), (height, width), stack.pixel_size)
            )
        if recon_path is not None:
            recon_writer = outputs.enter_context(
                MrcsWriter(recon_path, len(stack), (height, width), stack.pixel_size)
            )
        bar = outputs.enter_context(
            tqdm(
                total=len(stack),
                unit="img",
                file=sys.stderr,
                disable=args.quiet,
                dynamic_ncols=True,
                desc="inferring",
            )
        )
        for batch in iter_inference(
            model,
            config,
            stack,
            batch_size=args.batch_size or 256,
            aligned=aligned_writer is not None,
            reconstructions=recon_writer is not None,
            with_ctf=args.with_ctf,
            refine_steps=REFINE_Z_STEPS if args.refine_steps is None else args.refine_steps,
            search_rotation=args.search_rotation,
            frame=frame,
        ):
            parts.append(batch.poses)
            half_turned += batch.half_turned
            if aligned_writer is not None and batch.aligned is not None:
                aligned_writer.write(batch.start, batch.aligned)
            if recon_writer is not None and batch.reconstructions is not None:
                recon_writer.write(batch.start, batch.reconstructions)
            bar.update(len(batch.poses.theta))
    table = pd.DataFrame(Poses.concatenate(parts).columns())
    for note in write_poses(poses_path, table, stack):
        say(note)  # optics defaults assumed, .mrcs links or copies made for RELION
    say(
        f"wrote poses of {len(table)} images to {poses_path}"
        + (f", aligned particles to {aligned_path}" if aligned_path else "")
        + (f", reconstructions to {recon_path}" if recon_path else "")
    )
    if half_turned:
        say(
            f"{half_turned} of the {len(table)} particles ({100 * half_turned / len(table):.1f} %) "
            "were read a half turn from the encoder's pose, where that fit them clearly better "
            "(many: a particle that looks alike both ways up, or an undertrained run)"
        )
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.checkpoint import load_model
    from napari_spatial_vae.core.infer import latent_grid, latent_traversal
    from napari_spatial_vae.io import write_mrcs

    out = check_suffix(args.output, (".mrcs", ".mrc"), "TRAVERSAL")
    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2, got {args.steps}")
    model, _, _ = load_model(Path(args.run_dir), "cpu")
    frame = hold_still_frame(args.hold_still, model)
    images = (
        latent_grid(model, args.steps, frame=frame)
        if args.grid
        else latent_traversal(model, args.steps, frame=frame)
    )
    flat = images.reshape(-1, *images.shape[2:])
    write_mrcs(out, flat, None)
    layout = (
        f"{args.steps}x{args.steps} grid over z1, z2"
        if args.grid
        else f"{images.shape[0]} latent dimension(s) x {args.steps} steps"
    )
    say(f"wrote {len(flat)} images ({layout}) to {out}")
    return 0


def register(sub: Any) -> None:
    """Add the ``infer`` and ``traverse`` subcommands to the subparsers ``sub``."""
    infer_p = sub.add_parser(
        "infer",
        help="poses, latents, aligned particles, reconstructions",
        description="Apply a trained model to a particle stack.",
    )
    infer_p.add_argument("run_dir", metavar="RUN_DIR")
    infer_p.add_argument("particles", metavar="PARTICLES")
    infer_p.add_argument("-o", "--output", required=True, metavar="POSES.csv|POSES.star")
    infer_p.add_argument(
        "--aligned",
        metavar="OUT.mrcs",
        help="each particle rotated and shifted back by its inferred pose",
    )
    infer_p.add_argument(
        "--reconstructions",
        metavar="OUT.mrcs",
        help="the generator's image of each particle at theta = 0, dx = 0 (CTF-free)",
    )
    infer_p.add_argument(
        "--with-ctf",
        action="store_true",
        help="reconstructions as the data should look: at each particle's pose, filtered by "
        "its CTF from the .star/.cs file",
    )
    infer_p.add_argument("--datadir", metavar="DIR")
    infer_p.add_argument("--batch-size", type=int, help="images per batch (default 256)")
    infer_p.add_argument(
        "--refine-steps",
        type=int,
        metavar="N",
        help="with more than one latent, gradient steps that fit each particle's z to the "
        "trained generator at its inferred pose (one latent: z is read from its posterior "
        f"on a grid); 0 reports the encoder's z and std (default {REFINE_Z_STEPS})",
    )
    infer_p.add_argument(
        "--search-rotation",
        action="store_true",
        help="one latent z: search the whole circle of rotations against the generator for "
        "each particle instead of taking the encoder's (noisy particles, about SNR 0.1; about "
        "five times slower)",
    )
    infer_p.add_argument("--hold-still", metavar="MASK", help=HOLD_STILL_HELP)
    infer_p.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    infer_p.add_argument("-q", "--quiet", action="store_true")
    infer_p.set_defaults(run=cmd_infer)

    trav_p = sub.add_parser(
        "traverse",
        help="images along each latent dimension",
        description="Walk the latent space (theta = 0, dx = 0).",
    )
    trav_p.add_argument("run_dir", metavar="RUN_DIR")
    trav_p.add_argument("-o", "--output", required=True, metavar="TRAVERSAL.mrcs")
    trav_p.add_argument("--steps", type=int, default=9, help="images per dimension (default 9)")
    trav_p.add_argument(
        "--grid",
        action="store_true",
        help="a steps x steps grid over z1 and z2 instead (the paper's Fig. 3)",
    )
    trav_p.add_argument("--hold-still", metavar="MASK", help=HOLD_STILL_HELP)
    trav_p.set_defaults(run=cmd_traverse)
