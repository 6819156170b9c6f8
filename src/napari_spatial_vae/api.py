"""The small flat public API: train a model, load it, infer poses, read stacks.

``from napari_spatial_vae import train, infer, load_model, read_stack`` (the package
imports these lazily, so importing it for napari's plugin discovery stays cheap). Each
function is the one the command line uses; see docs/api.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from napari_spatial_vae.core.checkpoint import load_model as _load_model
from napari_spatial_vae.core.config import REFINE_Z_STEPS, ModelConfig, TrainConfig
from napari_spatial_vae.core.device import resolve_device
from napari_spatial_vae.core.infer import encode_stack
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.train import TrainResult, train
from napari_spatial_vae.io import ParticleStack, read_stack

__all__ = [
    "ModelConfig",
    "ParticleStack",
    "TrainConfig",
    "TrainResult",
    "infer",
    "load_model",
    "read_stack",
    "train",
]


def load_model(
    run_dir: str | os.PathLike[str], device: str = "cpu"
) -> tuple[SpatialVAE, TrainConfig]:
    """The trained model of a run folder (eval mode, on ``device``) and its config."""
    model, config, _ = _load_model(Path(run_dir), resolve_device(device))
    return model, config


def infer(
    run_dir: str | os.PathLike[str],
    particles: Any,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    refine_steps: int = REFINE_Z_STEPS,
    search_rotation: bool = False,
) -> pd.DataFrame:
    """Poses and latents of every particle: the table ``spatial-vae infer`` writes as CSV.

    Parameters
    ----------
    run_dir
        A run folder written by :func:`train` or ``spatial-vae train``.
    particles
        A path any reader of :func:`read_stack` opens, a :class:`ParticleStack`, or an
        array-like ``(N, H, W)`` / ``(N, H, W, C)`` of the training image size.
    batch_size
        Images per batch; bounds memory.
    device
        ``"cpu"``, ``"auto"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    refine_steps
        0 returns the encoder's posterior mean and std of z. Otherwise z is read against the
        generator at each particle's inferred pose: with one latent its posterior mean and
        std on a grid, with more this many gradient steps towards the generator's best fit
        (``spatial-vae infer --refine-steps``).
    search_rotation
        Search the whole circle of rotations against the generator for each particle
        (``spatial-vae infer --search-rotation``; one latent z, about five times slower): for
        noisy particles, whose rotation the encoder sometimes places far off.

    Returns
    -------
    pandas.DataFrame
        One row per particle in input order: ``theta`` (radians), ``dx``, ``dy`` (pixels, +x
        right, +y down), ``z1..zK`` and their posterior standard deviations (``*_std``).
    """
    if isinstance(particles, (str, os.PathLike)):
        particles = read_stack(Path(particles))
    model, config = load_model(run_dir, device)
    poses = encode_stack(model, config, particles, batch_size, refine_steps, search_rotation)
    return pd.DataFrame(poses.columns())
