"""The training loop: no printing, no GUI; progress goes to a callback as small updates.

``train`` is what the CLI, the napari worker thread, torchrun workers and the benchmarks
call. It checkpoints the run folder atomically after every epoch (and when stopped), resumes
exactly where a run stopped (same seed on the CPU gives the same history), honours a
cooperative stop flag and a wall-clock budget, and never syncs with the device inside a step.

Under torchrun (``WORLD_SIZE > 1``) the same function trains data-parallel: see
:mod:`napari_spatial_vae.core.distributed` for how batches are sharded and who writes what.
``config.batch_size`` is always the *global* batch, so a run's optimisation does not depend
on the number of processes.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

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
from napari_spatial_vae.core.config import SEED_COUNT, TrainConfig
from napari_spatial_vae.core.ctf import CtfBatches, CtfParameters, resolve_ctf
from napari_spatial_vae.core.data import ImageFeeder, input_scale, stack_image_shape
from napari_spatial_vae.core.device import describe_device, resolve_device
from napari_spatial_vae.core.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    init_from_environment,
    max_over_ranks,
    shard_rows,
    shutdown,
)
from napari_spatial_vae.core.errors import CheckpointError, ConfigError, DataError
from napari_spatial_vae.core.fold_restart import (
    checks_for_folds,
    fold_check_due,
    fold_check_line,
    folded,
    may_restart,
    reinitialise,
    restart_seed,
)
from napari_spatial_vae.core.latent_axes import (
    LATENT_AXES_SAMPLE,
    align_latent_axes,
    describe_turn,
    latent_posteriors,
)
from napari_spatial_vae.core.losses import LossTerms
from napari_spatial_vae.core.memory import MemoryPlan, available_bytes, plan_batch_size
from napari_spatial_vae.core.metrics import EpochMetrics, evaluate_elbo, switches_half_turn_check
from napari_spatial_vae.core.model import SpatialVAE, why_not_binned
from napari_spatial_vae.core.performance import (
    generator_autocast,
    make_adam,
    matmul_precision,
    resolve_precision,
    retained_freed_memory,
)
from napari_spatial_vae.core.posterior_z import TrainingZ, summarise_training_z
from napari_spatial_vae.core.runlock import hold_run_lock
from napari_spatial_vae.core.schedule import ScheduleClock, learning_rate
from napari_spatial_vae.core.step import StepNoise, draw_noise, loss_terms, summed_terms
from napari_spatial_vae.core.unrendered import UnrenderedVariation, measure_unrendered

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
    unrendered
        ``finished`` updates of a run not stopped by the user (rank 0): the strongest
        variation the training particles share that the model does not render
        (:func:`~napari_spatial_vae.core.unrendered.unrendered_warning` words it).
    restarted
        ``epoch`` updates: z looked folded and training starts again from epoch 1 with a
        fresh initialisation (:mod:`~napari_spatial_vae.core.fold_restart`; ``message`` says
        so); the epochs reported so far belong to the discarded attempt.
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
    unrendered: UnrenderedVariation | None = None
    restarted: bool = False


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
    unrendered: UnrenderedVariation | None = None
    # times the run started again from a fresh initialisation (core/fold_restart.py)
    restarts: int = 0


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


def training_objective(terms: LossTerms, z_free_nats: float) -> torch.Tensor:
    """What a step minimises: the summed ``-ELBO``, with free bits on z when asked.

    With ``z_free_nats`` > 0 each z dimension's KL, averaged over the batch, is replaced by
    ``max(KL, z_free_nats)``: below the floor it costs a constant, so its gradient does not
    push the dimension towards the prior (free bits, Kingma et al. 2016).
    """
    total = terms.neg_elbo.sum()
    if z_free_nats <= 0 or terms.kl_z_dims is None:
        return total
    per_dim = terms.kl_z_dims.sum(dim=0)  # (Z,) summed over the batch
    floor = z_free_nats * terms.kl_z_dims.shape[0]
    return total - per_dim.sum() + per_dim.clamp(min=floor).sum()


@dataclass(frozen=True)
class CoarseToFine:
    """How a run uses coarse-to-fine training (:attr:`TrainConfig.coarse_fraction`).

    Attributes
    ----------
    binning
        Bin size of the coarse phase (1: none).
    fraction
        Share of the run's progress trained binned.
    why_not
        Why a requested coarse phase is skipped ("" when it runs or was not asked for).
    """

    binning: int
    fraction: float
    why_not: str = ""

    def describe(self) -> str:
        """One phrase for the run's log."""
        if self.binning > 1:
            return (
                f"coarse-to-fine: {self.binning}x{self.binning}-binned particles for the first "
                f"{self.fraction:.0%} of the run"
            )
        return "coarse-to-fine: off" + (f" ({self.why_not})" if self.why_not else "")


def plan_coarse_to_fine(config: TrainConfig, image_shape: tuple[int, int, int]) -> CoarseToFine:
    """The coarse phase a run can use: 2x2 binning, or none where binning does not apply.

    A CTF is applied to the binned rendering through its low frequencies
    (``SpatialVAE.apply_ctf``); where binning does not apply: :func:`~.model.why_not_binned`.
    """
    if config.coarse_fraction <= 0:
        return CoarseToFine(1, 0.0)
    why_not = why_not_binned(config.model, image_shape)
    if why_not:
        return CoarseToFine(1, 0.0, why_not)
    return CoarseToFine(2, config.coarse_fraction)


def _epoch_generators(
    seed: int, epoch: int, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """Random sources derived from (seed, epoch) alone, so a resumed run replays exactly."""
    epoch_seed = (seed * 1_000_003 + epoch * 7919) % SEED_COUNT
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
    tune_allocator: bool = False,
    ctf: Any | None = None,
    test_ctf: Any | None = None,
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
        Called with a :class:`TrainUpdate` after every step and epoch (in this thread; on
        rank 0 only when distributed).
    should_stop
        Polled before every step; returning True stops cleanly and saves (on any rank: all
        ranks stop at the same step).
    resume
        Continue the run saved in ``run_dir`` instead of starting a new one.
    run_info
        Extra JSON-serialisable facts to store in ``config.json`` (command line, data path).
    tune_allocator
        On the CPU, let glibc keep large freed blocks while training (a quarter of the CPU
        time went into page faults without it; see
        :func:`~napari_spatial_vae.core.performance.retained_freed_memory`). The setting is
        process-wide, so it is for processes that only train (the CLI, torchrun workers),
        not for a host such as the napari viewer.
    ctf, test_ctf
        Per-particle CTF parameters of ``images`` / ``test_images``
        (:class:`~.ctf.CtfParameters` or the io layer's ``CtfTable``); by default the stacks'
        own ``ctf`` attribute (a :class:`~napari_spatial_vae.io.ParticleStack` read from a
        STAR or cs file). ``config.ctf`` decides whether they are used.

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
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # by device type, before ranks
    context, device = init_from_environment(device)
    try:
        with contextlib.ExitStack() as scope:
            scope.enter_context(matmul_precision(precision[0], device))
            scope.enter_context(retained_freed_memory(tune_allocator and device.type == "cpu"))
            if context.is_main:
                # one writer per run folder (rank 0 is the only one that writes)
                scope.enter_context(hold_run_lock(run_dir))
            return _train(
                config,
                images,
                Path(run_dir),
                device,
                context,
                started,
                test_images=test_images,
                on_update=on_update if context.is_main else None,
                should_stop=should_stop,
                resume=resume,
                run_info=run_info,
                ctf=ctf,
                test_ctf=test_ctf,
                precision=precision,
            )
    finally:
        shutdown(context)


class _LossModule(nn.Module):
    """What DDP wraps: its forward is one step's loss terms (DDP hooks run on ``forward``)."""

    def __init__(self, model: SpatialVAE, precision: str, device: torch.device):
        super().__init__()
        self.model = model
        self.precision = precision
        self.device = device

    def forward(
        self,
        images: torch.Tensor,
        gamma: torch.Tensor | None,
        eps: torch.Tensor,
        freeze_z: bool,
        ctf: torch.Tensor | None = None,
        binning: int = 1,
        encoder_noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        terms = loss_terms(
            self.model,
            images,
            StepNoise(gamma, eps, encoder_noise),
            freeze_z,
            generator_autocast(self.precision, self.device),
            ctf,
            binning,
        )
        parts = (terms.recon, terms.kl_theta, terms.kl_shift, terms.kl_z)
        return parts if terms.kl_z_dims is None else (*parts, terms.kl_z_dims)


def _train(
    config: TrainConfig,
    images: Any,
    run_dir: Path,
    device: torch.device,
    context: DistributedContext,
    started: float,
    *,
    test_images: Any | None,
    on_update: Callable[[TrainUpdate], None] | None,
    should_stop: Callable[[], bool] | None,
    resume: bool,
    run_info: dict[str, Any] | None,
    ctf: Any | None,
    test_ctf: Any | None,
    precision: tuple[str, str],
) -> TrainResult:
    emit = on_update or (lambda update: None)
    stop_requested = should_stop or (lambda: False)
    run, progress, history = _set_up_run(
        config,
        images,
        test_images,
        run_dir,
        device,
        context,
        resume,
        run_info,
        ctf,
        test_ctf,
        precision,
    )
    model, image_shape = run.model, run.image_shape

    step_module: nn.Module = _LossModule(model, precision[0], device)
    if context.enabled:
        step_module = _wrap_ddp(step_module, device)
    if config.compile:
        model.generator.compile()
    optimizer = make_adam(model.parameters(), config.lr, device)
    if resume:
        restore_optimizer(run_dir, optimizer)
    steps_per_epoch = math.ceil(len(run.train_feed) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    deadline = started + 60.0 * config.max_minutes if config.max_minutes else None
    clock = ScheduleClock(total_steps, deadline)
    first_epoch = progress.epochs_completed + 1
    ranks = f", {context.world_size} processes" if context.enabled else ""
    emit(
        TrainUpdate(
            "started",
            first_epoch,
            config.epochs,
            0,
            steps_per_epoch,
            time.monotonic() - started,
            message=f"training on {describe_device(device)}{ranks}"
            + (f", resuming after epoch {progress.epochs_completed}" if resume else "")
            + f"; {run.summary}",
        )
    )

    loop = _StepLoop(
        config=config,
        model=model,
        step_module=step_module,
        optimizer=optimizer,
        context=context,
        device=device,
        image_shape=image_shape,
        train_filters=run.train_filters,
        coarse=run.coarse,
        deadline=deadline,
        started=started,
        steps_per_epoch=steps_per_epoch,
        emit=emit,
        stop_requested=stop_requested,
    )
    stop_reason = "completed"
    images_seen = 0
    epoch = first_epoch - 1
    while epoch < config.epochs:
        epoch += 1
        progress_before = progress.lr_progress
        attempt_seed = restart_seed(config.seed, progress.restarts)
        cpu_gen, device_gen = _epoch_generators(attempt_seed, epoch, device)
        # the same permutation on every rank; each rank then takes its rows of every batch
        order = torch.randperm(len(run.train_feed), generator=cpu_gen)
        plan = _shard_plan(order, config.batch_size, context)
        freeze_z = epoch <= config.z_delay
        model.train()
        batches = run.train_feed.batches_at(local for _, local, _, _ in plan)
        steps = _run_steps(loop, epoch, plan, batches, clock, progress, device_gen, freeze_z)
        images_seen += steps.images_seen
        if steps.stop_reason:
            stop_reason = steps.stop_reason
            break

        train_metrics = _train_metrics(
            steps, len(plan), len(run.train_feed), epoch, run_dir, context
        )
        test_metrics = None
        if run.test_feed is not None:
            eval_gen = torch.Generator(device=device).manual_seed(config.seed + epoch)
            test_metrics = evaluate_elbo(
                model, run.test_feed, config.batch_size, eval_gen, freeze_z, run.test_filters
            )
        switched = _switch_half_turn_check(
            config, model, history, test_metrics, epoch, progress, context
        )
        if switched and context.is_main:
            save_config(run_dir, config, image_shape, run.config_extra)  # inference checks too
        restart, fold_line, fold_share = False, "", None
        if _fold_check_now(config, progress, progress_before, epoch):
            restart, fold_line, fold_share = _check_fold(
                model, run.train_feed, run.train_filters, config, epoch, progress.restarts, context
            )
        seconds = time.monotonic() - started
        lr_now = optimizer.param_groups[0]["lr"]
        history += _history_rows(train_metrics, test_metrics, epoch, lr_now, seconds, fold_share)
        progress.epochs_completed = epoch
        progress.finished = epoch == config.epochs
        if context.is_main and (epoch % config.checkpoint_every == 0 or progress.finished):
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
                message="; ".join(line for line in (switched, fold_line) if line),
                model=model,
                restarted=restart,
            )
        )
        if restart:
            # the same run folder, epochs counted from 1 again; the folded model is replaced
            # at the next save (a crash before then resumes it, and its end still warns). A
            # half-turn check that switched itself on in the same epoch stays on: it was
            # the particles that called for it
            progress = Progress(restarts=progress.restarts + 1)
            _start_afresh(model, optimizer, config, progress.restarts, image_shape, device)
            history = []
            clock = ScheduleClock(total_steps, deadline)
            epoch = 0

    return _finish_run(loop, run, progress, history, stop_reason, images_seen)


@dataclass
class _RunData:
    """What a run sets up once and keeps to its end: the model (a restart reinitialises it in
    place), the particles it reads, and what its folder and its first line say about it."""

    run_dir: Path
    model: SpatialVAE
    image_shape: tuple[int, int, int]  # (C, H, W)
    train_feed: ImageFeeder
    test_feed: ImageFeeder | None  # None on ranks other than 0, or with no held-out particles
    train_filters: CtfBatches | None
    test_filters: CtfBatches | None
    coarse: CoarseToFine
    config_extra: dict[str, Any]  # what the run's config.json keeps beside the settings
    summary: str  # precision, coarse-to-fine, CTF and memory, for the run's first line


def _set_up_run(
    config: TrainConfig,
    images: Any,
    test_images: Any | None,
    run_dir: Path,
    device: torch.device,
    context: DistributedContext,
    resume: bool,
    run_info: dict[str, Any] | None,
    ctf: Any | None,
    test_ctf: Any | None,
    precision: tuple[str, str],
) -> tuple[_RunData, Progress, list[dict[str, Any]]]:
    """The model (fresh, or the checkpoint to resume), the particles' feeders and CTF
    filters, the memory plan; the run's config written to ``run_dir`` (rank 0). Also where
    the run stands and its history rows so far, which the epochs then carry on (and a
    restart replaces)."""
    image_shape = stack_image_shape(images)
    if test_images is not None and stack_image_shape(test_images) != image_shape:
        raise DataError(
            f"test images are {stack_image_shape(test_images)} (C, H, W) but training images are "
            f"{image_shape}"
        )

    model, progress, history = _start_model(config, image_shape, run_dir, device, resume)
    ctf_all, ctf_test = _run_ctf(config, images, test_images, ctf, test_ctf)
    ctf_line = "CTF: " + (ctf_all.summary() if ctf_all is not None else "off")
    precision_line = f"precision: {precision[0]} ({precision[1]})"
    coarse = plan_coarse_to_fine(config, image_shape)
    # every rank has read the folder before rank 0 writes to it
    barrier(context)

    train_feed, test_feed = _feeds(config, images, test_images, device, context)
    train_filters, test_filters = _filters(
        ctf_all,
        ctf_all if test_images is None else ctf_test,
        train_feed,
        test_feed,
        image_shape,
        device,
    )
    # after the feeders: resident images already took their share of the free memory
    memory = _plan_memory(config, image_shape, model, device, context, resume, ctf_all is not None)
    config_extra = {"run": run_info or {}, "ctf": ctf_line, "precision": precision_line}
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, config, image_shape, config_extra)
    summary = f"{precision_line}; {coarse.describe()}; {ctf_line}; memory: {memory.describe()}"
    run = _RunData(
        run_dir,
        model,
        image_shape,
        train_feed,
        test_feed,
        train_filters,
        test_filters,
        coarse,
        config_extra,
        summary,
    )
    return run, progress, history


def _finish_run(
    loop: _StepLoop,
    run: _RunData,
    progress: Progress,
    history: list[dict[str, Any]],
    stop_reason: str,
    images_seen: int,
) -> TrainResult:
    """Save what an ended run learned, measure the trained model and report it.

    ``progress`` and ``history`` are the last attempt's (a restart replaces the run's), and
    ``stop_reason`` why the epochs ended ("completed", "stopped" or "time budget").
    """
    config, model, context, run_dir = loop.config, loop.model, loop.context, run.run_dir
    if context.is_main and (
        stop_reason != "completed" or progress.epochs_completed % config.checkpoint_every
    ):
        # keep what the interrupted epoch learned; the epoch itself is redone on resume
        write_history(run_dir, history)
        save_checkpoint(run_dir, model, loop.optimizer, progress)
    stopped = stop_reason == "stopped"
    turned, unrendered = _finish_model(
        model,
        loop.optimizer,
        progress,
        run.train_feed,
        run.train_filters,
        config,
        run_dir,
        context,
        stopped,
    )
    # nobody leaves (and tears down the group) before rank 0 has written the folder
    barrier(context)
    if config.compile:
        _uncompile(model.generator)
    seconds = time.monotonic() - loop.started
    loop.emit(
        TrainUpdate(
            "finished",
            progress.epochs_completed,
            config.epochs,
            0,
            loop.steps_per_epoch,
            seconds,
            stop_reason=stop_reason,
            message=turned,
            model=model,
            unrendered=unrendered,
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
        unrendered=unrendered,
        restarts=progress.restarts,
    )


def _train_metrics(
    steps: _EpochSteps,
    n_batches: int,
    n_images: int,
    epoch: int,
    run_dir: Path,
    context: DistributedContext,
) -> EpochMetrics:
    """The completed epoch's training metrics over every rank's ``n_images`` particles.

    ``steps.sums`` is summed over the ranks in place. Raises :class:`DataError` when the
    ELBO is no longer finite (the last saved model in ``run_dir`` is then the one to keep).
    """
    all_reduce_sum(steps.sums, context)
    metrics = replace(
        EpochMetrics.from_sums(steps.sums.cpu().tolist(), n_images),
        binned=steps.binned_steps / max(n_batches, 1),  # a completed epoch ran every step
    )
    if not math.isfinite(metrics.elbo):
        raise DataError(
            f"training diverged (non-finite ELBO) in epoch {epoch}; the last good model is "
            f"kept in {run_dir}; try a lower --lr"
        )
    return metrics


def _history_rows(
    train_metrics: EpochMetrics,
    test_metrics: EpochMetrics | None,
    epoch: int,
    lr: float,
    seconds: float,
    fold_share: float | None,
) -> list[dict[str, Any]]:
    """The epoch's rows of ``history.csv``: training, then held-out particles if any.

    ``fold_share`` is the measure the fold check judged this epoch (None: not checked),
    kept in the training row where a run that passed the check can be read back.
    """
    train_row = train_metrics.as_row(epoch, "train", lr, seconds)
    if fold_share is not None:
        train_row["unrendered"] = round(fold_share, 4)
    if test_metrics is None:
        return [train_row]
    return [train_row, test_metrics.as_row(epoch, "test", lr, seconds)]


def _fold_check_now(
    config: TrainConfig, progress: Progress, progress_before: float, epoch: int
) -> bool:
    """Whether ``epoch`` ends with the check for a folded z (core/fold_restart.py).

    Only runs that may still start again check: z-dim 1, restarts left, z no longer frozen,
    epochs left to train, and the schedule's progress (``progress_before`` at the epoch's
    start, ``progress.lr_progress`` at its end) just past the point the check is due at.
    """
    return (
        config.fold_restart
        and checks_for_folds(config.model.z_dim)
        and may_restart(progress.restarts)
        and epoch > config.z_delay
        and epoch < config.epochs
        and fold_check_due(progress_before, progress.lr_progress)
    )


def _start_afresh(
    model: SpatialVAE,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    restarts: int,
    image_shape: tuple[int, int, int],
    device: torch.device,
) -> None:
    """Give ``model`` and ``optimizer`` the fresh start of attempt ``restarts`` + 1, in place.

    The attempt's weights come from its own seed (``restart_seed``), so every rank draws
    the same ones and a rerun of the run draws them again.
    """
    fresh_config = replace(config, seed=restart_seed(config.seed, restarts))
    reinitialise(model, build_model(fresh_config, image_shape).to(device), optimizer)


@dataclass
class _StepLoop:
    """What every training step of a run uses, the same from its first step to its last
    (a restart reinitialises the model and the optimizer in place)."""

    config: TrainConfig
    model: SpatialVAE
    step_module: nn.Module  # the loss module, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    context: DistributedContext
    device: torch.device
    image_shape: tuple[int, int, int]
    train_filters: CtfBatches | None
    coarse: CoarseToFine
    deadline: float | None  # time.monotonic() at which the time budget ends
    started: float
    steps_per_epoch: int
    emit: Callable[[TrainUpdate], None]
    stop_requested: Callable[[], bool]

    @property
    def augment(self) -> bool:
        """Whether each step rotates the encoder's view (augmentation)."""
        return self.config.augment_rotation and self.config.model.infers_rotation


@dataclass
class _EpochSteps:
    """What an epoch's steps leave: why they stopped (``""``: every step ran), the summed
    terms ``(5 + Z,)`` float64 of this rank's rows, the binned steps and the images seen."""

    stop_reason: str
    sums: torch.Tensor
    binned_steps: int
    images_seen: int


def _run_steps(
    loop: _StepLoop,
    epoch: int,
    plan: list[tuple[int, torch.Tensor, slice, bool]],
    batches: Any,
    clock: ScheduleClock,
    progress: Progress,
    device_gen: torch.Generator,
    freeze_z: bool,
) -> _EpochSteps:
    """One epoch's optimiser steps over ``plan`` (:func:`_shard_plan`) and its ``batches``.

    Stops early, on every rank at the same step, when the user asks or the time budget
    ends. Advances ``progress`` (the step count and the learning-rate schedule's progress,
    which ``clock`` reads) and emits a ``"step"`` update after each step.
    """
    sums = torch.zeros(5 + loop.config.model.z_dim, device=loop.device, dtype=torch.float64)
    binned_steps = 0
    images_seen = 0
    for step, ((global_size, local, rows, padding), batch) in enumerate(
        zip(plan, batches, strict=True), start=1
    ):
        local_stop = loop.stop_requested()
        local_reason = "stopped" if local_stop else ""
        now = time.monotonic()
        if not local_stop and loop.deadline is not None and now > loop.deadline:
            local_reason = "time budget"
        schedule_progress = clock.progress(progress.global_step, now)
        if loop.context.enabled:
            # one CPU all-reduce: every rank stops at the same step and uses the same lr
            flag, schedule_progress = max_over_ranks(
                [float(bool(local_reason)), schedule_progress], loop.context
            )
            if flag and not local_reason:
                local_reason = "stopped"
        if local_reason:
            return _EpochSteps(local_reason, sums, binned_steps, images_seen)
        # never back up: a resumed run with more epochs keeps the rate it had reached
        progress.lr_progress = max(progress.lr_progress, schedule_progress)
        for group in loop.optimizer.param_groups:
            group["lr"] = learning_rate(loop.config, progress.lr_progress)
        noise = draw_noise(
            device_gen,
            global_size,
            loop.model.n_latent,
            loop.augment,
            rows,
            loop.device,
            loop.config.encoder_noise,
            loop.image_shape,
        )
        # the batch's CTF filters, built once and shared by every candidate rotation
        filters = None if loop.train_filters is None else loop.train_filters.filters(local)
        binning = loop.coarse.binning if progress.lr_progress < loop.coarse.fraction else 1
        binned_steps += int(binning > 1)
        terms = LossTerms(
            *loop.step_module(
                batch, noise.gamma, noise.eps, freeze_z, filters, binning, noise.encoder_noise
            )
        )
        # sum / global count, times the world size that DDP's averaging divides by:
        # the gradient is the global batch's per-image mean on every rank count
        weight = 0.0 if padding else loop.context.world_size / global_size
        loop.optimizer.zero_grad(set_to_none=True)
        (training_objective(terms, loop.config.z_free_nats) * weight).backward()
        loop.optimizer.step()
        if not padding:
            sums += summed_terms(terms)
        progress.global_step += 1
        images_seen += global_size
        loop.emit(
            TrainUpdate(
                "step",
                epoch,
                loop.config.epochs,
                step,
                loop.steps_per_epoch,
                time.monotonic() - loop.started,
            )
        )
    return _EpochSteps("", sums, binned_steps, images_seen)


def _start_model(
    config: TrainConfig,
    image_shape: tuple[int, int, int],
    run_dir: Path,
    device: torch.device,
    resume: bool,
) -> tuple[SpatialVAE, Progress, list[dict[str, Any]]]:
    """The model to train, its progress and its history rows: the run's checkpoint when
    ``resume`` (its history cut to the epochs it covers), else a fresh model in a folder
    that holds none."""
    if not resume:
        if has_checkpoint(run_dir):
            raise CheckpointError(
                f"{run_dir}: already holds a trained model; use --resume to continue it or "
                "choose a new folder"
            )
        return build_model(config, image_shape).to(device), Progress(), []
    _, saved_shape, _ = load_config(run_dir)
    if saved_shape != image_shape:
        raise CheckpointError(
            f"{run_dir}: the run was trained on {saved_shape} (C, H, W) images, these are "
            f"{image_shape}"
        )
    # every rank loads the same checkpoint, so all start from identical weights
    model, _, progress = load_model(run_dir, device)
    model.train()
    if model.config.half_turn_check == "on" and config.model.half_turn_check == "auto":
        config.model.half_turn_check = "on"  # the run switched it on before it stopped
    model.config.half_turn_check = config.model.half_turn_check  # the model holds a copy
    history = [r for r in read_history(run_dir) if r["epoch"] <= progress.epochs_completed]
    return model, progress, history


def _feeds(
    config: TrainConfig,
    images: Any,
    test_images: Any | None,
    device: torch.device,
    context: DistributedContext,
) -> tuple[ImageFeeder, ImageFeeder | None]:
    """The training particles' feeder and the held-out ones' (None on ranks other than 0,
    and when the split leaves none): ``config.test_fraction`` of ``images`` unless a separate
    ``test_images`` stack is given."""
    scale = input_scale(config.model.likelihood, getattr(images, "dtype", np.float32))
    limit = None if config.resident_gb is None else int(config.resident_gb * 1024**3)

    def feeder(stack: Any, indices: np.ndarray | None) -> ImageFeeder:
        return ImageFeeder(
            stack,
            indices,
            device,
            config.normalize,
            scale,
            check_unit_range=config.model.likelihood == "bernoulli",
            resident_limit_bytes=limit,
        )

    if test_images is not None:
        test_feed = feeder(test_images, None) if context.is_main else None
        return feeder(images, None), test_feed
    train_idx, test_idx = split_train_test(len(images), config.test_fraction, config.seed)
    # only rank 0 evaluates the held-out set, so only it reads those images
    test_feed = feeder(images, test_idx) if len(test_idx) and context.is_main else None
    return feeder(images, train_idx), test_feed


def _filters(
    train_ctf: CtfParameters | None,
    test_ctf: CtfParameters | None,
    train_feed: ImageFeeder,
    test_feed: ImageFeeder | None,
    image_shape: tuple[int, int, int],
    device: torch.device,
) -> tuple[CtfBatches | None, CtfBatches | None]:
    """The CTF filters of the training and the held-out feeders' particles (None without a
    CTF). ``train_ctf`` and ``test_ctf`` are the parameters of the stacks the two feeders
    read (the same when the held-out particles were split off the training stack)."""
    if train_ctf is None:
        return None, None

    def filters(ctf: CtfParameters, feed: ImageFeeder) -> CtfBatches:
        # the parameters follow the feeder's positions, so a batch's rows find their CTF
        return CtfBatches(ctf.subset(feed.indices), image_shape[1:], device)

    if test_feed is None:
        return filters(train_ctf, train_feed), None
    assert test_ctf is not None
    return filters(train_ctf, train_feed), filters(test_ctf, test_feed)


def _finish_model(
    model: SpatialVAE,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    train_feed: ImageFeeder,
    train_filters: CtfBatches | None,
    config: TrainConfig,
    run_dir: Path,
    context: DistributedContext,
    stopped: bool,
) -> tuple[str, UnrenderedVariation | None]:
    """What a run does after its last step, once the model as trained is on disk: z's axes
    turned and the training particles' z kept (both saved), then the unrendered variation
    measured (rank 0). Returns the line that says how z's axes turned (``""``: not turned)
    and the measure (None on other ranks, for a run ``stopped`` by the user, or without
    one). A stopped run is left as it is, but for its training z (it may be used as it is).
    """
    turned, rotation = "", None
    if not stopped:
        # z's prior is isotropic, so nothing in the ELBO ties its axes to the motions: turn
        # them towards independent factors (z-dim 2 or more; core/latent_axes.py). Every rank
        # the same way; the model as trained is on disk by now, so a failure here loses
        # nothing. A run stopped by the user is left as it is (it may be resumed).
        rotation = align_latent_axes(model, train_feed, train_filters, config.batch_size)
        turned = describe_turn(rotation) or ""
    if model.config.z_dim == 1 and len(train_feed) > 0:
        # the training particles' z: the grid and prior inference reads each particle's z
        # with (core/posterior_z.py); also for a stopped run, which may be used as it is
        model.training_z = _training_z(model, train_feed, train_filters, config, context)
    if context.is_main and (rotation is not None or model.training_z is not None):
        save_checkpoint(run_dir, model, optimizer, progress)
    if stopped or not context.is_main:
        return turned, None
    # a folded z (two states read as one) costs the ELBO next to nothing but leaves a
    # variation the residuals share (core/unrendered.py); the saved model is untouched
    return turned, measure_unrendered(
        model, train_feed, train_filters, batch=config.batch_size, seed=config.seed
    )


def _plan_memory(
    config: TrainConfig,
    image_shape: tuple[int, int, int],
    model: SpatialVAE,
    device: torch.device,
    context: DistributedContext,
    resume: bool,
    ctf: bool,
) -> MemoryPlan:
    """Check that a step fits the device; lower a new run's batch size if it does not.

    A resumed run keeps its saved batch size (it defines the run), and ranks of a distributed
    run must agree on it, so those are refused instead of changed.
    """
    ranks = context.world_size if context.enabled else 1
    per_rank = math.ceil(config.batch_size / ranks)
    n_parameters = sum(p.numel() for p in model.parameters())
    plan = plan_batch_size(
        config.model, image_shape, per_rank, n_parameters, available_bytes(device), ctf=ctf
    )
    gb = 1024**3
    if plan.available is None or not plan.lowered:
        return plan
    if plan.batch_size == 0:
        raise DataError(
            f"one training step needs ~{plan.step_bytes / gb:.1f} GB even for a single "
            f"{image_shape[1]}x{image_shape[2]} image, but {plan.available / gb:.1f} GB is "
            "available; downsample the particles (extract --size) or lower --hidden-dim"
        )
    if resume or context.enabled:
        need = plan_batch_size(config.model, image_shape, per_rank, n_parameters, None, ctf=ctf)
        raise DataError(
            f"a step of {per_rank} images needs ~{need.step_bytes / gb:.1f} GB but "
            f"{plan.available / gb:.1f} GB is available; free memory"
            + (
                ", or start a new run with --batch-size "
                if resume
                else " or lower --batch-size to "
            )
            + f"{plan.batch_size * ranks}"
        )
    config.batch_size = plan.batch_size
    return plan


def _training_z(
    model: SpatialVAE,
    feed: ImageFeeder,
    filters: CtfBatches | None,
    config: TrainConfig,
    context: DistributedContext,
) -> TrainingZ:
    """The training particles' z summarised, the same on every rank.

    Each rank encodes its own stride of the first training images (as it reads only its
    shard in training); the posteriors are then shared, so every rank summarises all of them
    (the grid's reach is their median std, which parts of them cannot combine).
    """
    positions = torch.arange(min(LATENT_AXES_SAMPLE, len(feed)))
    mine = positions[context.rank :: context.world_size]
    mean, std = latent_posteriors(model, feed, filters, mine, config.batch_size)
    # each rank fills its own rows of a zero table, and the sum is every rank's rows
    # (summed where the collectives run: NCCL reduces device tensors only)
    device = next(model.parameters()).device
    table = torch.zeros(len(positions), 2, device=device)
    table[mine.to(device)] = torch.cat([mean, std], dim=1).to(device)
    table = all_reduce_sum(table, context).cpu()
    return summarise_training_z(table[:, :1], table[:, 1:])


def _run_ctf(
    config: TrainConfig,
    images: Any,
    test_images: Any | None,
    ctf: Any | None,
    test_ctf: Any | None,
) -> tuple[CtfParameters | None, CtfParameters | None]:
    """The CTF parameters of the training and the separate test stack, per ``config.ctf``."""
    likelihood = config.model.likelihood
    if ctf is None:
        ctf, problem = getattr(images, "ctf", None), getattr(images, "ctf_problem", None)
    else:
        problem = None
    used = resolve_ctf(config.ctf, ctf, problem, len(images), likelihood)
    if used is None and config.model.ctf_encoder != "raw":
        raise ConfigError(
            f"ctf_encoder={config.model.ctf_encoder!r} needs the particles' CTF (a .star/.cs "
            "file with CTF columns and --ctf auto or on)"
        )
    if used is None or test_images is None:
        return used, None
    if test_ctf is None:
        test_ctf = getattr(test_images, "ctf", None)
        problem = getattr(test_images, "ctf_problem", None)
    if test_ctf is None and not problem:
        raise DataError(
            "the training particles carry a CTF but the test particles do not (give a test "
            ".star/.cs file with CTF columns, or use --ctf off)"
        )
    return used, resolve_ctf("on", test_ctf, problem, len(test_images), likelihood)


def _check_fold(
    model: SpatialVAE,
    train_feed: ImageFeeder,
    train_filters: CtfBatches | None,
    config: TrainConfig,
    epoch: int,
    restarts: int,
    context: DistributedContext,
) -> tuple[bool, str, float | None]:
    """Whether the run starts again because z looks folded, the line it says, and the share.

    ``restarts`` is how many times the run has started again so far. The line is ``""``
    when the check passes, and says why training goes on when the particles vary in more
    ways than z renders (core/fold_restart.py).

    Rank 0 measures; every rank learns its decision, so all restart together. The share
    (``UnrenderedVariation.share``) is None on other ranks and when too few particles gave
    no measure; the line is said by rank 0 only.
    """
    variation = None
    if context.is_main:
        variation = measure_unrendered(
            model, train_feed, train_filters, batch=config.batch_size, seed=config.seed
        )
    share = variation.share if variation is not None else None
    line = fold_check_line(variation, epoch, restarts + 1)
    (decision,) = max_over_ranks([float(folded(variation))], context)
    return bool(decision), line, share


def _switch_half_turn_check(
    config: TrainConfig,
    model: SpatialVAE,
    history: list[dict[str, Any]],
    test_metrics: EpochMetrics | None,
    epoch: int,
    progress: Progress,
    context: DistributedContext,
) -> str:
    """Turn ``half_turn_check="auto"`` into "on" when the held-out particles call for it.

    ``history`` holds the rows of the epochs before this one, whose held-out shares count
    too (:func:`~.metrics.switches_half_turn_check`). Returns the line that says so, or ""
    when nothing changed. ``config.model`` (which the model shares) is changed in place, so
    the caller's config and ``config.json`` follow.
    """
    if config.model.half_turn_check != "auto" or not model.can_check_half_turns:
        return ""
    switch = False
    if test_metrics is not None:
        shares = [row["half_turn_better"] for row in history if row["split"] == "test"]
        shares.append(test_metrics.half_turn_better)
        switch = switches_half_turn_check(shares, progress.lr_progress)
    if context.enabled:
        # only rank 0 evaluates the held-out set: every rank follows its decision
        switch = bool(max_over_ranks([float(switch)], context)[0])
    if not switch:
        return ""
    # (a resumed model holds its own copy of the model settings)
    config.model.half_turn_check = model.config.half_turn_check = "on"
    share = test_metrics.half_turn_better if test_metrics is not None else None
    measured = f"{100 * share:.1f} %" if share is not None else "part"
    return (
        f"half-turn check switched on after epoch {epoch}: {measured} "
        "of the held-out particles fit better turned by 180 degrees (--half-turn-check auto)"
    )


def _wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel without per-step buffer syncs (the buffers are constant grids)."""
    ddp = nn.parallel.DistributedDataParallel
    no_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    device_ids = [device.index] if device.type == "cuda" else None
    return ddp(module, device_ids=device_ids, **no_sync)


def _shard_plan(
    order: torch.Tensor, batch_size: int, context: DistributedContext
) -> list[tuple[int, torch.Tensor, slice, bool]]:
    """Per step: global batch size, this rank's positions, its rows, whether it is padding."""
    plan = []
    for start in range(0, len(order), batch_size):
        global_batch = order[start : start + batch_size]
        rows, padding = shard_rows(len(global_batch), context)
        plan.append((len(global_batch), global_batch[rows], rows, padding))
    return plan


def _uncompile(module: nn.Module) -> None:
    """Undo ``nn.Module.compile`` so later inference runs eagerly (any batch size)."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        module._compiled_call_impl = None
