"""Likelihoods, KL terms and the ELBO, all per image (summed over pixels and latents).

Every function returns one value per image so the caller can average, weight or report
them; nothing here reduces over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def standard_normal_kl(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, std^2) || N(0, 1))`` element-wise.

    Parameters
    ----------
    mu, logstd
        ``(B, D)`` posterior means and log standard deviations.

    Returns
    -------
    torch.Tensor
        ``(B, D)``.
    """
    return -logstd + 0.5 * (torch.exp(2.0 * logstd) + mu * mu) - 0.5


def normal_kl(mu: torch.Tensor, logstd: torch.Tensor, prior_std: float) -> torch.Tensor:
    """``KL(N(mu, std^2) || N(0, prior_std^2))`` element-wise, any shape."""
    variance_ratio = torch.exp(2.0 * logstd) / prior_std**2
    return math.log(prior_std) - logstd + 0.5 * (variance_ratio + mu * mu / prior_std**2) - 0.5


def free_mean_rotation_kl(logstd: torch.Tensor, prior_std: float) -> torch.Tensor:
    """The paper's eq. 3: KL for theta with no penalty on its mean.

    ``-log sigma + log s + sigma^2 / (2 s^2) - 1/2``: the Gaussian KL to ``N(mu, s^2)``, i.e.
    with the prior centred on the posterior mean, because a particle's mean in-plane angle is
    arbitrary and must not be pulled towards 0.

    Parameters
    ----------
    logstd
        ``(B,)`` log posterior standard deviation of theta.
    prior_std
        ``s``, the prior standard deviation in radians.

    Returns
    -------
    torch.Tensor
        ``(B,)``.
    """
    return -logstd + math.log(prior_std) + 0.5 * torch.exp(2.0 * logstd) / prior_std**2 - 0.5


def gaussian_nll(
    target: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor | None
) -> torch.Tensor:
    """Negative log-likelihood of a diagonal Gaussian, summed over channels and pixels.

    Parameters
    ----------
    target, mean
        ``(B, C, N)`` observed and predicted pixel values.
    logstd
        ``(B, C, N)`` predicted log noise standard deviation, or None for unit variance.

    Returns
    -------
    torch.Tensor
        ``(B,)`` in nats.
    """
    residual = target - mean
    if logstd is None:
        per_pixel = 0.5 * residual * residual + _HALF_LOG_TWO_PI
    else:
        per_pixel = 0.5 * (residual * torch.exp(-logstd)) ** 2 + logstd + _HALF_LOG_TWO_PI
    return per_pixel.flatten(1).sum(dim=1)


@torch.no_grad()
def fitted_amplitude(
    target: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor | None
) -> torch.Tensor:
    """Each image's best scale of the rendering, ``argmin_a -log N(target; a * mean, std)``.

    Per-image standardisation ties a particle's signal amplitude to its noise: the same
    particle standardised at SNR 0.1 has about half the signal it has at SNR 0.5 (ice and
    dose move it in real stacks too), and a rendering of the wrong amplitude pulls the
    fit of z towards renderings of lower contrast. The noise-weighted least-squares scale
    (clamped at 0) removes that; it is held fixed (no gradient) because at the optimum the
    gradient through it vanishes.

    Parameters
    ----------
    target, mean
        ``(B, C, N)`` observed and predicted pixel values.
    logstd
        ``(B, C, N)`` predicted log noise std, or None for unit variance.

    Returns
    -------
    torch.Tensor
        ``(B,)`` the scale of each image's rendering (1 where it matches the data).
    """
    weight = torch.ones_like(mean) if logstd is None else torch.exp(-2.0 * logstd)
    numerator = (target * mean * weight).flatten(1).sum(1)
    denominator = (mean * mean * weight).flatten(1).sum(1).clamp_min(1e-12)
    return (numerator / denominator).clamp_min(0.0)


def fitted_residual(target: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Each image's squared residual once the rendering is scaled and offset to it.

    The least-squares scale (clamped at 0: a rendering never fits turned negative) and
    offset, common to all channels, take up what per-image standardisation does to a
    particle noisier than the training stack (less signal, another background level), so
    renderings are compared by their shape alone, as :mod:`.posterior_z` compares them.

    Parameters
    ----------
    target, mean
        ``(B, C, N)`` observed and predicted pixel values.

    Returns
    -------
    torch.Tensor
        ``(B,)`` the sum of squared residuals.
    """
    observed, rendered = target.flatten(1), mean.flatten(1)
    observed = observed - observed.mean(1, keepdim=True)
    rendered = rendered - rendered.mean(1, keepdim=True)
    cross = (observed * rendered).sum(1)
    scale = (cross / (rendered * rendered).sum(1).clamp_min(1e-12)).clamp_min(0.0)
    return (observed - scale[:, None] * rendered).pow(2).sum(1)


def bernoulli_nll(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood (targets in 0..1), summed over channels and pixels.

    Parameters
    ----------
    target, logits
        ``(B, C, N)``.

    Returns
    -------
    torch.Tensor
        ``(B,)`` in nats.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_pixel.flatten(1).sum(dim=1)


@dataclass
class LossTerms:
    """Per-image terms of the negative ELBO; each tensor is ``(B,)``.

    ``-ELBO = recon + kl_theta + kl_shift + kl_z``. ``kl_z_dims`` ``(B, Z)`` splits ``kl_z``
    by latent dimension (how much each dimension carries; 0 nats: unused, collapsed), or is
    None for a model without z.
    """

    recon: torch.Tensor
    kl_theta: torch.Tensor
    kl_shift: torch.Tensor
    kl_z: torch.Tensor
    kl_z_dims: torch.Tensor | None = None

    @property
    def kl(self) -> torch.Tensor:
        """Total KL, ``(B,)``."""
        return self.kl_theta + self.kl_shift + self.kl_z

    @property
    def neg_elbo(self) -> torch.Tensor:
        """``-ELBO`` per image, ``(B,)``."""
        return self.recon + self.kl
