"""``spatial-vae train``: arguments, the config they make, progress lines, Ctrl-C handling."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from napari_spatial_vae.cli._common import UsageError, bool_flag, open_stack, say
from napari_spatial_vae.core.config import (
    ACTIVATIONS,
    CTF_CHOICES,
    CTF_ENCODER_INPUTS,
    ENCODERS,
    LIKELIHOODS,
    THETA_KLS,
    ModelConfig,
    TrainConfig,
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
    bool_flag(
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
    model.add_argument(
        "--ctf-encoder",
        choices=CTF_ENCODER_INPUTS,
        help=f"what the encoder sees of particles with a CTF: raw or phase-flipped images "
        f"(default {m.ctf_encoder})",
    )
    bool_flag(model, "fit-noise", f"learn a per-pixel noise std (default {m.fit_noise})")
    bool_flag(model, "softplus-mean", f"positive Gaussian mean (default {m.softplus_mean})")
    bool_flag(
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
    bool_flag(
        opt,
        "augment-rotation",
        f"rotate the encoder's input by a random angle (default {d.augment_rotation})",
    )
    bool_flag(opt, "normalize", f"standardise each image (default {d.normalize})")
    opt.add_argument("--test-fraction", type=float, help=f"default {d.test_fraction}")
    opt.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    opt.add_argument(
        "--ctf",
        choices=CTF_CHOICES,
        help="model each particle's CTF from the .star/.cs file: auto = when the input "
        f"carries one (default {d.ctf})",
    )
    perf = p.add_argument_group("speed (see docs/performance.md)")
    perf.add_argument(
        "--precision",
        choices=("fp32", "bf16", "tf32"),
        help=f"generator arithmetic: bf16 autocast (GPU, AVX512-BF16/AMX CPU) or TF32 "
        f"(NVIDIA) (default {d.precision})",
    )
    bool_flag(perf, "compile", f"torch.compile the generator (default {d.compile})")
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
    "ctf_encoder": "ctf_encoder",
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
    "ctf",
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


class _Progress:
    """tqdm progress bar fed by TrainUpdate events, with one summary line per epoch."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None

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
                f"(recon {update.train.recon:.2f}, KL {update.train.kl:.2f})"
            )
            if update.test is not None:
                line += f"  test ELBO {update.test.elbo:.2f}"
            line += f"  {update.seconds:.0f}s"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            elif not self.quiet:
                say(line)
        elif update.kind == "finished" and self.bar is not None:
            self.bar.close()


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
