"""One optimiser step, written so that a step over a global batch can be split across ranks.

The random numbers of a step (augmentation angles gamma, reparameterisation noise eps) are
drawn for the whole *global* batch from the per-epoch generator, in the order the
single-process loop has always drawn them, and each rank keeps the rows of its own images.
So the union of the ranks' work is exactly the single-process step, and the loss each rank
backpropagates is scaled such that DDP's gradient *average* is the global per-image mean.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch

from napari_spatial_vae.core.coords import warp_images
from napari_spatial_vae.core.extract import background_mask
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
    encoder_noise
        ``(b, C, H, W)`` extra pixel noise for the encoder's view, in units of each
        particle's own noise (:func:`add_encoder_noise`), or None.
    """

    gamma: torch.Tensor | None
    eps: torch.Tensor
    encoder_noise: torch.Tensor | None = None


def draw_noise(
    generator: torch.Generator,
    global_size: int,
    n_latent: int,
    augment: bool,
    rows: slice | torch.Tensor,
    device: torch.device,
    encoder_noise: float = 0.0,
    image_shape: tuple[int, int, int] | None = None,
) -> StepNoise:
    """Draw a global batch's noise and keep ``rows`` (this rank's images).

    The draws (``rand(B)`` for gamma, then ``randn(B, L)``, then with ``encoder_noise`` > 0
    ``rand(B)`` levels and ``randn(B, C, H, W)`` pixels for ``image_shape`` ``(C, H, W)``)
    are what a single process draws for the same batch, so a distributed run consumes the
    same random stream; without encoder noise the stream is the one runs always drew.
    """
    gamma = None
    if augment:
        gamma = torch.rand(global_size, generator=generator, device=device) * (2.0 * math.pi)
        gamma = gamma[rows]
    eps = torch.randn((global_size, n_latent), generator=generator, device=device)
    pixels = None
    if encoder_noise > 0.0:
        if image_shape is None:
            raise ValueError("encoder noise needs the image shape")
        # each image its own level, uniform in [0, encoder_noise): the encoder meets every
        # SNR from the stack's own down to (1 + encoder_noise^2) times lower
        level = torch.rand(global_size, generator=generator, device=device) * encoder_noise
        pixels = torch.randn((global_size, *image_shape), generator=generator, device=device)
        pixels = (pixels * level[:, None, None, None])[rows]
    return StepNoise(gamma, eps[rows], pixels)


@functools.cache
def _background(size: int, device: torch.device) -> torch.Tensor:
    """``(size, size)`` bool on ``device``: RELION's background area (:func:`.background_mask`)."""
    return torch.from_numpy(background_mask(size)).to(device)


def background_std(images: torch.Tensor) -> torch.Tensor:
    """``(b,)`` noise level of square ``(b, C, S, S)`` particles: the std outside their circle.

    The circle is the one extraction normalises against (:func:`.background_mask`, a
    diameter of 75 % of the box, RELION's background area), so this measures the noise, not
    the particle: 0 for noise-free images.
    """
    outside = _background(images.shape[-1], images.device)
    return images[..., outside].flatten(1).std(dim=1)


def add_encoder_noise(
    view: torch.Tensor, noise: torch.Tensor, noise_std: torch.Tensor
) -> torch.Tensor:
    """The encoder's ``(b, C, H, W)`` view with extra white noise, at its own variance.

    ``noise`` ``(b, C, H, W)`` is in units of each particle's own noise ``noise_std``
    ``(b,)`` (:func:`background_std` of the view before any turn, whose corners are
    padding), so level L lowers the SNR (1 + L^2)-fold whatever the stack's SNR, and adds
    nothing to noise-free particles. The sum is scaled back to the view's variance so the
    encoder's input statistics (standardised particles) stay as they were.
    """
    spread = noise_std[:, None, None, None]
    added = spread.square() * noise.flatten(1).pow(2).mean(dim=1)[:, None, None, None]
    variance = view.flatten(1).var(dim=1)[:, None, None, None].clamp_min(1e-12)
    return (view + spread * noise) * torch.rsqrt(1.0 + added / variance)


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
    if noise.gamma is not None or noise.encoder_noise is not None:
        view = model.encoder_view(images, ctf)
        noise_std = None if noise.encoder_noise is None else background_std(view)
        if noise.gamma is not None:
            # one batched resampling; the encoder then predicts theta + gamma. The CTF acts in
            # the image frame, so the encoder's view (e.g. phase-flipped) is made before turning.
            view = warp_images(view, noise.gamma.to(images.dtype), None)
        if noise.encoder_noise is not None and noise_std is not None:
            # added after the turn, so it is white like a detector's (resampling smooths)
            view = add_encoder_noise(view, noise.encoder_noise, noise_std)
        encoder_images = view
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
