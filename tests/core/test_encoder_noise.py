"""Encoder noise: the encoder reads pose and z from noisier views; the generator's target stays."""

from __future__ import annotations

import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.step import (
    StepNoise,
    add_encoder_noise,
    background_std,
    draw_noise,
    loss_terms,
)
from napari_spatial_vae.core.train import train

CPU = torch.device("cpu")


def test_without_encoder_noise_the_random_stream_is_the_one_runs_always_drew():
    plain = draw_noise(torch.Generator().manual_seed(4), 6, 5, True, slice(None), CPU)
    off = draw_noise(torch.Generator().manual_seed(4), 6, 5, True, slice(None), CPU, 0.0, (1, 8, 8))
    on = draw_noise(torch.Generator().manual_seed(4), 6, 5, True, slice(None), CPU, 2.0, (1, 8, 8))
    assert off.encoder_noise is None and plain.encoder_noise is None
    # gamma and eps come first, so turning the noise on does not reshuffle them
    for draw in (off, on):
        assert torch.equal(draw.gamma, plain.gamma) and torch.equal(draw.eps, plain.eps)
    assert on.encoder_noise.shape == (6, 1, 8, 8)


def test_a_rank_slice_of_the_encoder_noise_is_the_matching_rows_of_the_global_draw():
    def draw(rows):
        return draw_noise(torch.Generator().manual_seed(1), 9, 4, True, rows, CPU, 1.5, (1, 6, 6))

    full, part = draw(slice(None)), draw(slice(1, None, 2))
    assert torch.equal(part.encoder_noise, full.encoder_noise[1::2])


def test_the_background_std_measures_the_noise_outside_the_particle():
    generator = torch.Generator().manual_seed(0)
    particle = torch.zeros(3, 1, 48, 48)
    particle[:, :, 12:36, 12:36] = 5.0  # inside the 36 px circle
    sigma = torch.tensor([0.0, 0.5, 2.0])
    noisy = particle + sigma[:, None, None, None] * torch.randn(3, 1, 48, 48, generator=generator)
    torch.testing.assert_close(background_std(noisy), sigma, rtol=0.1, atol=1e-6)


def test_encoder_noise_lowers_the_snr_by_one_plus_level_squared_at_the_views_variance():
    generator = torch.Generator().manual_seed(0)
    # one particle four times, so the levels are compared on the same signal and noise
    signal = torch.zeros(1, 1, 128, 128)
    signal[:, :, 32:96, 32:96] = torch.randn(1, 1, 64, 64, generator=generator)
    signal = signal.expand(4, 1, 128, 128)
    view = signal + 0.5 * torch.randn(1, 1, 128, 128, generator=generator)
    level = torch.tensor([0.0, 0.5, 1.0, 2.0])
    noise = torch.randn(4, 1, 128, 128, generator=generator) * level[:, None, None, None]
    noisy = add_encoder_noise(view, noise, background_std(view))
    torch.testing.assert_close(noisy[0], view[0])
    spread = noisy.flatten(1).std(dim=1)
    torch.testing.assert_close(spread, view.flatten(1).std(dim=1), rtol=0.03, atol=0.0)
    # the SNR falls (1 + level^2)-fold: regress each image on the particle's signal
    flat_signal, flat_noisy = signal.flatten(1), noisy.flatten(1)
    gain = (flat_noisy * flat_signal).sum(1) / flat_signal.square().sum(1)
    residual = flat_noisy - gain[:, None] * flat_signal
    snr = gain.square() * flat_signal.var(dim=1) / residual.var(dim=1)
    torch.testing.assert_close(snr[0] / snr, 1.0 + level**2, rtol=0.08, atol=0.0)
    # noise-free particles get no noise at all
    clean = add_encoder_noise(signal, noise, background_std(signal))
    torch.testing.assert_close(clean, signal)


def test_the_encoder_sees_the_noisy_view_and_the_generator_still_fits_the_images():
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(z_dim=1, hidden_dim=16, encoder_rotations=8), (1, 16, 16))
    images = torch.randn(5, 1, 16, 16)
    noise = draw_noise(torch.Generator().manual_seed(2), 5, model.n_latent, False, slice(None), CPU)
    extra = 2.0 * torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []
    search = model.encoder.search_rotation  # the default encoder's entry point

    def spy(encoder_input, half_turn=False):
        seen.append(encoder_input)
        return search(encoder_input, half_turn)

    model.encoder.search_rotation = spy
    zero = loss_terms(model, images, StepNoise(None, noise.eps, torch.zeros_like(extra)), False)
    clean = loss_terms(model, images, noise, False)
    torch.testing.assert_close(zero.neg_elbo, clean.neg_elbo)
    noisy = loss_terms(model, images, StepNoise(None, noise.eps, extra), False)
    view = add_encoder_noise(images, extra, background_std(images))
    torch.testing.assert_close(seen[-1], view * model.input_mask)
    # the likelihood compares the renderings with the images as they are, not the noisy view
    by_hand = model.terms_from_noise(images, view, None, noise.eps)
    torch.testing.assert_close(noisy.neg_elbo, by_hand.neg_elbo)
    assert not torch.allclose(noisy.kl_theta + noisy.kl_z, clean.kl_theta + clean.kl_z)


def test_a_run_with_encoder_noise_trains_and_records_it(tmp_path, tiny_particles, make_config):
    plain = train(make_config(epochs=2, encoder_noise=0.0), tiny_particles.images, tmp_path / "p")
    noisy = train(make_config(epochs=2, encoder_noise=2.0), tiny_particles.images, tmp_path / "n")
    plain_elbo, noisy_elbo = (
        [row["elbo"] for row in run.history if row["split"] == "train"] for run in (plain, noisy)
    )
    assert torch.isfinite(torch.tensor(noisy_elbo)).all()
    assert plain_elbo != noisy_elbo  # the setting reaches the training step
    assert noisy.config.encoder_noise == 2.0
    assert '"encoder_noise": 2.0' in (tmp_path / "n" / "config.json").read_text()
