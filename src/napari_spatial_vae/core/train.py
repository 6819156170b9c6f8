"""The training loop: no printing, no GUI; progress goes to a callback as small updates.

``train`` is what the CLI, the napari worker thread and the benchmarks call. It checkpoints
the run folder atomically after every epoch (and when stopped), resumes exactly where a run
stopped (same seed on the CPU gives the same history), honours a cooperative stop flag and a
wall-clock budget, and never syncs with the host inside a step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from napari_spatial_vae.core.checkpoint import (
    Progress,
    has_checkpoint,
    load_config,
    load_model,
    read_history,
    restore_optimizer,
    save_checkpoint,
    save_config,
    write_history,
)
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.coords import warp_images
from napari_spatial_vae.core.data import ImageFeeder, input_scale, stack_image_shape
from napari_spatial_vae.core.device import describe_device, resolve_device
from napari_spatial_vae.core.errors import CheckpointError, DataError
from napari_spatial_vae.core.metrics import EpochMetrics, evaluate_elbo
from napari_spatial_vae.core.model import SpatialVAE

UpdateKind = Literal["started", "step", "epoch", "finished"]


@dataclass(frozen=True)
class TrainUpdate:
    """One progress event; small enough to cross threads or processes cheaply.

    Attributes
    ----------
    kind
        ``started`` (once), ``step`` (after every optimiser step), ``epoch`` (after every
        completed epoch, with metrics), ``finished`` (once, with ``stop_reason``).
    epoch
        1-based epoch in progress (``step``) or just completed (``epoch``).
    epochs
        Planned number of epochs.
    step, steps_per_epoch
        Optimiser step within the epoch (1-based) and steps per epoch.
    seconds
        Wall time since this call of :func:`train` started.
    train, test
        Epoch metrics (``epoch`` updates only; ``test`` is None without a test set).
    stop_reason
        ``completed``, ``stopped`` or ``time budget`` (``finished`` updates only).
    message
        Human-readable context (device chosen, resume point).
    model
        The model being trained (``epoch`` and ``finished`` updates), for in-process
        consumers that render a preview from the callback, i.e. still in the training thread.
        It is the live object: do not keep it or use it from another thread.
    """

    kind: UpdateKind
    epoch: int
    epochs: int
    step: int = 0
    steps_per_epoch: int = 0
    seconds: float = 0.0
    train: EpochMetrics | None = None
    test: EpochMetrics | None = None
    stop_reason: str = ""
    message: str = ""
    model: SpatialVAE | None = field(default=None, repr=False, compare=False)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: SpatialVAE
    config: TrainConfig
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "completed"
    epochs_completed: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0


def split_train_test(
    n_images: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random split of ``range(n_images)`` into sorted train and test indices.

    Raises
    ------
    DataError
        When the split would leave no training image.
    """
    n_test = round(n_images * test_fraction)
    if n_images - n_test < 1:
        raise DataError(
            f"{n_images} image(s) leave none for training with test fraction {test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n_images)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Cosine decay from ``lr`` to ``lr * lr_min_fraction`` as ``progress`` goes 0 -> 1."""
    floor = config.lr * config.lr_min_fraction
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _epoch_generators(
    seed: int, epoch: int, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """Random sources derived from (seed, epoch) alone, so a resumed run replays exactly."""
    epoch_seed = (seed * 1_000_003 + epoch * 7919) % (2**63)
    cpu = torch.Generator().manual_seed(epoch_seed)
    on_device = torch.Generator(device=device).manual_seed(epoch_seed + 1)
    return cpu, on_device


def build_model(config: TrainConfig, image_shape: tuple[int, int, int]) -> SpatialVAE:
    """A freshly initialised model; initialisation depends on ``config.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SpatialVAE(config.model, image_shape)


def train(
    config: TrainConfig,
    images: Any,
    run_dir: str | Path,
    *,
    test_images: Any | None = None,
    on_update: Callable[[TrainUpdate], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train spatial-VAE on a stack and keep the run folder up to date.

    Parameters
    ----------
    config
        The run's settings. With ``resume`` it should be the folder's saved config (possibly
        with ``epochs``, ``max_minutes`` or ``device`` changed).
    images
        Array-like ``(N, H, W)`` or ``(N, H, W, C)`` training stack (may be lazy).
    run_dir
        Folder for ``config.json``, ``checkpoint.safetensors`` and ``history.csv``.
    test_images
        Separate held-out stack; without it ``config.test_fraction`` of ``images`` is held out.
    on_update
        Called with a :class:`TrainUpdate` after every step and epoch (in this thread).
    should_stop
        Polled before every step; returning True stops cleanly and saves.
    resume
        Continue the run saved in ``run_dir`` instead of starting a new one.
    run_info
        Extra JSON-serialisable facts to store in ``config.json`` (command line, data path).

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError, DataError, CheckpointError
        On invalid settings, unusable images, or a run folder that cannot be used.
    """
    started = time.monotonic()
    config.validate()
    run_dir = Path(run_dir)
    emit = on_update or (lambda update: None)
    stop_requested = should_stop or (lambda: False)
    device = resolve_device(config.device)
    image_shape = stack_image_shape(images)
    if test_images is not None and stack_image_shape(test_images) != image_shape:
        raise DataError(
            f"test images are {stack_image_shape(test_images)} (C, H, W) but training images are "
            f"{image_shape}"
        )

    if resume:
        _, saved_shape, _ = load_config(run_dir)
        if saved_shape != image_shape:
            raise CheckpointError(
                f"{run_dir}: the run was trained on {saved_shape} (C, H, W) images, these are "
                f"{image_shape}"
            )
        model, _, progress = load_model(run_dir, device)
        model.train()
        history = [r for r in read_history(run_dir) if r["epoch"] <= progress.epochs_completed]
    else:
        if has_checkpoint(run_dir):
            raise CheckpointError(
                f"{run_dir}: already holds a trained model; use --resume to continue it or "
                "choose a new folder"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        model = build_model(config, image_shape).to(device)
        progress = Progress()
        history = []
    save_config(run_dir, config, image_shape, {"run": run_info or {}})

    scale = input_scale(config.model.likelihood, getattr(images, "dtype", np.float32))

    def feeder(stack: Any, indices: np.ndarray | None) -> ImageFeeder:
        return ImageFeeder(
            stack,
            indices,
            device,
            config.normalize,
            scale,
            check_unit_range=config.model.likelihood == "bernoulli",
        )

    if test_images is None:
        train_idx, test_idx = split_train_test(len(images), config.test_fraction, config.seed)
        train_feed = feeder(images, train_idx)
        test_feed = feeder(images, test_idx) if len(test_idx) else None
    else:
        train_feed, test_feed = feeder(images, None), feeder(test_images, None)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if resume:
        restore_optimizer(run_dir, optimizer)
    steps_per_epoch = math.ceil(len(train_feed) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    deadline = started + 60.0 * config.max_minutes if config.max_minutes else None
    first_epoch = progress.epochs_completed + 1
    emit(
        TrainUpdate(
            "started",
            first_epoch,
            config.epochs,
            0,
            steps_per_epoch,
            time.monotonic() - started,
            message=f"training on {describe_device(device)}"
            + (f", resuming after epoch {progress.epochs_completed}" if resume else ""),
        )
    )

    stop_reason = "completed"
    images_seen = 0
    for epoch in range(first_epoch, config.epochs + 1):
        cpu_gen, device_gen = _epoch_generators(config.seed, epoch, device)
        order = torch.randperm(len(train_feed), generator=cpu_gen)
        freeze_z = epoch <= config.z_delay
        sums = torch.zeros(5, device=device, dtype=torch.float64)
        model.train()
        for step, batch in enumerate(train_feed.batches(config.batch_size, order), start=1):
            if stop_requested():
                stop_reason = "stopped"
            elif deadline is not None and time.monotonic() > deadline:
                stop_reason = "time budget"
            if stop_reason != "completed":
                break
            time_progress = (time.monotonic() - started) / (deadline - started) if deadline else 0.0
            progress.lr_progress = max(
                progress.lr_progress, progress.global_step / total_steps, time_progress
            )
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, progress.lr_progress)
            terms = _train_step(model, optimizer, batch, config, freeze_z, device_gen)
            with torch.no_grad():
                sums += torch.stack(
                    [
                        terms.neg_elbo.sum(),
                        terms.recon.sum(),
                        terms.kl_theta.sum(),
                        terms.kl_shift.sum(),
                        terms.kl_z.sum(),
                    ]
                ).double()
            progress.global_step += 1
            images_seen += batch.shape[0]
            emit(
                TrainUpdate(
                    "step", epoch, config.epochs, step, steps_per_epoch, time.monotonic() - started
                )
            )
        if stop_reason != "completed":
            break

        train_metrics = EpochMetrics.from_sums(sums.cpu().tolist(), len(train_feed))
        if not math.isfinite(train_metrics.elbo):
            raise DataError(
                f"training diverged (non-finite ELBO) in epoch {epoch}; the last good model is "
                f"kept in {run_dir}; try a lower --lr"
            )
        test_metrics = None
        if test_feed is not None:
            eval_gen = torch.Generator(device=device).manual_seed(config.seed + epoch)
            test_metrics = evaluate_elbo(model, test_feed, config.batch_size, eval_gen, freeze_z)
        seconds = time.monotonic() - started
        lr_now = optimizer.param_groups[0]["lr"]
        history.append(train_metrics.as_row(epoch, "train", lr_now, seconds))
        if test_metrics is not None:
            history.append(test_metrics.as_row(epoch, "test", lr_now, seconds))
        progress.epochs_completed = epoch
        progress.finished = epoch == config.epochs
        if epoch % config.checkpoint_every == 0 or progress.finished:
            # history first: a crash between the two writes leaves a history row the
            # checkpoint does not cover, which resume drops; never a checkpoint without history.
            write_history(run_dir, history)
            save_checkpoint(run_dir, model, optimizer, progress)
        emit(
            TrainUpdate(
                "epoch",
                epoch,
                config.epochs,
                steps_per_epoch,
                steps_per_epoch,
                seconds,
                train=train_metrics,
                test=test_metrics,
                model=model,
            )
        )

    if stop_reason != "completed" or progress.epochs_completed % config.checkpoint_every:
        # keep what the interrupted epoch learned; the epoch itself is redone on resume
        write_history(run_dir, history)
        save_checkpoint(run_dir, model, optimizer, progress)
    seconds = time.monotonic() - started
    emit(
        TrainUpdate(
            "finished",
            progress.epochs_completed,
            config.epochs,
            0,
            steps_per_epoch,
            seconds,
            stop_reason=stop_reason,
            model=model,
        )
    )
    model.eval()
    return TrainResult(
        model=model,
        config=config,
        run_dir=run_dir,
        history=history,
        stop_reason=stop_reason,
        epochs_completed=progress.epochs_completed,
        seconds=seconds,
        images_per_second=images_seen / seconds if seconds > 0 else 0.0,
    )


def _train_step(
    model: SpatialVAE,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    config: TrainConfig,
    freeze_z: bool,
    generator: torch.Generator,
):
    """One Adam step on ``batch`` ``(B, C, H, W)``; returns the per-image loss terms."""
    encoder_input, gamma = batch, None
    if config.augment_rotation and config.model.infers_rotation:
        # one batched resampling; the encoder then predicts theta + gamma
        gamma = torch.rand(
            batch.shape[0], generator=generator, device=batch.device, dtype=batch.dtype
        ) * (2.0 * math.pi)
        encoder_input = warp_images(batch, gamma, None)
    terms = model.loss_terms(batch, encoder_input, gamma, freeze_z, generator)
    optimizer.zero_grad(set_to_none=True)
    terms.neg_elbo.mean().backward()
    optimizer.step()
    return terms
