"""How much memory a training step needs, and a batch size that fits the device.

A training step's memory is dominated by activations kept for the backward pass, which grow
with the batch and the pixels: the generator's hidden layers at every rendered pixel, and
the equivariant encoder's rotated copies and candidate renderings. The per-pixel constants
were measured with ``benchmarks/training_memory.py`` (peak resident memory over two steps,
CPU, fp32, 32-128 px, hidden 128-256, 2-4 layers, 16-32 rotations: the formula is within
10 % of every measurement there; at 256 px it overestimates by 35 %, the safe side) and carry
a 25 % margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from napari_spatial_vae.core.config import ModelConfig

__all__ = [
    "COMPUTE_PIXELS",
    "MemoryPlan",
    "available_bytes",
    "plan_batch_size",
    "step_bytes_per_image",
]

# pixels encoded and rendered at once (a batch's images, split into parts of at most this
# many pixels): 256 images of 64 px, whose inference peaks at ~1.2 GB with the default model
# (benchmarks/infer_large.py); 256 images of 128 px at once peaked at 3.8 GB
COMPUTE_PIXELS = 256 * 64 * 64

# bytes per rendered pixel and hidden unit: the first (fused) layer, and each further layer
_FIRST_LAYER = 19.6
_FURTHER_LAYER = 3.4
# bytes per image pixel and rotated copy: the copies, their sampling grid and gradients
_PER_COPY_SEARCH = 50.0
_PER_COPY = 25.0
# bytes per image pixel and rendered candidate for the CTF: the candidates' rfft2, the
# filtered spectrum and the irfft2 back, with their gradients
_PER_CANDIDATE_CTF = 32.0
# bytes per image pixel independent of the model (input, masks, encoder input gradient)
_PER_PIXEL = 400.0
_MARGIN = 1.25
# Adam keeps weights, gradients and two moments
_PER_PARAMETER = 16


def step_bytes_per_image(
    config: ModelConfig, image_shape: tuple[int, int, int], ctf: bool = False
) -> int:
    """Activation memory of one training step per image, in bytes (with the margin).

    Parameters
    ----------
    config
        The model settings.
    image_shape
        ``(C, H, W)``.
    ctf
        Whether the likelihood applies each particle's CTF (FFTs of every candidate).
    """
    channels, height, width = image_shape
    pixels = height * width
    modelled = pixels * (math.pi / 4 if config.circular_mask else 1.0)
    rendered = modelled
    if config.searches_rotation and not config.circular_mask:
        rendered = math.pi / 2 * pixels  # the disk through the corners (see the render canvas)
    per_image = _PER_PIXEL * pixels * channels
    if not config.vanilla:
        per_image += (
            rendered * config.hidden_dim * (_FIRST_LAYER + _FURTHER_LAYER * (config.num_layers - 1))
        )
    if config.encoder == "equivariant":
        per_copy = _PER_COPY_SEARCH if config.searches_rotation else _PER_COPY
        per_image += pixels * channels * config.encoder_rotations * per_copy
    if ctf:
        candidates = config.encoder_rotations if config.searches_rotation else 1
        per_image += pixels * channels * candidates * _PER_CANDIDATE_CTF
    return int(per_image * _MARGIN)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use on ``device``, or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


@dataclass(frozen=True)
class MemoryPlan:
    """What a run's steps need and what the device offers.

    Attributes
    ----------
    batch_size
        The batch size that fits (the requested one when it fits or nothing is known).
    requested
        The configured batch size.
    step_bytes
        Memory one step of ``batch_size`` images needs, weights and Adam state included.
    available
        Free memory on the device, or None where it cannot be read.
    """

    batch_size: int
    requested: int
    step_bytes: int
    available: int | None

    @property
    def lowered(self) -> bool:
        """Whether the batch had to shrink to fit."""
        return self.batch_size < self.requested

    def describe(self) -> str:
        """One phrase for the training's start message."""
        need = f"~{self.step_bytes / 1024**3:.1f} GB per step of {self.batch_size} images"
        if self.available is None:
            return need
        text = f"{need} ({self.available / 1024**3:.1f} GB available)"
        if self.lowered:
            text += f"; batch size lowered from {self.requested} to fit"
        return text


def plan_batch_size(
    config: ModelConfig,
    image_shape: tuple[int, int, int],
    batch_size: int,
    n_parameters: int,
    available: int | None,
    usable_fraction: float = 0.8,
    ctf: bool = False,
) -> MemoryPlan:
    """The largest batch size up to ``batch_size`` whose step fits the available memory.

    Parameters
    ----------
    config, image_shape
        The model and its ``(C, H, W)`` images.
    batch_size
        The requested (per-process) batch size.
    n_parameters
        Number of model parameters (weights and Adam state are fixed costs).
    available
        Free bytes on the device (:func:`available_bytes`); None: no check.
    usable_fraction
        Share of the free memory a step may take (the rest is headroom for the allocator,
        data loading and the rest of the process).
    ctf
        Whether the likelihood applies each particle's CTF.

    Returns
    -------
    MemoryPlan
        ``batch_size`` 0 when not even one image fits.
    """
    per_image = step_bytes_per_image(config, image_shape, ctf)
    fixed = n_parameters * _PER_PARAMETER
    fits = batch_size
    if available is not None:
        budget = usable_fraction * available - fixed
        fits = max(0, min(batch_size, int(budget // per_image)))
    return MemoryPlan(fits, batch_size, fixed + per_image * max(fits, 1), available)
