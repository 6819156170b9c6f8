"""The rotation-search objective against a direct computation over every bin.

A mutation audit found three broken objectives that trained and passed every other test:
the KL of the rotation bins dropped, the expectation over bins replaced by the best bin (no
longer a bound), and the candidate angles' sign flipped in training only. Each changes a
number computed here independently of the search code: the likelihood of every bin from the
plain decoder at ``theta = -2 pi k / K + offset`` (the angle inference reports for bin k).
"""

from __future__ import annotations

import math

import pytest
import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.losses import free_mean_rotation_kl
from napari_spatial_vae.core.model import SpatialVAE

K = 8
SHAPE = (1, 24, 24)


@pytest.fixture(scope="module")
def sharp_model() -> SpatialVAE:
    """A model whose likelihood and bin posterior both depend strongly on the rotation.

    At initialisation the generator is nearly flat and the attention nearly uniform, which
    would hide a wrong angle or a wrong expectation; scaling a few weights makes both sharp.
    """
    torch.manual_seed(0)
    model = SpatialVAE(
        ModelConfig(z_dim=1, hidden_dim=32, encoder_rotations=K, fit_noise=False), SHAPE
    )
    with torch.no_grad():
        model.generator.coord_layer.weight.mul_(3.0)
        model.generator.body[-1].weight.mul_(20.0)  # the output layer
        model.encoder.score.weight.mul_(30.0)
    return model


@torch.no_grad()
def test_search_objective_is_the_expectation_over_every_bin(sharp_model):
    model = sharp_model
    torch.manual_seed(1)
    z = torch.randn(4, 1)
    true_theta = torch.tensor([-2 * math.pi * 3 / K, 0.3, 2.0, -1.0])
    mean, _ = model.decode(z, true_theta, None)
    images = model.render(mean) + 0.05 * torch.randn(4, *SHAPE)
    eps = torch.zeros(4, model.n_latent)  # the sample is the posterior mean

    terms = model.terms_from_noise(images, None, None, eps)

    posterior, search = model.encoder.search_rotation(images * model.input_mask)[0]
    attention = search.attention  # (4, K)
    assert (attention.max(dim=1).values > 0.4).all()  # sharp enough to tell bins apart
    offset, shift, z_mean = model.split_latent(posterior.mu)
    targets = model.targets(images)
    nll = torch.stack(
        [
            model.reconstruction_nll(
                targets, model.decode(z_mean, offset - 2 * math.pi * k / K, shift)[0], None
            )
            for k in range(K)
        ],
        dim=1,
    )  # (4, K), rendered directly at each bin's angle
    assert (nll.max(dim=1).values - nll.min(dim=1).values > 100).all()
    expected_recon = (attention * nll).sum(dim=1)
    # the search resamples one rendering per image (bilinear): 0.2 % of the likelihood
    torch.testing.assert_close(terms.recon, expected_recon, rtol=2e-3, atol=0.0)
    expected_kl = (attention * torch.log(attention * K)).sum(dim=1) + free_mean_rotation_kl(
        posterior.logstd[:, 0], math.pi / K
    )
    torch.testing.assert_close(terms.kl_theta, expected_kl, rtol=1e-5, atol=1e-6)
    assert (terms.kl_theta > free_mean_rotation_kl(posterior.logstd[:, 0], math.pi / K)).all()


@torch.no_grad()
def test_training_and_inference_agree_on_the_angle_of_a_bin(sharp_model):
    # inference reports theta = (angle of the most probable bin) + offset; the bin angle the
    # objective rendered with must be that same angle, for the hypothesis (the encoder's
    # pose or its half turn, see the half-turn check) that both keep
    torch.manual_seed(2)
    images = torch.randn(6, *SHAPE)
    hypotheses = sharp_model.encoder.search_rotation(
        images * sharp_model.input_mask, sharp_model.checks_half_turns
    )
    posterior, search = sharp_model.better_hypothesis(hypotheses, sharp_model.targets(images))
    best = search.attention.argmax(dim=1)
    trained_angle = search.candidates[best] + posterior.mu[:, 0]
    reported = sharp_model.encode(images).mu[:, 0]
    difference = torch.remainder(trained_angle - reported + math.pi, 2 * math.pi) - math.pi
    assert difference.abs().max() < 1e-5
