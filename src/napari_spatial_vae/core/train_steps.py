"""One epoch's optimiser steps: the loss module DDP wraps, the objective, each rank's shards.

Every random draw of an epoch comes from generators seeded by the run's seed and the epoch
(:func:`epoch_generators`), so a resumed run replays the steps it would have taken.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from napari_spatial_vae.core.checkpoint import Progress
from napari_spatial_vae.core.config import SEED_COUNT, TrainConfig
from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.distributed import DistributedContext, max_over_ranks, shard_rows
from napari_spatial_vae.core.losses import LossTerms
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.performance import generator_autocast
from napari_spatial_vae.core.schedule import CoarseToFine, ScheduleClock, learning_rate
from napari_spatial_vae.core.step import StepNoise, draw_noise, loss_terms, summed_terms
from napari_spatial_vae.core.train_updates import TrainUpdate


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


def epoch_generators(
    seed: int, epoch: int, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """Random sources derived from (seed, epoch) alone, so a resumed run replays exactly."""
    epoch_seed = (seed * 1_000_003 + epoch * 7919) % SEED_COUNT
    cpu = torch.Generator().manual_seed(epoch_seed)
    on_device = torch.Generator(device=device).manual_seed(epoch_seed + 1)
    return cpu, on_device


def shard_plan(
    order: torch.Tensor, batch_size: int, context: DistributedContext
) -> list[tuple[int, torch.Tensor, slice, bool]]:
    """Per step: global batch size, this rank's positions, its rows, whether it is padding."""
    plan = []
    for start in range(0, len(order), batch_size):
        global_batch = order[start : start + batch_size]
        rows, padding = shard_rows(len(global_batch), context)
        plan.append((len(global_batch), global_batch[rows], rows, padding))
    return plan


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel without per-step buffer syncs (the buffers are constant grids)."""
    ddp = nn.parallel.DistributedDataParallel
    no_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    device_ids = [device.index] if device.type == "cuda" else None
    return ddp(module, device_ids=device_ids, **no_sync)


def uncompile(module: nn.Module) -> None:
    """Undo ``nn.Module.compile`` so later inference runs eagerly (any batch size)."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        module._compiled_call_impl = None


class LossModule(nn.Module):
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


@dataclass
class StepLoop:
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
class EpochSteps:
    """What an epoch's steps leave: why they stopped (``""``: every step ran), the summed
    terms ``(5 + Z,)`` float64 of this rank's rows, the binned steps and the images seen."""

    stop_reason: str
    sums: torch.Tensor
    binned_steps: int
    images_seen: int


def run_steps(
    loop: StepLoop,
    epoch: int,
    plan: list[tuple[int, torch.Tensor, slice, bool]],
    batches: Any,
    clock: ScheduleClock,
    progress: Progress,
    device_gen: torch.Generator,
    freeze_z: bool,
) -> EpochSteps:
    """One epoch's optimiser steps over ``plan`` (:func:`shard_plan`) and its ``batches``.

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
            return EpochSteps(local_reason, sums, binned_steps, images_seen)
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
    return EpochSteps("", sums, binned_steps, images_seen)
