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
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_spatial_vae.core.checkpoint import (
    Progress,
    restore_optimizer,
    save_checkpoint,
    save_config,
    write_history,
)
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.device import describe_device, resolve_device
from napari_spatial_vae.core.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    init_from_environment,
    shutdown,
)
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.fold_restart import restart_seed
from napari_spatial_vae.core.metrics import EpochMetrics, evaluate_elbo
from napari_spatial_vae.core.performance import (
    make_adam,
    matmul_precision,
    resolve_precision,
    retained_freed_memory,
)
from napari_spatial_vae.core.runlock import hold_run_lock
from napari_spatial_vae.core.schedule import ScheduleClock
from napari_spatial_vae.core.train_checks import (
    check_fold,
    finish_model,
    fold_check_now,
    start_afresh,
    switch_half_turn_check,
)
from napari_spatial_vae.core.train_setup import RunData, set_up_run
from napari_spatial_vae.core.train_steps import (
    EpochSteps,
    LossModule,
    StepLoop,
    epoch_generators,
    run_steps,
    shard_plan,
    uncompile,
    wrap_ddp,
)
from napari_spatial_vae.core.train_updates import TrainResult, TrainUpdate


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
    run, progress, history = set_up_run(
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

    step_module: nn.Module = LossModule(model, precision[0], device)
    if context.enabled:
        step_module = wrap_ddp(step_module, device)
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

    loop = StepLoop(
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
        cpu_gen, device_gen = epoch_generators(attempt_seed, epoch, device)
        # the same permutation on every rank; each rank then takes its rows of every batch
        order = torch.randperm(len(run.train_feed), generator=cpu_gen)
        plan = shard_plan(order, config.batch_size, context)
        freeze_z = epoch <= config.z_delay
        model.train()
        batches = run.train_feed.batches_at(local for _, local, _, _ in plan)
        steps = run_steps(loop, epoch, plan, batches, clock, progress, device_gen, freeze_z)
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
        switched = switch_half_turn_check(
            config, model, history, test_metrics, epoch, progress, context
        )
        if switched and context.is_main:
            save_config(run_dir, config, image_shape, run.config_extra)  # inference checks too
        restart, fold_line, fold_share = False, "", None
        if fold_check_now(config, progress, progress_before, epoch):
            restart, fold_line, fold_share = check_fold(
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
            start_afresh(model, optimizer, config, progress.restarts, image_shape, device)
            history = []
            clock = ScheduleClock(total_steps, deadline)
            epoch = 0

    return _finish_run(loop, run, progress, history, stop_reason, images_seen)


def _finish_run(
    loop: StepLoop,
    run: RunData,
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
    turned, unrendered = finish_model(
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
        uncompile(model.generator)
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
    steps: EpochSteps,
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
