import math

import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from napari_spatial_vae.core.losses import (
    LossTerms,
    bernoulli_nll,
    fitted_residual,
    free_mean_rotation_kl,
    gaussian_nll,
    normal_kl,
    standard_normal_kl,
)

torch.manual_seed(0)
MU = torch.randn(7, 3) * 2
LOGSTD = torch.randn(7, 3) * 0.7


def test_standard_normal_kl_matches_torch_distributions():
    expected = kl_divergence(Normal(MU, LOGSTD.exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(standard_normal_kl(MU, LOGSTD), expected)


def test_normal_kl_with_scaled_prior_matches_torch_distributions():
    expected = kl_divergence(Normal(MU, LOGSTD.exp()), Normal(0.0, 0.4))
    torch.testing.assert_close(normal_kl(MU, LOGSTD, 0.4), expected)


def test_eq3_is_the_kl_to_a_prior_centred_on_the_posterior_mean():
    s = math.pi / 3
    logstd = LOGSTD[:, 0]
    expected = kl_divergence(Normal(MU[:, 0], logstd.exp()), Normal(MU[:, 0], s))
    torch.testing.assert_close(free_mean_rotation_kl(logstd, s), expected)
    # and the paper's closed form, written out
    sigma = logstd.exp()
    closed = -torch.log(sigma) + math.log(s) + sigma**2 / (2 * s**2) - 0.5
    torch.testing.assert_close(free_mean_rotation_kl(logstd, s), closed)


def test_eq3_does_not_penalise_the_mean_but_the_standard_kl_does():
    logstd = torch.zeros(2)
    assert free_mean_rotation_kl(logstd, 1.0)[0] == free_mean_rotation_kl(logstd, 1.0)[1]
    shifted = normal_kl(torch.tensor([0.0, 2.0]), logstd, 1.0)
    assert shifted[1] > shifted[0]


def test_gaussian_nll_matches_log_prob_summed_over_pixels():
    target, mean = torch.randn(4, 2, 9), torch.randn(4, 2, 9)
    logstd = torch.randn(4, 2, 9) * 0.3
    expected = -Normal(mean, logstd.exp()).log_prob(target).sum(dim=(1, 2))
    torch.testing.assert_close(gaussian_nll(target, mean, logstd), expected)
    unit = -Normal(mean, 1.0).log_prob(target).sum(dim=(1, 2))
    torch.testing.assert_close(gaussian_nll(target, mean, None), unit)


def test_bernoulli_nll_matches_log_prob():
    target = torch.rand(3, 1, 11).round()
    logits = torch.randn(3, 1, 11) * 3
    expected = -Bernoulli(logits=logits).log_prob(target).sum(dim=(1, 2))
    torch.testing.assert_close(bernoulli_nll(target, logits), expected)


def test_elbo_decomposition_adds_up():
    terms = LossTerms(*(torch.rand(5) for _ in range(4)))
    torch.testing.assert_close(terms.kl, terms.kl_theta + terms.kl_shift + terms.kl_z)
    torch.testing.assert_close(terms.neg_elbo, terms.recon + terms.kl)


def test_the_fitted_residual_ignores_scale_and_offset_but_not_a_negative_image():
    torch.manual_seed(0)
    mean = torch.randn(3, 2, 50)
    scale, offset = torch.tensor([0.3, 1.0, 4.0]), torch.tensor([2.0, -1.0, 0.0])
    exact = scale[:, None, None] * mean + offset[:, None, None]
    torch.testing.assert_close(fitted_residual(exact, mean), torch.zeros(3), atol=1e-4, rtol=0)
    noisy = exact + 0.5 * torch.randn_like(exact)
    residual = fitted_residual(noisy, mean)
    assert (residual > 0).all()
    # a rendering never fits turned negative: the scale is clamped at 0, leaving the whole
    # (centred) image as the residual
    centred = (-exact).flatten(1) - (-exact).flatten(1).mean(1, keepdim=True)
    torch.testing.assert_close(fitted_residual(-exact, mean), centred.pow(2).sum(1))
