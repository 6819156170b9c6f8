"""The flat public API: ``from napari_spatial_vae import train, infer, load_model, read_stack``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import napari_spatial_vae as svae


def test_importing_the_package_does_not_load_torch():
    # napari imports the package to find its manifest: that must stay cheap
    code = "import sys, napari_spatial_vae; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_then_infer_through_the_flat_api(tmp_path, npy_stack, make_config):
    stack = svae.read_stack(npy_stack)
    result = svae.train(make_config(epochs=1), stack, tmp_path / "run")
    assert result.epochs_completed == 1
    model, config = svae.load_model(tmp_path / "run")
    assert config.model.z_dim == model.config.z_dim == 1
    poses = svae.infer(tmp_path / "run", npy_stack, batch_size=32)
    assert len(poses) == len(stack)
    assert {"theta", "dx", "dy", "z1", "theta_std", "z1_std"} <= set(poses.columns)
    same = svae.infer(tmp_path / "run", np.load(npy_stack))
    np.testing.assert_allclose(same["theta"], poses["theta"], atol=1e-5)


def test_the_lazy_names_are_the_api_modules_exports():
    from napari_spatial_vae import _PUBLIC, api

    assert sorted(_PUBLIC) == sorted(api.__all__)
