"""Shared fixtures for the io tests: the real files in ../shared/data and tiny stacks."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

# The repository and shared/ sit side by side (locally /work/main and /work/shared; CI
# clones the repository into another folder with shared/ beside it).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CRYOEM = SHARED_DATA / "cryoem"


@pytest.fixture(scope="session")
def cryoem() -> Path:
    """Folder of real cryo-EM files (see shared/data/SOURCES.md); skips when absent."""
    if not CRYOEM.is_dir():
        pytest.skip(f"real test files not found: {CRYOEM} (clone shared/ beside the repo)")
    return CRYOEM


def write_test_mrcs(
    path: Path, n: int = 6, size: int = 16, pixel_size: float = 1.5, seed: int = 0
) -> np.ndarray:
    """Write a small random float32 stack with mrcfile; return its data (N, H, W)."""
    data = np.random.default_rng(seed).normal(size=(n, size, size)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return data


@pytest.fixture
def make_mrcs():
    """The :func:`write_test_mrcs` helper (fixtures avoid importing test modules)."""
    return write_test_mrcs


@pytest.fixture
def small_mrcs(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 6 x 16 x 16 stack with pixel size 1.5 Å, and its data."""
    path = tmp_path / "small.mrcs"
    return path, write_test_mrcs(path)
