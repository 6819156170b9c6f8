"""Training and inference off the Qt thread: napari ``thread_worker`` generators.

:func:`core.train.train` is a blocking call that reports through a callback. The worker's
generator runs it in a helper thread and turns each callback into a ``yield`` (through a
queue), so napari's ``yielded`` signal delivers small, model-free events to the widget in the
Qt thread. Step events are throttled to a few per second: a fast GPU makes hundreds of steps
a second and every queued signal costs the GUI time.

Everything that touches the live model (preview reconstructions during training, the result
layers after it) is computed in the training thread; only numpy arrays cross to the GUI.
Stopping is cooperative: the widget sets :attr:`TrainJob.stop` and training ends cleanly
at the next step, saving the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_spatial_vae._layers import InferenceResults
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.frame import fit_pose_frame
from napari_spatial_vae.core.infer import Poses, iter_inference, latent_traversal
from napari_spatial_vae.core.train import TrainResult, TrainUpdate, train
from napari_spatial_vae.core.unrendered import UnrenderedVariation

#: Seconds between two step events sent to the GUI.
STEP_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Preview:
    """A few particles and their reconstructions after an epoch (numpy, safe for the GUI)."""

    epoch: int
    indices: np.ndarray
    inputs: np.ndarray
    reconstructions: np.ndarray


@dataclass
class TrainOutcome:
    """What a training worker returns: the run and, unless it failed, its result layers."""

    run_dir: Path
    stop_reason: str
    epochs_completed: int
    seconds: float
    model: Any
    config: TrainConfig
    results: InferenceResults | None
    unrendered: UnrenderedVariation | None = None


@dataclass
class TrainJob:
    """Everything a training worker needs, plus the stop flag the widget sets.

    Attributes
    ----------
    config
        Validated settings.
    images
        The training stack (numpy array, ParticleStack or dask array).
    run_dir
        Run folder (created; must not hold a model unless ``resume``).
    preview_indices
        Particles whose reconstructions are previewed (empty: no preview).
    preview_every
        Epochs between previews (the last epoch is always previewed).
    result_limit
        Aligned/reconstructed images are made for at most this many particles (poses for
        all), bounding the memory the result layers take.
    traversal_steps
        Steps of the latent traversal layer.
    search_rotation
        The results' rotations searched on the whole circle (``spatial-vae infer
        --search-rotation``; one latent z).
    pixel_size, source, source_path
        Carried into the result layers.
    resume
        Continue the run in ``run_dir``.
    run_info
        Stored in the run's ``config.json``.
    stop
        Set it to stop at the next step; the model trained so far is kept.
    abort
        Also skip making the result layers (the viewer is closing).
    done
        Set by the worker once training (and saving) has ended, whatever the outcome.
    """

    config: TrainConfig
    images: Any
    run_dir: Path
    preview_indices: np.ndarray = dataclasses.field(default_factory=lambda: np.arange(0))
    preview_every: int = 2
    result_limit: int = 5000
    traversal_steps: int = 9
    search_rotation: bool = False
    pixel_size: float | None = None
    source: str = ""
    source_path: str | None = None
    resume: bool = False
    run_info: dict[str, Any] | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    abort: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


_DONE = object()


def run_training(job: TrainJob) -> Generator[TrainUpdate | Preview, None, TrainOutcome]:
    """Generator for ``thread_worker``: yields updates and previews, returns the outcome.

    Raises whatever :func:`core.train.train` raises (ConfigError, DataError,
    CheckpointError, torch's out-of-memory error...), in the worker thread, where napari
    turns it into the worker's ``errored`` signal.
    """
    return (yield from _relay(lambda emit: _train_in_thread(job, emit), job.stop, "train"))


def _relay(
    work: Callable[[Callable[[Any], None]], Any], stop: threading.Event, name: str
) -> Generator[Any, None, Any]:
    """Run ``work(emit)`` in a helper thread; yield what it emits; return its result.

    The core reports progress through callbacks, which cannot ``yield``; a queue carries the
    events to this generator (itself running in napari's worker thread). Whatever ``work``
    raises is re-raised here, where napari turns it into the worker's ``errored`` signal.
    """
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work(events.put)
        except BaseException as err:
            outcome["error"] = err
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, name=f"spatial-vae-{name}", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not _DONE:
            yield event
    finally:
        # the generator may be closed early (worker.quit()); the work must not outlive it
        stop.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _train_in_thread(job: TrainJob, emit: Callable[[Any], None]) -> TrainOutcome:
    last_step = 0.0
    preview_inputs: np.ndarray | None = None

    def on_update(update: TrainUpdate) -> None:
        nonlocal last_step
        if update.kind == "step":
            now = time.monotonic()
            if now - last_step < STEP_INTERVAL_S:
                return
            last_step = now
        # the model is live and stays in this thread; the GUI gets a model-free copy
        emit(dataclasses.replace(update, model=None))
        due = update.epoch % job.preview_every == 0 or update.epoch == update.epochs
        if update.kind == "epoch" and update.model is not None and len(job.preview_indices) and due:
            emit(make_preview(update.model, job, update.epoch, preview_inputs))

    try:
        if len(job.preview_indices):
            preview_inputs = read_images(job.images, job.preview_indices)
        result = train(
            job.config,
            job.images,
            job.run_dir,
            on_update=on_update,
            should_stop=job.stop.is_set,
            resume=job.resume,
            run_info=job.run_info,
        )
        return _finish(result, job)
    finally:
        release_device_memory()
        job.done.set()


def make_preview(model: Any, job: TrainJob, epoch: int, inputs: np.ndarray | None) -> Preview:
    """Reconstructions of the preview particles with the model as it is now.

    Called from the training callback: the model is live and in this thread.
    """
    if inputs is None:
        inputs = read_images(job.images, job.preview_indices)
    batch = next(
        iter_inference(model, job.config, inputs, batch_size=len(inputs), reconstructions=True)
    )
    if batch.reconstructions is None:
        raise RuntimeError("iter_inference returned no reconstructions although asked for them")
    return Preview(epoch, job.preview_indices, inputs, batch.reconstructions)


def read_images(images: Any, indices: np.ndarray) -> np.ndarray:
    """Images ``indices`` of any stack (ParticleStack, numpy or dask) as float32."""
    reader = getattr(images, "read_batch", None)
    if callable(reader):
        return reader(indices)
    return np.asarray(images[np.asarray(indices)], dtype=np.float32)


def _finish(result: TrainResult, job: TrainJob) -> TrainOutcome:
    """Result layers for the trained model, then the model moved off the accelerator."""
    results = infer_results(
        result.model,
        result.config,
        job.images,
        result_limit=job.result_limit,
        traversal_steps=job.traversal_steps,
        pixel_size=job.pixel_size,
        source=job.source,
        source_path=job.source_path,
        should_stop=job.abort.is_set,
        search_rotation=job.search_rotation,
    )
    return TrainOutcome(
        run_dir=result.run_dir,
        stop_reason=result.stop_reason,
        epochs_completed=result.epochs_completed,
        seconds=result.seconds,
        model=result.model.cpu(),
        config=result.config,
        results=results,
        unrendered=result.unrendered,
    )


def infer_results(
    model: Any,
    config: TrainConfig,
    images: Any,
    *,
    result_limit: int = 5000,
    traversal_steps: int = 9,
    pixel_size: float | None = None,
    source: str = "",
    source_path: str | None = None,
    batch_size: int = 256,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    search_rotation: bool = False,
    hold_still: np.ndarray | None = None,
) -> InferenceResults:
    """Poses of every particle, aligned images and reconstructions of the first
    ``result_limit``, and the latent traversal, as plain arrays.

    ``search_rotation`` searches each particle's rotation on the whole circle
    (:func:`~napari_spatial_vae.core.infer.iter_inference`; one latent z). ``hold_still``
    ``(H, W)``: a mask on the reference template whose part the results hold still
    (:func:`~napari_spatial_vae.core.frame.fit_pose_frame`).

    Raises
    ------
    DataError
        When the images do not match the model, or it cannot search rotations.
    InterruptedError
        When ``should_stop`` returns True between batches.
    """
    n = len(images)
    m = min(n, result_limit)
    image_tail = tuple(images.shape[1:])
    aligned = np.empty((m, *image_tail), dtype=np.float32)
    recon = np.empty((m, *image_tail), dtype=np.float32)
    parts: list[Poses] = []
    # a z-dim 2 frame of large boxes takes a minute or more: Stop interrupts it too
    frame = fit_pose_frame(model, hold_still, should_stop) if hold_still is not None else None
    for batch in iter_inference(
        model, config, images, batch_size, aligned=m > 0, reconstructions=m > 0,
        search_rotation=search_rotation, frame=frame,
    ):  # fmt: skip
        parts.append(batch.poses)
        stop = min(batch.start + len(batch.poses.theta), m)
        if batch.start < m:
            if batch.aligned is None or batch.reconstructions is None:
                raise RuntimeError("iter_inference returned no images although asked for them")
            count = stop - batch.start
            aligned[batch.start : stop] = batch.aligned[:count]
            recon[batch.start : stop] = batch.reconstructions[:count]
        if on_progress is not None:
            on_progress(batch.start + len(batch.poses.theta), n)
        if should_stop is not None and should_stop():
            raise InterruptedError("inference stopped")
    traversal = None
    if model.config.z_dim > 0:
        traversal = latent_traversal(model, traversal_steps, frame=frame)
    columns = Poses.concatenate(parts).columns()
    return InferenceResults(
        columns=columns,
        image_shape=(int(image_tail[0]), int(image_tail[1])),
        pixel_size=pixel_size,
        aligned=aligned,
        reconstructions=recon,
        traversal=traversal,
        source=source,
        source_path=source_path,
        frame=frame,
    )


@dataclass
class ApplyJob:
    """Inference with a trained model on a stack (the widget's "Apply to layer")."""

    model: Any
    config: TrainConfig
    images: Any
    device: str = "auto"
    result_limit: int = 5000
    pixel_size: float | None = None
    source: str = ""
    source_path: str | None = None
    # each particle's rotation searched on the whole circle (spatial-vae infer --search-rotation)
    search_rotation: bool = False
    # (H, W) mask of the part of the reference template the results hold still, or None
    hold_still: np.ndarray | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


def run_inference(job: ApplyJob) -> Generator[tuple[int, int], None, InferenceResults]:
    """Generator for ``thread_worker``: yields ``(done, total)`` and returns the results.

    The model is moved to ``job.device`` for the run and back to the CPU afterwards.
    """
    from napari_spatial_vae.core.device import resolve_device

    def work(emit: Callable[[Any], None]) -> InferenceResults:
        try:
            job.model.to(resolve_device(job.device))
            return infer_results(
                job.model,
                job.config,
                job.images,
                result_limit=job.result_limit,
                pixel_size=job.pixel_size,
                source=job.source,
                source_path=job.source_path,
                should_stop=job.stop.is_set,
                on_progress=lambda done, total: emit((done, total)),
                search_rotation=job.search_rotation,
                hold_still=job.hold_still,
            )
        finally:
            with contextlib.suppress(Exception):
                job.model.cpu()
            release_device_memory()

    return (yield from _relay(work, job.stop, "infer"))


def release_device_memory() -> None:
    """Return cached accelerator memory to the driver (other apps and the next run need it)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if (
        mps is not None
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        with contextlib.suppress(Exception):
            mps.empty_cache()
