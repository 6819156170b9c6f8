"""What a run checks between epochs and measures after its last step.

Between epochs: whether z looks folded (and the run starts again, :mod:`.fold_restart`) and
whether the held-out particles call for the half-turn check. After the last step: z's axes
turned towards independent factors, the training particles' z kept for inference, and the
variation the particles share that the model does not render (:mod:`.unrendered`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from napari_spatial_vae.core.checkpoint import Progress, save_checkpoint
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.distributed import DistributedContext, all_reduce_sum, max_over_ranks
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
from napari_spatial_vae.core.metrics import EpochMetrics, switches_half_turn_check
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.posterior_z import TrainingZ, summarise_training_z
from napari_spatial_vae.core.train_setup import build_model
from napari_spatial_vae.core.unrendered import UnrenderedVariation, measure_unrendered


def fold_check_now(
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


def start_afresh(
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


def check_fold(
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


def switch_half_turn_check(
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


def finish_model(
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
