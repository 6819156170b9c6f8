"""What :func:`~napari_spatial_vae.core.train.train` reports while it runs, and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.metrics import EpochMetrics
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.unrendered import UnrenderedVariation

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
        Wall time since this call of :func:`~napari_spatial_vae.core.train.train` started.
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
    """What :func:`~napari_spatial_vae.core.train.train` returns."""

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
