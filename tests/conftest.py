"""Shared fixtures: tiny synthetic particle stacks and small, fast configurations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.simulate import SimulatedParticles, simulate_particles

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _two_threads():
    # Match CI's 2 cores and keep results independent of the machine's core count.
    torch.set_num_threads(2)


@pytest.fixture
def shared_data() -> Path:
    """The real-format files next to the repository (skips where they are absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (outside the project workplace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_particles() -> SimulatedParticles:
    """96 noisy 20x20 particles with random rotations, small shifts and a hinge motion."""
    return simulate_particles(96, size=20, snr=2.0, max_shift_px=0.7, blob_sigma_px=1.2, seed=3)


def tiny_config(**overrides) -> TrainConfig:
    """A configuration that trains a 20x20 stack in well under a second per epoch."""
    model_fields = {k for k in ModelConfig.__dataclass_fields__}
    model = ModelConfig(z_dim=1, hidden_dim=32, num_layers=2, encoder_rotations=8)
    config = TrainConfig(
        model=model, epochs=2, batch_size=16, lr=3e-3, z_delay=0, device="cpu", test_fraction=0.25
    )
    for key, value in overrides.items():
        setattr(model if key in model_fields else config, key, value)
    return config


@pytest.fixture(scope="session")
def make_config():
    """Factory for small configs: ``make_config(epochs=3, rotate=False)``."""
    return tiny_config


@pytest.fixture
def npy_stack(tmp_path, tiny_particles) -> Path:
    """The tiny stack saved as .npy."""
    path = tmp_path / "particles.npy"
    np.save(path, tiny_particles.images)
    return path
