"""One optimiser step, written so that a step over a global batch can be split across ranks.

The random numbers of a step (augmentation angles gamma, reparameterisation noise eps) are
drawn for the whole *global* batch from the per-epoch generator, in the order the
single-process loop has always drawn them, and each rank keeps the rows of its own images.
So the union of the ranks' work is exactly the single-process step, and the loss each rank
backpropagates is scaled such that DDP's gradient *average* is the global per-image mean.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from napari_spatial_vae.core.coords import warp_images
from napari_spatial_vae.core.losses import LossTerms
from napari_spatial_vae.core.model import SpatialVAE


@dataclass
class StepNoise:
    """Random numbers of one step for the rows a rank works on.

    Attributes
    ----------
    gamma
        ``(b,)`` augmentation angles in radians, or None without augmentation.
    eps
        ``(b, L)`` standard-normal reparameterisation noise.
    """

    gamma: torch.Tensor | None
    eps: torch.Tensor


def draw_noise(
    generator: torch.Generator,
    global_size: int,
    n_latent: int,
    augment: bool,
    rows: slice | torch.Tensor,
    device: torch.device,
) -> StepNoise:
    """Draw a global batch's noise and keep ``rows`` (this rank's images).

    The draws (``rand(B)`` for gamma, then ``randn(B, L)``) are what a single process
    draws for the same batch, so a distributed run consumes the same random stream.
    """
    gamma = None
    if augment:
        gamma = torch.rand(global_size, generator=generator, device=device) * (2.0 * math.pi)
        gamma = gamma[rows]
    eps = torch.randn((global_size, n_latent), generator=generator, device=device)
    return StepNoise(gamma, eps[rows])


def loss_terms(
    model: SpatialVAE,
    images: torch.Tensor,
    noise: StepNoise,
    freeze_z: bool,
    autocast: contextlib.AbstractContextManager | None = None,
    ctf: torch.Tensor | None = None,
    binning: int = 1,
) -> LossTerms:
    """Per-image ``-ELBO`` terms with given noise; the maths of :meth:`SpatialVAE.loss_terms`.

    Parameters
    ----------
    model
        The (unwrapped) model.
    images
        ``(b, C, H, W)`` this rank's images.
    noise
        Its :class:`StepNoise`.
    freeze_z
        Use ``z = 0`` (z-delay epochs).
    autocast
        Context the generator runs in (bf16 autocast or None for fp32). The encoder, the
        pose transform and the likelihood stay fp32.
    ctf
        ``(b, H, W // 2 + 1)`` each image's CTF filter (:class:`~.ctf.CtfBatches`), or None.
    binning
        Render and compare ``binning x binning``-binned images (coarse-to-fine training).
    """
    encoder_images = None
    if noise.gamma is not None:
        # one batched resampling; the encoder then predicts theta + gamma. The CTF acts in
        # the image frame, so the encoder's view (e.g. phase-flipped) is made before turning.
        view = model.encoder_view(images, ctf)
        encoder_images = warp_images(view, noise.gamma.to(images.dtype), None)
    return model.terms_from_noise(
        images, encoder_images, noise.gamma, noise.eps, freeze_z, autocast, ctf, binning
    )


def summed_terms(terms: LossTerms, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``[-elbo, recon, kl_theta, kl_shift, kl_z, kl_z1..kl_zZ]`` summed over images.

    Returns float64 ``(5 + Z,)``. ``weight`` ``(b,)`` masks out padding rows (0) without a
    host sync.
    """
    rows = [terms.neg_elbo, terms.recon, terms.kl_theta, terms.kl_shift, terms.kl_z]
    if terms.kl_z_dims is not None:
        rows += list(terms.kl_z_dims.T)
    stacked = torch.stack(rows)  # (5 + Z, b)
    if weight is not None:
        stacked = stacked * weight
    return stacked.detach().sum(dim=1).double()
