"""What a run sets up before its first step.

The model (fresh, or the checkpoint a resumed run continues), the particles' feeders and CTF
filters, the batch size the device's memory allows, and the run's ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.checkpoint import (
    Progress,
    has_checkpoint,
    load_config,
    load_model,
    read_history,
    save_config,
)
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.ctf import CtfBatches, CtfParameters, resolve_ctf
from napari_spatial_vae.core.data import ImageFeeder, input_scale, stack_image_shape
from napari_spatial_vae.core.distributed import DistributedContext, barrier
from napari_spatial_vae.core.errors import CheckpointError, ConfigError, DataError
from napari_spatial_vae.core.memory import MemoryPlan, available_bytes, plan_batch_size
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.schedule import CoarseToFine, plan_coarse_to_fine


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


def build_model(config: TrainConfig, image_shape: tuple[int, int, int]) -> SpatialVAE:
    """A freshly initialised model; initialisation depends on ``config.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SpatialVAE(config.model, image_shape)


@dataclass
class RunData:
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


def set_up_run(
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
) -> tuple[RunData, Progress, list[dict[str, Any]]]:
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
    run = RunData(
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
