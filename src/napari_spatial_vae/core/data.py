"""Feeding image stacks to the model: checks, layout, normalisation, batching.

The core accepts any array-like stack of shape ``(N, H, W)`` or ``(N, H, W, C)`` that supports
``len``, ``.shape`` and integer-array indexing (a numpy array, a ``np.memmap``, or the lazy
sources in :mod:`napari_spatial_vae.io`). Stacks that fit are copied to the device once
(``resident``); larger ones are streamed: a background thread gathers the next batch from the
memory map (into pinned memory when training on a GPU) while the current step runs, so
memory stays bounded by the batch size and reading overlaps computing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.errors import DataError

# Stacks up to this size (as float32) are copied to the training device once (CPU, MPS).
RESIDENT_LIMIT_BYTES = 2 * 1024**3
# On a GPU the stack stays resident while it takes at most this share of the free memory.
GPU_RESIDENT_FRACTION = 0.5


def default_resident_limit(device: torch.device) -> int:
    """Largest float32 stack, in bytes, to keep resident on ``device``.

    On CUDA: half the currently free GPU memory (the rest is for activations, which take
    ``~B * N * H * 4`` bytes per layer); elsewhere :data:`RESIDENT_LIMIT_BYTES`.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_RESIDENT_FRACTION)
    return RESIDENT_LIMIT_BYTES


def stack_image_shape(stack: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of a stack, after checking that it is a non-empty image stack.

    Raises
    ------
    DataError
        For 0-D/1-D/2-D arrays, 5-D or more, an empty stack, images smaller than 4x4 or
        images that are not square.
    """
    shape = tuple(getattr(stack, "shape", ()))
    if len(shape) not in (3, 4):
        raise DataError(
            f"expected an image stack of shape (N, H, W) or (N, H, W, C), got shape {shape}"
        )
    if shape[0] == 0:
        raise DataError("the stack holds no images")
    height, width = shape[1], shape[2]
    channels = shape[3] if len(shape) == 4 else 1
    if height < 4 or width < 4:
        raise DataError(f"images must be at least 4x4 pixels, got {height}x{width}")
    if height != width:
        # The coordinate grid spans -1..1 along both axes, so on a non-square image a
        # rotation by theta would scale x and y differently (not a rigid rotation), and
        # RELION's STAR files describe square boxes only.
        raise DataError(
            f"images are {height}x{width} (HxW) pixels; spatial-VAE needs square images"
            " (crop or pad them to a square box)"
        )
    if channels < 1 or channels > 4:
        raise DataError(f"images must have 1 to 4 channels, got {channels}")
    return int(channels), int(height), int(width)


def gather(stack: Any, indices: np.ndarray) -> np.ndarray:
    """Read images ``indices`` (any order) as float32 ``(B, C, H, W)``; checks finiteness.

    Indices are sorted before reading so memory-mapped files are read front to back.
    Stacks with a ``read_batch`` method (the io layer's lazy sources) are read through it.

    Raises
    ------
    DataError
        Naming the first image (0-based index into the stack) with NaN or infinite pixels.
    """
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    reader = getattr(stack, "read_batch", None)
    batch = reader(sorted_indices) if callable(reader) else stack[sorted_indices]
    batch = np.asarray(batch, dtype=np.float32)
    finite = np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
    if not finite.all():
        bad = int(sorted_indices[np.argmin(finite)])
        raise DataError(f"image {bad} contains NaN or infinite pixels")
    restored = np.empty_like(batch)
    restored[order] = batch
    if restored.ndim == 3:
        return restored[:, None]
    return np.ascontiguousarray(np.moveaxis(restored, -1, 1))


def standardize(images: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean and unit variance, ``(B, C, H, W)`` -> same (constant images -> 0)."""
    flat = images.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True).clamp_min(1e-8)
    return ((flat - mean) / std).reshape(images.shape)


def input_scale(likelihood: str, dtype: Any) -> float:
    """Factor applied to raw pixels: 8-bit images become 0..1 under the bernoulli likelihood."""
    return 1.0 / 255.0 if likelihood == "bernoulli" and np.dtype(dtype) == np.uint8 else 1.0


def preprocess(images: torch.Tensor, scale: float, normalize: bool) -> torch.Tensor:
    """What the model sees: ``(B, C, H, W)`` raw pixels, scaled and optionally standardised."""
    if scale != 1.0:
        images = images * scale
    return standardize(images) if normalize else images


class ImageFeeder:
    """Serves preprocessed ``(B, C, H, W)`` float tensors on the training device.

    Parameters
    ----------
    stack
        Array-like ``(N, H, W)`` or ``(N, H, W, C)``.
    indices
        Which images of ``stack`` this feeder serves (a train or test split); None for all.
    device
        Where batches go.
    normalize
        Standardise each image (gaussian likelihood).
    scale
        Multiply pixel values by this (1/255 for 8-bit data under the bernoulli likelihood).
    check_unit_range
        Require pixel values in 0..1 (bernoulli likelihood).
    resident_limit_bytes
        Keep the served images on ``device`` when they take at most this many bytes as
        float32; None: :func:`default_resident_limit`. 0 always streams.
    """

    def __init__(
        self,
        stack: Any,
        indices: np.ndarray | None,
        device: torch.device,
        normalize: bool,
        scale: float = 1.0,
        check_unit_range: bool = False,
        resident_limit_bytes: int | None = None,
    ):
        self.stack = stack
        self.image_shape = stack_image_shape(stack)
        self.indices = np.arange(len(stack)) if indices is None else np.asarray(indices)
        self.device = device
        self.normalize = normalize
        self.scale = scale
        self.check_unit_range = check_unit_range
        self._resident: torch.Tensor | None = None
        self._pin = False
        nbytes = len(self.indices) * int(np.prod(self.image_shape)) * 4
        limit = (
            default_resident_limit(device) if resident_limit_bytes is None else resident_limit_bytes
        )
        if nbytes <= limit:
            # One read, one check, one copy: afterwards batches are pure device indexing.
            self._resident = self._to_device(self._load(self.indices))
        else:
            # page-locked batches let the GPU copy run asynchronously to the computation
            self._pin = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def resident(self) -> bool:
        """Whether all served images live on the device (else they are streamed)."""
        return self._resident is not None

    def _load(self, stack_indices: np.ndarray) -> torch.Tensor:
        """Read and check images on the host: ``(B, C, H, W)`` float32, scaled, maybe pinned.

        Runs in the prefetch thread for streamed stacks, so checks use numpy (no device sync).
        """
        array = gather(self.stack, stack_indices)
        if self.scale != 1.0:
            array *= np.float32(self.scale)
        if self.check_unit_range and array.size:
            low, high = float(array.min()), float(array.max())
            if low < 0.0 or high > 1.0:
                raise DataError(
                    f"the bernoulli likelihood needs pixel values in 0..1, found {low:g}..{high:g}"
                    " (use --likelihood gaussian or rescale the images)"
                )
        images = torch.from_numpy(array)
        return images.pin_memory() if self._pin else images

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=self._pin)
        return standardize(images) if self.normalize else images

    def batch(self, positions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images at ``positions`` (0-based positions within this feeder), ``(B, C, H, W)``."""
        if self._resident is not None:
            if isinstance(positions, np.ndarray):
                positions = torch.from_numpy(positions)
            return self._resident[positions.to(self._resident.device)]
        return self._to_device(self._load(self._stack_indices(positions)))

    def _stack_indices(self, positions: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.indices[np.asarray(torch.as_tensor(positions).cpu())]

    def batches_at(self, groups: Iterable[torch.Tensor | np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield the batch of each group of positions, in order.

        Streamed stacks read group ``k + 1`` in a background thread while the caller works
        on group ``k`` (one batch of look-ahead: memory stays bounded by two batches).
        """
        if self._resident is not None:
            for positions in groups:
                yield self.batch(positions)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="svae-prefetch") as pool:
            pending: Future[torch.Tensor] | None = None
            for positions in groups:
                upcoming = pool.submit(self._load, self._stack_indices(positions))
                if pending is not None:
                    yield self._to_device(pending.result())
                pending = upcoming
            if pending is not None:
                yield self._to_device(pending.result())

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False
    ) -> Iterator[torch.Tensor]:
        """Yield batches in ``order`` (a permutation of positions; default sequential)."""
        if order is None:
            order = torch.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        yield from self.batches_at(
            order[start : start + batch_size] for start in range(0, stop, batch_size)
        )
