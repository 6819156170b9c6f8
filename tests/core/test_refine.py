"""Refining z against the trained generator at inference (core/refine.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spatial_vae.core import refine
from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.infer import Poses, encode_stack, iter_inference
from napari_spatial_vae.core.losses import fitted_amplitude
from napari_spatial_vae.core.refine import map_cost, refine_z
from napari_spatial_vae.core.simulate import CtfSimulation, simulate_particles
from napari_spatial_vae.core.train import train
from tests.encoded import encode


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_particles, make_config):
    run = tmp_path_factory.mktemp("run")
    train(make_config(epochs=3, z_dim=2), tiny_particles.images, run)
    return load_model(run)


def test_refinement_lowers_each_particles_cost_and_leaves_the_model_alone(trained, tiny_particles):
    model, config, _ = trained
    images, theta, shift, z = encode(model, config, tiny_particles.images)
    # by default the cost is that of 2 x 2 bins
    assert model.coarse_binning == 2
    layout = model.binned_layout(2)
    targets = layout.targets(images)
    refined = refine_z(model, images, theta, shift, z, steps=10)
    with torch.no_grad():
        before = map_cost(model, targets, theta, shift, z, layout=layout)
        after = map_cost(model, targets, theta, shift, refined, layout=layout)
    # each particle keeps the best z it visited: never worse than the encoder's
    assert (after <= before + 1e-3).all()
    # and after 3 epochs the encoder leaves room: most particles gain
    assert (after < before - 0.05).float().mean() > 0.5
    assert not torch.equal(refined, z)
    assert all(p.grad is None for p in model.parameters())


def test_each_particle_is_refined_on_its_own(trained, tiny_particles, monkeypatch):
    model, config, _ = trained
    images, theta, shift, z = encode(model, config, tiny_particles.images)
    whole = refine_z(model, images, theta, shift, z, steps=5)
    part = refine_z(model, images[10:20], theta[10:20], shift[10:20], z[10:20], steps=5)
    torch.testing.assert_close(part, whole[10:20], rtol=1e-4, atol=1e-5)
    # nor do the chunks that bound its memory change anything
    monkeypatch.setattr(refine, "REFINE_Z_CHUNK", 7)
    torch.testing.assert_close(refine_z(model, images, theta, shift, z, steps=5), whole)


def test_no_steps_report_the_encoders_mean(trained, tiny_particles):
    model, config, _ = trained
    plain = encode_stack(model, config, tiny_particles.images, refine_steps=0)
    *_, z = encode(model, config, tiny_particles.images)
    np.testing.assert_allclose(plain.z, z.numpy(), rtol=1e-5, atol=1e-6)
    refined = encode_stack(model, config, tiny_particles.images)
    assert np.abs(refined.z - plain.z).max() > 1e-3
    # the pose and the encoder's std are not touched
    np.testing.assert_array_equal(refined.theta, plain.theta)
    np.testing.assert_array_equal(refined.z_std, plain.z_std)
    with pytest.raises(DataError, match="0 or more"):
        encode_stack(model, config, tiny_particles.images, refine_steps=-1)


def test_refinement_compares_with_the_particles_ctf(tmp_path, make_config):
    particles = simulate_particles(
        48, 24, snr=1.0, max_shift_px=0.7, blob_sigma_px=1.2, seed=5, ctf=CtfSimulation()
    )
    # two latents: inference refines them (one is read on a grid, test_posterior_z.py)
    train(make_config(epochs=2, z_dim=2), particles.images, tmp_path, ctf=particles.ctf)
    model, config, _ = load_model(tmp_path)
    filters = CtfBatches(particles.ctf, (24, 24), torch.device("cpu")).filters(
        torch.arange(len(particles.images))
    )
    images, theta, shift, z = encode(model, config, particles.images, filters)
    refined = refine_z(model, images, theta, shift, z, filters, steps=5, binning=1)
    targets = model.targets(images)
    with torch.no_grad():
        with_ctf = map_cost(model, targets, theta, shift, refined, filters)
        start = map_cost(model, targets, theta, shift, z, filters)
    assert (with_ctf <= start + 1e-3).all() and (with_ctf < start - 0.05).any()
    # inference refines with the stack's CTF (it would differ without the filters)
    batches = iter_inference(model, config, particles.images, ctf=particles.ctf)
    poses = Poses.concatenate([b.poses for b in batches])
    refined = refine_z(model, images, theta, shift, z, filters)  # the defaults of inference
    np.testing.assert_allclose(poses.z, refined.numpy(), rtol=1e-4, atol=1e-4)
    without = refine_z(model, images, theta, shift, z, None)
    assert (without - refined).abs().max() > 1e-3


def test_fitted_amplitude_is_the_renderings_scale():
    # seeded: on about 1 % of draws the float32 grid search below, flat near its minimum,
    # lands up to 3e-4 from the exact scale
    mean = torch.randn(3, 1, 50, generator=torch.Generator().manual_seed(1))
    target = torch.stack([0.3 * mean[0], mean[1], -2.0 * mean[2]])
    logstd = torch.full_like(mean, -0.5)
    np.testing.assert_allclose(
        fitted_amplitude(target, mean, logstd).numpy(), [0.3, 1.0, 0.0], atol=1e-5
    )
    # with noise and a per-pixel noise level: the scale that minimises the likelihood's cost
    generator = torch.Generator().manual_seed(0)
    logstd = torch.randn(3, 1, 50, generator=generator)
    noisy = 0.6 * mean + torch.exp(logstd) * torch.randn(3, 1, 50, generator=generator)
    scales = torch.linspace(0.0, 2.0, 20001)
    costs = ((noisy[None] - scales[:, None, None, None] * mean[None]) * torch.exp(-logstd)) ** 2
    best = scales[costs.sum(dim=(2, 3)).argmin(dim=0)]
    np.testing.assert_allclose(fitted_amplitude(noisy, mean, logstd).numpy(), best, atol=2e-4)


def test_a_fainter_rendering_fits_its_own_z_as_well(trained, tiny_particles):
    # standardised, a noisier particle carries less signal than the model was trained on:
    # the cost compares the rendering scaled to the particle, so contrast alone moves nothing
    model, config, _ = trained
    _, theta, shift, z = encode(model, config, tiny_particles.images)
    layout = model.binned_layout(2)
    with torch.no_grad():
        rendering, _ = model.decode(z, theta, shift, len(z), layout)
        full = map_cost(model, rendering, theta, shift, z, layout=layout)
        faint = map_cost(model, 0.4 * rendering, theta, shift, z, layout=layout)
        unscaled = model.fit_nll(0.4 * rendering, theta, shift, z, layout=layout)
    torch.testing.assert_close(faint, full, rtol=1e-4, atol=1e-3)
    assert (unscaled + 0.5 * (z**2).sum(1) > full + 0.05).all()  # a plain fit would differ
