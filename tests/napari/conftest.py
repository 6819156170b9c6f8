"""napari plugin tests: skipped as a whole where napari (and a Qt binding) is not installed.

pytest-xvfb provides the headless display; pytest-qt's ``qtbot`` and napari's
``make_napari_viewer`` fixture drive the GUI.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari is not installed (the test extra brings it)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from napari_spatial_vae import _layers as L
from napari_spatial_vae.core.simulate import simulate_particles


@pytest.fixture(scope="session")
def small_particles() -> np.ndarray:
    """64 noisy 20x20 particles: trains an epoch in well under a second."""
    return simulate_particles(
        64, size=20, snr=2.0, max_shift_px=0.7, blob_sigma_px=1.2, seed=5
    ).images


def _make_results(n: int = 5, z_dim: int = 2, size: tuple[int, int] = (20, 24), pixel=None):
    """Random :class:`InferenceResults` with ``n`` particles and ``z_dim`` latents."""
    rng = np.random.default_rng(0)
    columns = {
        "theta": rng.uniform(-np.pi, np.pi, n),
        "dx": rng.normal(0, 1, n),
        "dy": rng.normal(0, 1, n),
    }
    columns.update({f"z{k + 1}": rng.normal(0, 1, n) for k in range(z_dim)})
    columns.update({"theta_std": np.full(n, 0.1), "dx_std": np.full(n, 0.2), "dy_std": np.ones(n)})
    columns.update({f"z{k + 1}_std": np.full(n, 0.5) for k in range(z_dim)})
    h, w = size
    return L.InferenceResults(
        columns=columns,
        image_shape=size,
        pixel_size=pixel,
        aligned=rng.normal(size=(n, h, w)).astype(np.float32),
        reconstructions=rng.normal(size=(n, h, w)).astype(np.float32),
        traversal=rng.normal(size=(z_dim, 7, h, w)).astype(np.float32) if z_dim else None,
        source="stack",
        source_path="/data/stack.mrcs",
    )


@pytest.fixture
def make_results():
    """Factory: ``make_results(n=5, z_dim=2, size=(20, 24), pixel=None)``."""
    return _make_results
