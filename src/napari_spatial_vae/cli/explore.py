"""``spatial-vae cluster``, ``average``, ``subset`` and ``movie``: explore what was learned.

They work on any POSES.csv with ``theta``, ``dx``, ``dy`` and ``z1..zK`` (the std columns
optional), one row per particle in input order, whether ``spatial-vae infer`` wrote it or not.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from napari_spatial_vae.cli._common import (
    HOLD_STILL_HELP,
    UsageError,
    check_suffix,
    hold_still_frame,
    open_stack,
    say,
)

_POSE_COLUMNS = ("theta", "dx", "dy")


# ---------------------------------------------------------------------------- shared


def read_pose_table(path: str) -> Any:
    """Read POSES.csv (or a POSES.star) and check the pose columns; one-line errors."""
    from napari_spatial_vae.io import read_poses

    table = read_poses(Path(path))
    missing = [c for c in _POSE_COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: no {', '.join(missing)} column(s); not a POSES.csv")
    for column in (*_POSE_COLUMNS, *latent_columns(table)):
        values = table[column].to_numpy()
        if values.dtype.kind not in "fiu" or not np.isfinite(values.astype(np.float64)).all():
            raise UsageError(f"{path}: column {column} must hold finite numbers")
    if len(table) == 0:
        raise UsageError(f"{path}: no rows")
    return table


def latent_columns(table: Any) -> list[str]:
    """``z1..zK`` column names in order (the std columns excluded)."""
    names = [c for c in table.columns if str(c)[:1] == "z" and str(c)[1:].isdigit()]
    return sorted(names, key=lambda c: int(c[1:]))


def select_rows(table: Any, where: str | None) -> np.ndarray:
    """0-based rows of ``table`` that satisfy the pandas query ``where`` (all when None)."""
    if where is None:
        return np.arange(len(table))
    try:
        mask = table.eval(where)
    except Exception as exc:  # pandas raises many types for a bad expression
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--where {where!r}: {message}") from None
    values = np.asarray(mask)
    if values.shape != (len(table),) or values.dtype != bool:
        raise UsageError(f"--where {where!r} is not a true/false condition on each row")
    rows = np.flatnonzero(values)
    if len(rows) == 0:
        raise UsageError(f"--where {where!r} selects no particles; nothing written")
    return rows


def _poses_of_stack(args: argparse.Namespace) -> tuple[Any, Any, np.ndarray]:
    """The pose table, the particle stack it belongs to, and the rows ``--where`` selects."""
    table = read_pose_table(args.poses)
    stack = open_stack(args.particles, args.datadir)
    if len(table) != len(stack):
        raise UsageError(
            f"{args.poses} has {len(table)} rows but the stack has {len(stack)} particles"
        )
    return table, stack, select_rows(table, args.where)


# ---------------------------------------------------------------------------- commands


def cmd_cluster(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.explore import cluster_latents
    from napari_spatial_vae.io import write_poses

    out = check_suffix(args.output, (".csv",), "CLUSTERS")
    table = read_pose_table(args.poses)
    z_names = latent_columns(table)
    if not z_names:
        raise UsageError(f"{args.poses}: no z1..zK columns to cluster")
    if not 1 <= args.k <= len(table):
        raise UsageError(f"-k must be between 1 and {len(table)}, got {args.k}")
    labels = cluster_latents(table[z_names].to_numpy(), args.k, args.method, args.seed)
    table["cluster"] = labels
    write_poses(out, table)
    sizes = np.bincount(labels, minlength=args.k)
    say(
        f"wrote {args.k} {args.method} clusters of {len(table)} particles to {out}"
        f" (sizes {', '.join(str(s) for s in sizes)})"
    )
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.ctf import StackCtfFilters
    from napari_spatial_vae.core.explore import aligned_average
    from napari_spatial_vae.io import write_mrcs

    out = check_suffix(args.output, (".mrcs", ".mrc"), "AVERAGES")
    table, stack, selected = _poses_of_stack(args)
    if args.clusters:
        clusters = _read_clusters(args.clusters)
        if len(clusters) != len(table):
            raise UsageError(
                f"{args.clusters} has {len(clusters)} rows but {args.poses} has {len(table)}"
            )
        groups = [(f"cluster {c}", selected[clusters[selected] == c]) for c in np.unique(clusters)]
        groups = [(name, rows) for name, rows in groups if len(rows)]
    else:
        groups = [("selection", selected)]
    ctf = StackCtfFilters.of_stack(stack) if args.ctf == "auto" else None
    averages = []
    for name, rows in groups:
        result = aligned_average(
            stack,
            table["theta"].to_numpy(),
            table["dx"].to_numpy(),
            table["dy"].to_numpy(),
            rows,
            ctf=ctf,
            batch_size=args.batch_size,
        )
        averages.append(result.average)
        say(
            f"{name}: {result.count} particles, half-set FRC 0.143 resolution"
            f" {result.resolution(stack.pixel_size)}"
        )
    write_mrcs(out, np.stack(averages), stack.pixel_size)
    how = (
        f"Wiener-filtered with each particle's CTF ({ctf.parameters.summary()})"
        if ctf is not None
        else "plain mean: no CTF correction"
    )
    say(f"wrote {len(averages)} average(s) to {out} ({how})")
    return 0


def _read_clusters(path: str) -> np.ndarray:
    import pandas as pd

    from napari_spatial_vae.io import StackError

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise StackError(Path(path), "no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StackError(Path(path), f"cannot parse CSV ({exc})") from None
    if "cluster" not in table.columns:
        raise UsageError(f"{path}: no cluster column (make one with spatial-vae cluster)")
    values = table["cluster"].to_numpy()
    if values.dtype.kind not in "iu":
        raise UsageError(f"{path}: the cluster column must hold integers")
    return values


def cmd_subset(args: argparse.Namespace) -> int:
    from napari_spatial_vae.io.subset import write_subset

    out = check_suffix(args.output, (".star", ".cs"), "SUBSET")
    table, stack, rows = _poses_of_stack(args)
    write_subset(out, stack, rows, table.iloc[rows].reset_index(drop=True), args.keep_input_pose)
    say(f"wrote {len(rows)} of {len(table)} particles to {out}")
    return 0


def cmd_movie(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.explore import movie_frames
    from napari_spatial_vae.io.movie import MOVIE_SUFFIXES, write_movie

    out = check_suffix(args.output, MOVIE_SUFFIXES, "MOVIE")
    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2, got {args.steps}")
    if not args.fps > 0:
        raise UsageError(f"--fps must be positive, got {args.fps}")
    source = Path(args.source)
    if args.hold_still is not None and not source.is_dir():
        raise UsageError("--hold-still applies to a RUN_DIR's traversal, not to a stack")
    if source.is_dir():
        from napari_spatial_vae.core.checkpoint import load_model
        from napari_spatial_vae.core.infer import latent_traversal

        model, _, _ = load_model(source, "cpu")
        frame = hold_still_frame(args.hold_still, model)
        images = latent_traversal(model, args.steps, frame=frame)
        if images.ndim == 5:  # colour: a greyscale movie of the channel mean
            images = images.mean(-1)
        what = f"traversal of {images.shape[0]} latent dimension(s) x {args.steps} steps"
    else:
        stack = open_stack(str(source), None)
        images = stack.read_batch(np.arange(len(stack)))
        if images.ndim == 4:
            images = images.mean(-1)
        what = f"{len(images)} images of {source.name}"
    frames = movie_frames(images, bounce=source.is_dir())
    write_movie(out, frames, args.fps)
    say(f"wrote {len(frames)} frames ({what}) to {out}")
    return 0


# ---------------------------------------------------------------------------- parser


def _add_particles(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", metavar="PARTICLES", help="the particle stack")
    parser.add_argument("poses", metavar="POSES.csv", help="theta, dx, dy, z1..zK per particle")
    parser.add_argument("--datadir", metavar="DIR", help="folder of the stacks a STAR/cs names")


def _add_where(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--where",
        required=required,
        metavar="EXPR",
        help='pandas query over the POSES.csv columns, e.g. "z1 < -0.5 and theta_std < 0.2"',
    )


def register(sub: Any) -> None:
    """Add ``cluster``, ``average``, ``subset`` and ``movie`` to the subparsers ``sub``."""
    cluster = sub.add_parser(
        "cluster",
        help="k-means or Gaussian-mixture clusters of the latent values",
        description="Cluster particles on z1..zK; writes POSES.csv plus a cluster column.",
    )
    cluster.add_argument("poses", metavar="POSES.csv")
    cluster.add_argument("-k", type=int, required=True, metavar="K", help="number of clusters")
    cluster.add_argument("-o", "--output", required=True, metavar="CLUSTERS.csv")
    cluster.add_argument("--method", choices=("kmeans", "gmm"), default="kmeans")
    cluster.add_argument("--seed", type=int, default=0, help="same seed, same clusters")
    cluster.set_defaults(run=cmd_cluster)

    average = sub.add_parser(
        "average",
        help="pose-aligned averages of the input particles of a selection or of each cluster",
        description=(
            "Average the input particles after undoing their inferred poses; prints the"
            " particle count and the half-set FRC = 0.143 resolution of each average."
        ),
    )
    _add_particles(average)
    _add_where(average, required=False)
    average.add_argument(
        "--clusters", metavar="CLUSTERS.csv", help="one average per cluster (spatial-vae cluster)"
    )
    average.add_argument("-o", "--output", required=True, metavar="AVERAGES.mrcs")
    average.add_argument(
        "--ctf",
        choices=("auto", "off"),
        default="auto",
        help="auto (default): Wiener-filter with each particle's CTF when PARTICLES (a "
        ".star/.cs) carries one; off: plain mean",
    )
    average.add_argument("--batch-size", type=int, default=256, help=argparse.SUPPRESS)
    average.set_defaults(run=cmd_average)

    subset = sub.add_parser(
        "subset",
        help="write selected particles as RELION STAR or cryoSPARC .cs with all their columns",
        description=(
            "Every input column of every selected row is kept; rlnAnglePsi, rlnOriginX/YAngst"
            " and the latent values are added (the input's own psi/origins are kept as"
            " rlnSpatialVaeInput* columns, rot and tilt with them)."
        ),
    )
    _add_particles(subset)
    _add_where(subset, required=True)
    subset.add_argument("-o", "--output", required=True, metavar="SUBSET.star|SUBSET.cs")
    subset.add_argument(
        "--keep-input-pose",
        action="store_true",
        help="leave the input's rlnAnglePsi/rlnOrigin* as they are (e.g. 3-D angles from a"
        " refinement) and write the inferred ones as rlnSpatialVaeAnglePsi/Origin*",
    )
    subset.set_defaults(run=cmd_subset)

    movie = sub.add_parser(
        "movie",
        help="animated GIF or MP4 of the latent traversal (or of a stack of averages)",
        description=(
            "RUN_DIR: every latent axis side by side, walking from the 5 %% to the 95 %%"
            " quantile and back. A stack (e.g. AVERAGES.mrcs): one image per frame."
        ),
    )
    movie.add_argument("source", metavar="RUN_DIR|AVERAGES.mrcs")
    movie.add_argument("-o", "--output", required=True, metavar="TRAVERSAL.gif|.mp4")
    movie.add_argument("--steps", type=int, default=9, help="traversal steps (default 9)")
    movie.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    movie.add_argument("--hold-still", metavar="MASK", help=HOLD_STILL_HELP)
    movie.set_defaults(run=cmd_movie)
