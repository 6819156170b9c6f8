"""The ``spatial-vae`` command line: ``train``, ``infer`` and ``traverse``.

Bad input or arguments end with a non-zero exit status and one line on stderr, never a
traceback. Ctrl-C during training stops at the next step and saves the run, like
``--max-minutes``; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from napari_spatial_vae import __version__
from napari_spatial_vae.core.config import (
    ACTIVATIONS,
    ENCODERS,
    LIKELIHOODS,
    THETA_KLS,
    ModelConfig,
    TrainConfig,
)
from napari_spatial_vae.core.errors import ConfigError, DataError, SpatialVAEError

PROG = "spatial-vae"
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the arguments themselves."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (and exits 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bool_flag(parser: argparse._ActionsContainer, name: str, help_text: str) -> None:
    parser.add_argument(
        f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text
    )


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d, m = TrainConfig(), ModelConfig()
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
    model = p.add_argument_group("model")
    model.add_argument("--z-dim", type=int, help=f"content latent size (default {m.z_dim})")
    model.add_argument("--hidden-dim", type=int, help=f"MLP width (default {m.hidden_dim})")
    model.add_argument(
        "--num-layers", type=int, help=f"hidden layers per MLP (default {m.num_layers})"
    )
    model.add_argument("--activation", choices=ACTIVATIONS, help=f"default {m.activation}")
    model.add_argument(
        "--encoder",
        choices=ENCODERS,
        help=f"inference network (default {m.encoder}; 'mlp' is the paper's)",
    )
    model.add_argument(
        "--encoder-rotations",
        type=int,
        help=f"rotated copies the equivariant encoder scores (default {m.encoder_rotations})",
    )
    _bool_flag(
        model,
        "rotation-search",
        "marginalise the likelihood over the equivariant encoder's rotation bins instead of "
        f"the circular soft-argmax (default {m.rotation_search})",
    )
    model.add_argument("--likelihood", choices=LIKELIHOODS, help=f"default {m.likelihood}")
    model.add_argument("--no-rotate", action="store_true", help="do not infer rotation")
    model.add_argument("--no-translate", action="store_true", help="do not infer translation")
    model.add_argument(
        "--vanilla",
        action="store_true",
        help="baseline VAE: MLP from z to all pixels, no pose inference",
    )
    model.add_argument(
        "--theta-prior",
        type=float,
        metavar="RAD",
        help=f"prior std of theta in radians (default {m.theta_prior:.4g})",
    )
    model.add_argument(
        "--theta-kl",
        choices=THETA_KLS,
        help=f"'free-mean' is the paper's eq. 3 (default {m.theta_kl})",
    )
    model.add_argument(
        "--dx-prior",
        type=float,
        metavar="FRACTION",
        help=f"prior std of the shift, fraction of the image size (default {m.dx_prior})",
    )
    _bool_flag(model, "fit-noise", f"learn a per-pixel noise std (default {m.fit_noise})")
    _bool_flag(model, "softplus-mean", f"positive Gaussian mean (default {m.softplus_mean})")
    _bool_flag(
        model, "circular-mask", f"model only the inscribed circle (default {m.circular_mask})"
    )
    opt = p.add_argument_group("training")
    opt.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    opt.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="stop cleanly after M minutes and save (default: no limit)",
    )
    opt.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    opt.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    opt.add_argument(
        "--lr-min-fraction",
        type=float,
        help=f"cosine decay to lr times this (default {d.lr_min_fraction}; 1 = constant)",
    )
    opt.add_argument(
        "--z-delay", type=int, metavar="E", help=f"epochs with z frozen at 0 (default {d.z_delay})"
    )
    _bool_flag(
        opt,
        "augment-rotation",
        f"rotate the encoder's input by a random angle (default {d.augment_rotation})",
    )
    _bool_flag(opt, "normalize", f"standardise each image (default {d.normalize})")
    opt.add_argument("--test-fraction", type=float, help=f"default {d.test_fraction}")
    opt.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    perf = p.add_argument_group("speed (see docs/performance.md)")
    perf.add_argument(
        "--precision",
        choices=("fp32", "bf16", "tf32"),
        help=f"generator arithmetic: bf16 autocast (GPU, AVX512-BF16/AMX CPU) or TF32 "
        f"(NVIDIA) (default {d.precision})",
    )
    _bool_flag(perf, "compile", f"torch.compile the generator (default {d.compile})")
    perf.add_argument(
        "--resident-gb",
        type=float,
        metavar="GB",
        help="keep the stack on the device up to this size, else stream it "
        "(default: 2 on CPU, half the free memory on a GPU)",
    )
    opt.add_argument("--seed", type=int, help=f"default {d.seed}")
    opt.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR (its saved settings are used; "
        "--epochs, --max-minutes and --device may be changed)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


_MODEL_FLAGS = {
    "z_dim": "z_dim",
    "hidden_dim": "hidden_dim",
    "num_layers": "num_layers",
    "activation": "activation",
    "encoder": "encoder",
    "encoder_rotations": "encoder_rotations",
    "rotation_search": "rotation_search",
    "likelihood": "likelihood",
    "theta_prior": "theta_prior",
    "theta_kl": "theta_kl",
    "dx_prior": "dx_prior",
    "fit_noise": "fit_noise",
    "softplus_mean": "softplus_mean",
    "circular_mask": "circular_mask",
}
_TRAIN_FLAGS = (
    "epochs",
    "max_minutes",
    "batch_size",
    "lr",
    "lr_min_fraction",
    "z_delay",
    "augment_rotation",
    "normalize",
    "test_fraction",
    "device",
    "seed",
    "precision",
    "compile",
    "resident_gb",
)
_RESUMABLE = ("epochs", "max_minutes", "device", "precision", "compile", "resident_gb")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated :class:`TrainConfig` from parsed ``train`` arguments.

    Options the user did not give keep the config's defaults, except where they follow
    from another choice: the bernoulli likelihood turns off noise fitting and standardising,
    the vanilla model uses the MLP encoder, no rotation uses the MLP encoder.
    """
    model = ModelConfig()
    if args.likelihood == "bernoulli":
        model.fit_noise = False
    if args.vanilla or args.no_rotate:
        model.encoder = "mlp"
    for flag, field in _MODEL_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(model, field, value)
    model.rotate = not args.no_rotate
    model.translate = not args.no_translate
    model.vanilla = args.vanilla
    config = TrainConfig(model=model)
    if args.likelihood == "bernoulli":
        config.normalize = False
    for flag in _TRAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            setattr(config, flag, value)
    config.validate()
    return config


def _resume_config(args: argparse.Namespace) -> TrainConfig:
    from napari_spatial_vae.core.checkpoint import load_config

    config, _, _ = load_config(Path(args.run_dir))
    for flag in _RESUMABLE:
        value = getattr(args, flag)
        if value is not None:
            setattr(config, flag, value)
    ignored = [
        "--" + f.replace("_", "-")
        for f in (*_MODEL_FLAGS, *_TRAIN_FLAGS)
        if f not in _RESUMABLE and getattr(args, f) is not None
    ]
    if ignored or args.no_rotate or args.no_translate or args.vanilla:
        raise UsageError(
            "with --resume the run's saved settings are used; only --epochs, --max-minutes and "
            "--device (and the speed options --precision, --compile, --resident-gb) may be "
            f"given (got {' '.join(ignored) or 'model flags'})"
        )
    config.validate()
    return config


def _open_stack(path: str, datadir: str | None) -> Any:
    from napari_spatial_vae.io import read_stack

    return read_stack(Path(path), datadir=Path(datadir) if datadir else None)


class _Progress:
    """tqdm progress bar fed by TrainUpdate events, with one summary line per epoch."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, update: Any) -> None:
        from tqdm import tqdm

        if update.kind == "started":
            _say(update.message)
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
                f"(recon {update.train.recon:.2f}, KL {update.train.kl:.2f})"
            )
            if update.test is not None:
                line += f"  test ELBO {update.test.elbo:.2f}"
            line += f"  {update.seconds:.0f}s"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            elif not self.quiet:
                _say(line)
        elif update.kind == "finished" and self.bar is not None:
            self.bar.close()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.distributed import environment_rank
    from napari_spatial_vae.core.train import train

    # under torchrun every rank runs this command; rank 0 alone reports (and writes files)
    main_rank = environment_rank() == 0
    config = _resume_config(args) if args.resume else config_from_args(args)
    particles = _open_stack(args.particles, args.datadir)
    test = _open_stack(args.test, args.datadir) if args.test else None
    stop = {"requested": False}

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        if main_rank:
            _say("\nstopping after this step and saving (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train(
            config,
            particles,
            args.run_dir,
            test_images=test,
            on_update=_Progress(args.quiet) if main_rank else None,
            should_stop=lambda: stop["requested"],
            resume=args.resume,
            run_info={
                "command": shlex.join(sys.argv),
                "particles": str(args.particles),
                "test": args.test,
                "n_images": len(particles),
            },
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if main_rank:
        _say(
            f"{result.stop_reason} after {result.epochs_completed} epoch(s) in "
            f"{result.seconds:.0f}s ({result.images_per_second:.0f} images/s); model saved in "
            f"{result.run_dir}"
        )
    return 0


def _check_suffix(path: str, allowed: Sequence[str], what: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in allowed:
        raise UsageError(f"{what} must end in {' or '.join(allowed)}, got {path!r}")
    if out.exists() and out.is_dir():
        raise UsageError(f"{what} {path!r} is a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def cmd_infer(args: argparse.Namespace) -> int:
    import pandas as pd

    from napari_spatial_vae.core.checkpoint import load_model
    from napari_spatial_vae.core.device import resolve_device
    from napari_spatial_vae.core.infer import Poses, iter_inference
    from napari_spatial_vae.io import MrcsWriter, write_poses

    poses_path = _check_suffix(args.output, (".csv", ".star"), "POSES")
    aligned_path = (
        _check_suffix(args.aligned, (".mrcs", ".mrc"), "--aligned") if args.aligned else None
    )
    recon_path = (
        _check_suffix(args.reconstructions, (".mrcs", ".mrc"), "--reconstructions")
        if args.reconstructions
        else None
    )
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, config, _ = load_model(Path(args.run_dir), resolve_device(args.device or "auto"))
    stack = _open_stack(args.particles, args.datadir)
    height, width = stack.shape[1], stack.shape[2]
    from tqdm import tqdm

    parts = []
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
        ):
            parts.append(batch.poses)
            if aligned_writer is not None and batch.aligned is not None:
                aligned_writer.write(batch.start, batch.aligned)
            if recon_writer is not None and batch.reconstructions is not None:
                recon_writer.write(batch.start, batch.reconstructions)
            bar.update(len(batch.poses.theta))
    table = pd.DataFrame(Poses.concatenate(parts).columns())
    write_poses(poses_path, table, stack)
    _say(
        f"wrote poses of {len(table)} images to {poses_path}"
        + (f", aligned particles to {aligned_path}" if aligned_path else "")
        + (f", reconstructions to {recon_path}" if recon_path else "")
    )
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    from napari_spatial_vae.core.checkpoint import load_model
    from napari_spatial_vae.core.infer import latent_grid, latent_traversal
    from napari_spatial_vae.io import write_mrcs

    out = _check_suffix(args.output, (".mrcs", ".mrc"), "TRAVERSAL")
    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2, got {args.steps}")
    model, _, _ = load_model(Path(args.run_dir), "cpu")
    images = latent_grid(model, args.steps) if args.grid else latent_traversal(model, args.steps)
    flat = images.reshape(-1, *images.shape[2:])
    write_mrcs(out, flat, None)
    layout = (
        f"{args.steps}x{args.steps} grid over z1, z2"
        if args.grid
        else f"{images.shape[0]} latent dimension(s) x {args.steps} steps"
    )
    _say(f"wrote {len(flat)} images ({layout}) to {out}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import pandas as pd

    from napari_spatial_vae.core.simulate import simulate_particles
    from napari_spatial_vae.io import write_mrcs
    from napari_spatial_vae.io.atomic import atomic_output

    out = _check_suffix(args.output, (".mrcs", ".mrc"), "OUT")
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
    _say(
        f"wrote {args.n} simulated {args.size}x{args.size} particles to {out} and their "
        f"ground truth to {truth}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``spatial-vae`` parser."""
    parser = _Parser(prog=PROG, description="spatial-VAE for particle stacks (Bepler et al. 2019)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train_p = sub.add_parser(
        "train",
        help="train a model on a particle stack",
        description="Train spatial-VAE; writes RUN_DIR.",
    )
    _add_train_arguments(train_p)
    train_p.set_defaults(run=cmd_train)

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
        help="the generator's image of each particle at theta = 0, dx = 0",
    )
    infer_p.add_argument("--datadir", metavar="DIR")
    infer_p.add_argument("--batch-size", type=int, help="images per batch (default 256)")
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
    trav_p.set_defaults(run=cmd_traverse)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spatial-vae`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from napari_spatial_vae.io import StackError

    try:
        return int(args.run(args))
    except UsageError as err:
        _say(f"{PROG} {args.command}: error: {err}")
        return EXIT_USAGE
    except (ConfigError, StackError) as err:
        _say(f"{PROG} {args.command}: error: {err}")
        return EXIT_ERROR
    except DataError as err:
        where = getattr(args, "particles", None)
        _say(f"{PROG} {args.command}: error: {where + ': ' if where else ''}{err}")
        return EXIT_ERROR
    except SpatialVAEError as err:
        _say(f"{PROG} {args.command}: error: {err}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say(f"{PROG} {args.command}: aborted")
        return 130
    except MemoryError:
        _say(f"{PROG} {args.command}: error: out of memory; lower --batch-size")
        return EXIT_ERROR
    except OSError as err:
        _say(f"{PROG} {args.command}: error: {err.filename or ''}: {err.strerror or err}")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
