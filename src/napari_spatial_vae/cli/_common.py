"""Pieces every ``spatial-vae`` subcommand shares: errors, messages, paths and stacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "spatial-vae"
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the arguments themselves."""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (and exits 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def open_stack(path: str, datadir: str | None) -> Any:
    """Open a particle stack lazily (io is imported here so ``--help`` stays fast)."""
    from napari_spatial_vae.io import read_stack

    return read_stack(Path(path), datadir=Path(datadir) if datadir else None)


def say(message: str) -> None:
    """One message line on stderr (stdout stays free for data)."""
    print(message, file=sys.stderr, flush=True)


def check_suffix(path: str, allowed: Sequence[str], what: str) -> Path:
    """Check an output path's suffix, refuse a folder, and create its parent folder."""
    out = Path(path)
    if out.suffix.lower() not in allowed:
        raise UsageError(f"{what} must end in {' or '.join(allowed)}, got {path!r}")
    if out.exists() and out.is_dir():
        raise UsageError(f"{what} {path!r} is a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


HOLD_STILL_HELP = (
    "an image of the model's box size (MRC, TIFF, PNG, .npy): its nonzero pixels mark the "
    "part of the particle that should hold still, drawn on the middle image of an "
    "odd-numbered 'spatial-vae traverse' (z = 0); poses, aligned particles, reconstructions "
    "and traversals are then measured in that part's frame"
)


def hold_still_frame(path: str | None, model: Any) -> Any:
    """The frame that holds the mask at ``path`` still (None without a path), said in a line."""
    if path is None:
        return None
    import numpy as np

    from napari_spatial_vae.core.frame import fit_pose_frame

    stack = open_stack(path, None)
    if len(stack) != 1:
        raise UsageError(f"--hold-still: {path} holds {len(stack)} images; the mask is one image")
    image = np.asarray(stack.read_batch(np.arange(1)))[0]
    # a mask saved in colour (a PNG, say) counts where any channel is painted
    mask = (image != 0).any(axis=-1) if image.ndim == 3 else image != 0
    frame = fit_pose_frame(model, mask)
    say(frame.describe())
    return frame
