"""Turning z's axes towards independent factors (core/latent_axes.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.data import ImageFeeder, standardize
from napari_spatial_vae.core.latent_axes import (
    align_latent_axes,
    describe_turn,
    independence_rotation,
    latent_means,
)
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.train import train


def _turn(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _correlations(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|Pearson| of every column of ``a`` with every column of ``b``."""
    return np.abs(np.corrcoef(a.T.numpy(), b.T.numpy())[: a.shape[1], a.shape[1] :])


@pytest.mark.parametrize("degrees", [0.0, 30.0, -40.0])
def test_the_rotation_finds_independent_motions_in_a_mix(degrees):
    generator = torch.Generator().manual_seed(0)
    # two independent, uniformly spread motions, mixed by a turn of the latent plane
    sources = torch.rand(4000, 2, generator=generator, dtype=torch.float64) * 2 - 1
    mixed = sources @ _turn(degrees).double().T
    rotation = independence_rotation(mixed)
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(2, dtype=torch.float64))
    unmixed = mixed @ rotation
    per_axis = _correlations(unmixed, sources)
    # each new axis is one motion (either order), within sampling noise
    assert per_axis.max(axis=1).min() > 0.99
    if degrees == 0.0:
        torch.testing.assert_close(rotation, torch.eye(2, dtype=torch.float64), atol=0.02, rtol=0)


@pytest.mark.parametrize("spread", [0.01, 0.05, 0.3, 1.0])
def test_independent_axes_of_unequal_spread_stay_as_they_are(spread):
    # one motion on z1 and a weak or unused z2 (the default z-dim is 2): a turn would
    # smear the motion over both axes
    generator = torch.Generator().manual_seed(2)
    motion = torch.rand(4000, generator=generator, dtype=torch.float64) * 2 - 1
    for other in (
        torch.randn(4000, generator=generator, dtype=torch.float64),
        torch.rand(4000, generator=generator, dtype=torch.float64) * 2 - 1,
    ):
        rotation = independence_rotation(torch.stack([motion, spread * other], dim=1))
        assert math.degrees(math.acos(float(rotation[0, 0].abs()))) < 3.0


def test_a_mix_of_unequal_motions_is_unmixed():
    generator = torch.Generator().manual_seed(3)
    sources = torch.rand(4000, 2, generator=generator, dtype=torch.float64) * 2 - 1
    sources[:, 1] *= 0.3
    mixed = sources @ _turn(25.0).double().T
    unmixed = mixed @ independence_rotation(mixed)
    assert _correlations(unmixed, sources).diagonal().min() > 0.98


def test_three_axes_are_unmixed_by_sweeps_over_pairs():
    generator = torch.Generator().manual_seed(1)
    sources = torch.rand(4000, 3, generator=generator, dtype=torch.float64) * 2 - 1
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    rotation = independence_rotation(sources @ q)
    assert _correlations(sources @ q @ rotation, sources).max(axis=1).min() > 0.98


@pytest.mark.parametrize(
    "fields",
    [
        {},  # the defaults: equivariant encoder, z from the aligned particle
        {"z_from_aligned": False},  # z from the pooled features
        {"z_half_turn_invariant": True},
        {"encoder": "mlp", "rotation_search": False},
        {"encoder": "mlp", "vanilla": True, "rotate": False, "translate": False},
        {"z_every_layer": False},
    ],
)
def test_turned_axes_encode_and_render_as_before(fields, make_config, tiny_particles):
    config = make_config(z_dim=2, **fields)
    torch.manual_seed(0)
    model = SpatialVAE(config.model, (1, 20, 20)).eval()
    images = standardize(torch.from_numpy(tiny_particles.images[:12])[:, None])
    with torch.no_grad():
        before = model.encode(images)
        _, _, z = model.split_latent(before.mu)
        rendering, _ = model.decode(z, *model.split_latent(before.mu)[:2], len(z))
    rotation = _turn(35.0)
    model.rotate_z_axes(rotation)
    with torch.no_grad():
        after = model.encode(images)
        theta, shift, z_turned = model.split_latent(after.mu)
        again, _ = model.decode(z_turned, theta, shift, len(z))
    torch.testing.assert_close(z_turned, z @ rotation, atol=1e-5, rtol=1e-4)
    # the pose is untouched, and each particle renders as it did
    n_pose = model.n_pose
    torch.testing.assert_close(after.mu[:, :n_pose], before.mu[:, :n_pose])
    torch.testing.assert_close(again, rendering, atol=1e-4, rtol=1e-4)


def test_training_ends_with_independent_axes(tmp_path, make_config, tiny_particles):
    messages = []
    result = train(
        make_config(z_dim=2, epochs=2),
        tiny_particles.images,
        tmp_path,
        on_update=lambda update: messages.append((update.kind, update.epoch, update.message)),
    )
    # the end of training says how far the axes turned, when they did (CLI and widget)
    (finished,) = [message for kind, _, message in messages if kind == "finished"]
    assert finished == "" or finished.startswith("z axes turned by up to")
    assert "by up to 30 degrees" in describe_turn(_turn(30.0).double())
    assert describe_turn(torch.eye(2, dtype=torch.float64)) is None
    model, _, _ = load_model(tmp_path)
    feed = ImageFeeder(tiny_particles.images, None, torch.device("cpu"), normalize=True)
    z = latent_means(model, feed, None, 1000)
    # the saved model already has the turned axes: turning again finds (almost) nothing to
    # do (training chose them on its training split, these are all the particles)
    torch.testing.assert_close(
        independence_rotation(z), torch.eye(2, dtype=torch.float64), atol=0.03, rtol=0
    )
    # and training returns that same model
    torch.testing.assert_close(latent_means(result.model, feed, None, 1000), z)
    # z-dim 1 has no axes to turn
    one = SpatialVAE(make_config(z_dim=1).model, (1, 20, 20))
    assert align_latent_axes(one, feed) is None
