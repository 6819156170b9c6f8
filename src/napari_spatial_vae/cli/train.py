"""``spatial-vae train``: arguments, the config they make, progress lines, Ctrl-C handling."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from napari_spatial_vae.cli._common import open_stack, say
from napari_spatial_vae.cli.settings import add_setting_arguments, config_from_args, resume_config
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.metrics import (
    collapse_warning,
    describe_latent_use,
    half_turn_warning,
)
from napari_spatial_vae.core.unrendered import unrendered_warning


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "particles",
        metavar="PARTICLES",
        help="particle stack: .mrcs .mrc .star .cs .npy .npz .tif or an image folder",
    )
    p.add_argument(
        "-o",
        "--output",
        dest="run_dir",
        metavar="RUN_DIR",
        required=True,
        help="run folder for the model, config.json and history.csv",
    )
    p.add_argument(
        "--test",
        metavar="PARTICLES",
        help="separate held-out stack (default: hold out --test-fraction)",
    )
    p.add_argument(
        "--datadir", metavar="DIR", help="folder to look for stacks a .star/.cs file points to"
    )
    add_setting_arguments(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR with its saved settings (repeating them is fine; "
        "only the budget and speed options may change)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _resume_config(args: argparse.Namespace) -> TrainConfig:
    from napari_spatial_vae.core.checkpoint import load_config

    saved, _, _ = load_config(Path(args.run_dir))
    return resume_config(args, saved)


class _Progress:
    """tqdm progress bar fed by TrainUpdate events, with one summary line per epoch."""

    def __init__(self, quiet: bool, z_delay: int, half_turn_check: str):
        self.quiet = quiet
        self.z_delay = z_delay
        self.half_turn_check = half_turn_check
        self.bar: Any = None
        self.last: Any = None  # (epoch, metrics) of the last epoch, held-out where possible

    def __call__(self, update: Any) -> None:
        from tqdm import tqdm

        if update.kind == "started":
            say(update.message)
            if not self.quiet:
                remaining = (update.epochs - update.epoch + 1) * update.steps_per_epoch
                self.bar = tqdm(
                    total=remaining,
                    unit="step",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    desc=f"epoch {update.epoch}/{update.epochs}",
                )
        elif update.kind == "step" and self.bar is not None:
            self.bar.set_description(f"epoch {update.epoch}/{update.epochs}", refresh=False)
            self.bar.update(1)
        elif update.kind == "epoch":
            line = (
                f"epoch {update.epoch}/{update.epochs}  train ELBO {update.train.elbo:.2f} "
                f"(recon {update.train.recon:.2f}, KL {update.train.kl:.2f}"
                # binned epochs' ELBO covers a quarter of the pixels: say so next to it
                + (", 2x2-binned" if update.train.binned else "")
                + ")"
            )
            if update.test is not None:
                line += f"  test ELBO {update.test.elbo:.2f}"
            if update.train.kl_z_dims:
                line += f"  {describe_latent_use(update.test or update.train)}"
            line += f"  {update.seconds:.0f}s"
            self.last = (update.epoch, update.test or update.train)
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            elif not self.quiet:
                say(line)
            if update.message:  # the half-turn check switched on, the fold check: said when quiet
                if self.bar is not None:
                    self.bar.write(update.message, file=sys.stderr)
                else:
                    say(update.message)
            if update.restarted:
                self.last = None  # the discarded attempt's metrics judge nothing
                if self.bar is not None:
                    self.bar.reset(total=update.epochs * update.steps_per_epoch)
        elif update.kind == "finished":
            if self.bar is not None:
                self.bar.close()
            if update.message:  # z axes turned
                say(update.message)
            if self.last is not None:
                epoch, metrics = self.last
                for warning in (
                    collapse_warning(metrics, epoch, self.z_delay),
                    half_turn_warning(metrics, self.half_turn_check),
                    unrendered_warning(update.unrendered),
                ):
                    if warning:
                        say(f"warning: {warning}")


def cmd_train(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.distributed import environment_rank
    from napari_spatial_vae.core.train import train

    # under torchrun every rank runs this command; rank 0 alone reports (and writes files)
    main_rank = environment_rank() == 0
    config = _resume_config(args) if args.resume else config_from_args(args)
    particles = open_stack(args.particles, args.datadir)
    test = open_stack(args.test, args.datadir) if args.test else None
    stop = {"requested": False}

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        if main_rank:
            say("\nstopping after this step and saving (Ctrl-C again to abort)")

    progress = (
        _Progress(args.quiet, config.z_delay, config.model.half_turn_check) if main_rank else None
    )
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train(
            config,
            particles,
            args.run_dir,
            test_images=test,
            on_update=progress,
            should_stop=lambda: stop["requested"],
            resume=args.resume,
            run_info={
                "command": shlex.join(sys.argv),
                "particles": str(args.particles),
                "test": args.test,
                "n_images": len(particles),
            },
            # this process only trains: glibc may keep its large blocks (process-wide)
            tune_allocator=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if main_rank:
        say(
            f"{result.stop_reason} after {result.epochs_completed} epoch(s) in "
            f"{result.seconds:.0f}s ({result.images_per_second:.0f} images/s); model saved in "
            f"{result.run_dir}"
        )
    return 0


def register(sub: Any) -> None:
    """Add the ``train`` subcommand to the subparsers ``sub``."""
    train_p = sub.add_parser(
        "train",
        help="train a model on a particle stack",
        description="Train spatial-VAE; writes RUN_DIR.",
    )
    _add_train_arguments(train_p)
    train_p.set_defaults(run=cmd_train)
