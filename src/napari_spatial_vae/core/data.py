"""Feeding image stacks to the model: checks, layout, normalisation, batching.

The core accepts any array-like stack of shape ``(N, H, W)`` or ``(N, H, W, C)`` that supports
``len``, ``.shape`` and integer-array indexing (a numpy array, a ``np.memmap``, or the lazy
sources in :mod:`napari_spatial_vae.io`). Small stacks are copied to the device once; large
ones are gathered batch by batch, so memory stays bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.errors import DataError

# Stacks up to this size (as float32) are copied to the training device once.
RESIDENT_LIMIT_BYTES = 2 * 1024**3


def stack_image_shape(stack: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of a stack, after checking that it is a non-empty image stack.

    Raises
    ------
    DataError
        For 0-D/1-D/2-D arrays, 5-D or more, an empty stack or images smaller than 4x4.
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
    """

    def __init__(
        self,
        stack: Any,
        indices: np.ndarray | None,
        device: torch.device,
        normalize: bool,
        scale: float = 1.0,
        check_unit_range: bool = False,
    ):
        self.stack = stack
        self.image_shape = stack_image_shape(stack)
        self.indices = np.arange(len(stack)) if indices is None else np.asarray(indices)
        self.device = device
        self.normalize = normalize
        self.scale = scale
        self.check_unit_range = check_unit_range
        self._resident: torch.Tensor | None = None
        nbytes = len(self.indices) * int(np.prod(self.image_shape)) * 4
        if nbytes <= RESIDENT_LIMIT_BYTES:
            # One read, one check, one copy: afterwards batches are pure device indexing.
            self._resident = self._prepare(gather(stack, self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def _prepare(self, array: np.ndarray) -> torch.Tensor:
        images = preprocess(torch.from_numpy(array).to(self.device), self.scale, self.normalize)
        if self.check_unit_range:
            low, high = float(images.min()), float(images.max())
            if low < 0.0 or high > 1.0:
                raise DataError(
                    f"the bernoulli likelihood needs pixel values in 0..1, found {low:g}..{high:g}"
                    " (use --likelihood gaussian or rescale the images)"
                )
        return images

    def batch(self, positions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images at ``positions`` (0-based positions within this feeder), ``(B, C, H, W)``."""
        if self._resident is not None:
            if isinstance(positions, np.ndarray):
                positions = torch.from_numpy(positions)
            return self._resident[positions.to(self._resident.device)]
        positions = np.asarray(torch.as_tensor(positions).cpu())
        return self._prepare(gather(self.stack, self.indices[positions]))

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False
    ) -> Iterator[torch.Tensor]:
        """Yield batches in ``order`` (a permutation of positions; default sequential)."""
        if order is None:
            order = torch.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])
