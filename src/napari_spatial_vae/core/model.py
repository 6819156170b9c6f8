"""The spatial-VAE model: an encoder and a generator (:mod:`.encoders`, :mod:`.generators`),
the priors and the per-image negative ELBO, and the half-turn check.

The latent layout every encoder shares is in :mod:`.encoders`.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.coords import (
    rotation_matrices,
    transform_coordinates,
)
from napari_spatial_vae.core.ctf import apply_filter, crop_filter
from napari_spatial_vae.core.encoders import (
    LOGSTD_RANGE,
    EquivariantEncoder,
    MLPEncoder,
    Posterior,
    RotationSearch,
)
from napari_spatial_vae.core.generators import SpatialGenerator, VanillaGenerator
from napari_spatial_vae.core.layout import PixelLayout
from napari_spatial_vae.core.losses import (
    LossTerms,
    bernoulli_nll,
    fitted_amplitude,
    fitted_residual,
    free_mean_rotation_kl,
    gaussian_nll,
    normal_kl,
    standard_normal_kl,
)

if TYPE_CHECKING:  # posterior_z renders with this model: a runtime import would be circular
    from napari_spatial_vae.core.posterior_z import TrainingZ


# Pose posteriors start confident (std e^-3: 3 degrees, 0.05 of the shift prior). Starting
# near the prior instead makes the sampled poses pure noise, the generator learns a
# rotational/translational average, the pose is never used and its KL keeps it at the prior.
POSE_LOGSTD_INIT = -3.0


# nats (-ELBO per particle) by which the half-turned hypothesis must beat the encoder's own
# pose for the half-turn check to take it (docs/defaults.md)
HALF_TURN_MARGIN = 2.0


def why_not_binned(config: ModelConfig, image_shape: tuple[int, int, int]) -> str:
    """Why a model cannot render ``(C, H, W)`` images in 2 x 2 bins (``""`` where it can).

    Binning keeps the Gaussian likelihood's balance (the binned noise model is exact for
    independent pixel noise); it does not apply to Bernoulli pixels, to the vanilla
    generator (one output per pixel), to odd sizes or to boxes under 16 px.
    """
    _, height, width = image_shape
    reasons = [
        (config.likelihood != "gaussian", "bernoulli likelihood"),
        (config.vanilla, "vanilla generator"),
        (height % 2 or width % 2, f"odd box {height}x{width}"),
        (min(height, width) < 16, "box under 16 px"),
    ]
    return ", ".join(reason for applies, reason in reasons if applies)


def _rotated_back(posterior: Posterior, rotation_offset: torch.Tensor | None) -> Posterior:
    """The posterior of an image the encoder saw rotated by ``rotation_offset`` ``(B,)``.

    The encoder then predicts theta + gamma (theta is latent 0); None: unchanged.
    """
    if rotation_offset is None:
        return posterior
    mu = torch.cat([posterior.mu[:, :1] - rotation_offset[:, None], posterior.mu[:, 1:]], dim=1)
    return Posterior(mu, posterior.logstd)


def _take_turned(
    hypotheses: list[tuple[Posterior, RotationSearch]], turn: torch.Tensor
) -> tuple[Posterior, RotationSearch]:
    """Rows of the second (half-turned) hypothesis where ``turn`` ``(B,)``, else the first's."""
    (upright, search), (turned, turned_search) = hypotheses
    use_turned = turn[:, None]
    posterior = Posterior(
        torch.where(use_turned, turned.mu, upright.mu),
        torch.where(use_turned, turned.logstd, upright.logstd),
    )
    attention = torch.where(use_turned, turned_search.attention, search.attention)
    return posterior, RotationSearch(attention, search.candidates)


class SpatialVAE(nn.Module):
    """The full model: encoder, generator, priors and the per-image negative ELBO.

    Parameters
    ----------
    config
        The :class:`ModelConfig`.
    image_shape
        ``(C, H, W)`` of the training images.
    """

    input_mask: torch.Tensor

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        config.validate()
        self.config = config
        channels, height, width = (int(s) for s in image_shape)
        self.image_shape: tuple[int, int, int] = (channels, height, width)
        self.n_pose = int(config.infers_rotation) + 2 * int(config.infers_translation)
        self.n_latent = self.n_pose + config.z_dim
        # translation prior std in coordinate units (the image spans 2 units)
        self.dx_scale = 2.0 * config.dx_prior
        # z-dim 1: the training particles' z (core/posterior_z.TrainingZ), set at the end of
        # training and kept in the checkpoint; inference reads z on its grid with its prior
        self.training_z: TrainingZ | None = None

        # the full-resolution pixels; coarse-to-fine training asks for binned ones
        self.layout = PixelLayout(height, width, config.circular_mask, config.searches_rotation)
        self._binned_layouts: dict[tuple[int, str], PixelLayout] = {}
        input_mask = torch.zeros(height * width)
        input_mask[self.layout.pixel_index] = 1.0  # the encoder sees the modelled pixels
        self.register_buffer(
            "input_mask", input_mask.reshape(1, 1, height, width), persistent=False
        )

        n_out = channels * (2 if config.fit_noise else 1)
        args = (config.hidden_dim, config.num_layers, config.activation)
        if config.encoder == "equivariant":
            self.encoder: MLPEncoder | EquivariantEncoder = EquivariantEncoder(
                self.image_shape,
                self.n_latent,
                *args,
                config.encoder_rotations,
                search=config.searches_rotation,
                z_from_aligned=config.z_from_aligned,
                z_half_turn_invariant=config.z_half_turn_invariant,
                refine_pose=config.refine_pose,
                z_dim=config.z_dim,
                n_shift=2 * int(config.infers_translation),
                dx_scale=self.dx_scale,
            )
        else:
            self.encoder = MLPEncoder(channels * height * width, self.n_latent, *args)
        self.encoder.init_pose_logstd(self.n_pose, POSE_LOGSTD_INIT)
        if config.vanilla:
            self.generator: nn.Module = VanillaGenerator(
                config.z_dim, len(self.layout.pixel_index), n_out, *args
            )
        else:
            self.generator = SpatialGenerator(
                config.z_dim, n_out, *args, z_every_layer=config.z_every_layer
            )

    # -- pieces ---------------------------------------------------------------------------
    @property
    def pixel_index(self) -> torch.Tensor:
        """``(N,)`` row-major indices of the modelled pixels at full resolution."""
        return self.layout.pixel_index

    def binned_layout(self, binning: int) -> PixelLayout:
        """The modelled pixels of ``binning x binning``-binned images (1: :attr:`layout`).

        Built once per binning and device, kept outside the module's buffers (so state
        dicts and DDP's buffer broadcast see only the full-resolution layout).
        """
        if binning == 1:
            return self.layout
        device = self.layout.grid.device
        key = (binning, str(device))
        if key not in self._binned_layouts:
            _, height, width = self.image_shape
            self._binned_layouts[key] = PixelLayout(
                height, width, self.config.circular_mask, self.config.searches_rotation, binning
            ).to(device)
        return self._binned_layouts[key]

    @property
    def coarse_binning(self) -> int:
        """2 where this model's images can be rendered in 2 x 2 bins, else 1."""
        return 1 if why_not_binned(self.config, self.image_shape) else 2

    def rotate_z_axes(self, rotation: torch.Tensor) -> None:
        """Turn z's axes: the encoder reports ``z' = R^T z``, the generator reads ``z'``.

        ``rotation`` ``(Z, Z)`` orthogonal with the new axes as columns
        (:func:`.latent_axes.independence_rotation`). The prior is isotropic, so the model
        renders every particle as before; only z's posterior std per axis is approximate
        (see :func:`_turn_z_rows`).
        """
        self.encoder.rotate_z(rotation, self.n_pose)
        self.generator.rotate_z(rotation)  # type: ignore[operator]

    def encode(self, images: torch.Tensor, ctf: torch.Tensor | None = None) -> Posterior:
        """Posterior for ``(B, C, H, W)`` images (masked like the training input).

        ``ctf`` ``(B, H, W // 2 + 1)``: the images' CTF filters, for :meth:`encoder_view`.
        Each particle is also tried a half turn away where :attr:`reads_half_turns`, the two
        fits compared at the particle's own noise level (see :meth:`encode_with_turns`).
        """
        return self.encode_with_turns(images, ctf)[0]

    def encode_with_turns(
        self, images: torch.Tensor, ctf: torch.Tensor | None = None
    ) -> tuple[Posterior, torch.Tensor]:
        """:meth:`encode`'s posterior and ``(B,)`` bool: the particles read a half turn from
        the encoder's own pose (all False where :attr:`reads_half_turns` is not).

        The turned fit is taken where it is better by :data:`HALF_TURN_MARGIN` nats, each
        rendering scaled and offset to the particle, the noise at the particle's own level
        (:meth:`_own_noise_costs`).
        """
        view = self.encoder_view(images, ctf) * self.input_mask
        if not self.reads_half_turns:
            return self.encoder(view), torch.zeros(len(images), dtype=torch.bool)
        assert isinstance(self.encoder, EquivariantEncoder)
        hypotheses = self.encoder.search_rotation(view, half_turn=True)
        # compared in 2 x 2 bins where they apply, as training's check: a quarter of the
        # rendering, inference a third faster than at full size, the same choices on the
        # family's particles at SNR 0.5 and within 0.01 of Fisher-Lee at SNR 0.1 (docs/defaults.md)
        layout = self.binned_layout(self.coarse_binning)
        turn = self._prefers_half_turn(
            hypotheses, layout.targets(images), ctf, layout, None, own_noise=True
        )
        posterior, search = _take_turned(hypotheses, turn)
        return self.encoder.single_angle(search.attention, posterior), turn.cpu()

    @property
    def can_check_half_turns(self) -> bool:
        """Whether this architecture can try a particle a half turn away.

        It needs the rotation search (bins to roll) and z read from the aligned particle (so
        the turned particle gets its own z).
        """
        encoder = self.encoder
        return (
            isinstance(encoder, EquivariantEncoder) and encoder.search and encoder.z_net is not None
        )

    @property
    def checks_half_turns(self) -> bool:
        """Whether each particle is also tried a half turn away (``half_turn_check`` "on";
        training switches "auto" to "on" when the held-out particles call for it)."""
        return self.config.half_turn_check == "on" and self.can_check_half_turns

    @property
    def reads_half_turns(self) -> bool:
        """Whether reading particles (:meth:`encode`, so inference) tries each one a half
        turn away: unless ``half_turn_check`` is "off". A run on "auto" that never switched
        trained without the check, but a particle its encoder places upside down is still
        read the right way round when the turned fit is clearly better (docs/defaults.md,
        "The half turn checked when particles are read").
        """
        return self.config.half_turn_check != "off" and self.can_check_half_turns

    @torch.no_grad()
    def half_turn_fits_better(
        self, images: torch.Tensor, ctf: torch.Tensor | None = None, binning: int | None = None
    ) -> torch.Tensor | None:
        """``(B,)`` bool: which ``(B, C, H, W)`` images the half turn of the encoder's own
        pose fits better by :data:`HALF_TURN_MARGIN` nats.

        Compared in ``binning`` x ``binning`` bins; default 2 x 2 where they apply, like the
        check in training (a quarter of the cost); 1: at full size.

        With the check off, a share of these well above a percent says the model learned part
        of the particles upside down (:func:`~.metrics.half_turn_warning`). None where the
        architecture cannot tell (:attr:`can_check_half_turns`).
        """
        if not self.can_check_half_turns:
            return None
        assert isinstance(self.encoder, EquivariantEncoder)
        view = self.encoder_view(images, ctf) * self.input_mask
        hypotheses = self.encoder.search_rotation(view, half_turn=True)
        layout = self.binned_layout(self.coarse_binning if binning is None else binning)
        return self._prefers_half_turn(hypotheses, layout.targets(images), ctf, layout, None)

    def _hypothesis_point(
        self, posterior: Posterior, search: RotationSearch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """A hypothesis's point estimate: theta ``(B,)`` at its most probable bin plus the
        in-bin offset's mean, and the shift ``(B, 2)`` and z ``(B, Z)`` means (or None)."""
        theta = search.candidates[search.attention.argmax(dim=1)] + posterior.mu[:, 0]
        _, shift, z = self.split_latent(posterior.mu)
        return theta, shift, z

    @torch.no_grad()
    def _hypothesis_cost(
        self,
        posterior: Posterior,
        search: RotationSearch,
        targets: torch.Tensor,
        ctf: torch.Tensor | None,
        layout: PixelLayout,
        autocast: contextlib.AbstractContextManager | None,
    ) -> torch.Tensor:
        """``(B,)`` -ELBO of one hypothesis at its posterior mean and most probable bin.

        The reconstruction at the mean pose and z plus the KL of z and of the shift (the
        rotation's KL is the same for a hypothesis and its half turn).
        """
        theta, shift, z = self._hypothesis_point(posterior, search)
        _, kl_shift, kl_z_dims = self.kl_terms(posterior)
        cost = self.fit_nll(targets, theta, shift, z, ctf, layout, autocast) + kl_shift
        return cost if kl_z_dims is None else cost + kl_z_dims.sum(1)

    def fit_nll(
        self,
        targets: torch.Tensor,
        theta: torch.Tensor | None,
        shift: torch.Tensor | None,
        z: torch.Tensor | None,
        ctf: torch.Tensor | None = None,
        layout: PixelLayout | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        fit_amplitude: bool = False,
    ) -> torch.Tensor:
        """``-log p(y | theta, shift, z)`` of each particle at one pose and content, ``(B,)``.

        ``targets`` ``(B, C, N)``: the particles' modelled pixels in ``layout`` (default the
        full-resolution ones); ``theta`` ``(B,)`` radians, ``shift`` ``(B, 2)`` coordinate
        units, ``z`` ``(B, Z)``, each or None; ``ctf`` ``(B, H, W // 2 + 1)`` filters the
        rendering as in training. ``fit_amplitude``: scale each rendering to its particle
        first (:func:`.losses.fitted_amplitude`; Gaussian likelihood only). Differentiable
        (the inference-time refinement of z, :mod:`.refine`, follows its gradient).
        """
        mean, logstd = self._fit_rendering(len(targets), theta, shift, z, ctf, layout, autocast)
        if fit_amplitude and self.config.likelihood == "gaussian":
            mean = mean * fitted_amplitude(targets, mean, logstd)[:, None, None]
        return self.reconstruction_nll(targets, mean, logstd)

    def _fit_rendering(
        self,
        batch: int,
        theta: torch.Tensor | None,
        shift: torch.Tensor | None,
        z: torch.Tensor | None,
        ctf: torch.Tensor | None,
        layout: PixelLayout | None,
        autocast: contextlib.AbstractContextManager | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The float32 ``(B, C, N)`` mean (with ``ctf`` applied) and log std or None that a
        particle's fit compares it with (arguments as in :meth:`fit_nll`)."""
        layout = layout if layout is not None else self.layout
        with autocast or contextlib.nullcontext():
            mean, logstd = self.decode(z, theta, shift, batch, layout)
        mean = mean.float()
        logstd = None if logstd is None else logstd.float()
        if ctf is not None:
            mean = self.apply_ctf(mean, ctf, layout)
        return mean, logstd

    @torch.no_grad()
    def _own_noise_costs(
        self,
        hypotheses: list[tuple[Posterior, RotationSearch]],
        targets: torch.Tensor,
        ctf: torch.Tensor | None,
        layout: PixelLayout,
        autocast: contextlib.AbstractContextManager | None,
    ) -> list[torch.Tensor]:
        """``(B,)`` -log joint of each hypothesis at its mean and most probable bin, with the
        rendering scaled and offset to the particle and white noise at the particle's own level.

        The noise variance is the better hypothesis's residual per modelled value. The
        training objective's learned noise is left out: it varies with z, so on particles
        noisier than the training stack its log-determinant outweighs the data and a turned
        pose read at a blurred z (high predicted noise) wins; on ``tilted-hinge`` particles at
        SNR 0.1 that turned 43 % of them (docs/defaults.md). The prior of the shift and of z
        enters at the mean (the rotation's is the same for a pose and its half turn).
        """
        residuals, priors = [], []
        for posterior, search in hypotheses:
            theta, shift, z = self._hypothesis_point(posterior, search)
            mean, _ = self._fit_rendering(len(targets), theta, shift, z, ctf, layout, autocast)
            residuals.append(fitted_residual(targets, mean).double())
            # shift and z latents (after theta's in-bin offset) under their N(0, 1) prior
            priors.append(0.5 * posterior.mu[:, 1:].double().pow(2).sum(1))
        values = targets[0].numel()
        noise_var = torch.minimum(*residuals).clamp_min(1e-12) / values
        return [0.5 * r / noise_var + p for r, p in zip(residuals, priors, strict=True)]

    def _prefers_half_turn(
        self,
        hypotheses: list[tuple[Posterior, RotationSearch]],
        targets: torch.Tensor,
        ctf: torch.Tensor | None,
        layout: PixelLayout,
        autocast: contextlib.AbstractContextManager | None,
        own_noise: bool = False,
    ) -> torch.Tensor:
        """``(B,)`` bool: where the second (half-turned) hypothesis is clearly the better.

        Compared by the training objective (:meth:`_hypothesis_cost`), or with
        ``own_noise`` at each particle's own scale and noise level (:meth:`_own_noise_costs`;
        gaussian likelihood).
        """
        if own_noise and self.config.likelihood == "gaussian":
            costs = self._own_noise_costs(hypotheses, targets, ctf, layout, autocast)
        else:
            costs = [
                self._hypothesis_cost(p, s, targets, ctf, layout, autocast) for p, s in hypotheses
            ]
        # a particle is turned only when the turned fit is clearly better: while the template
        # is still nearly symmetric the two costs differ by noise, and choices that flip from
        # step to step train the encoder towards both bins at once
        return costs[1] < costs[0] - HALF_TURN_MARGIN

    def better_hypothesis(
        self,
        hypotheses: list[tuple[Posterior, RotationSearch]],
        targets: torch.Tensor,
        ctf: torch.Tensor | None = None,
        layout: PixelLayout | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> tuple[Posterior, RotationSearch]:
        """Per particle, the encoder's pose, or its half turn where that is clearly better.

        The half turn is kept where the training objective's cost (:meth:`_hypothesis_cost`)
        is lower by more than :data:`HALF_TURN_MARGIN` nats (reading particles compares at
        each particle's own noise level instead: :meth:`encode_with_turns`).

        Parameters
        ----------
        hypotheses
            One or two ``(posterior, search)`` pairs from
            :meth:`EquivariantEncoder.search_rotation`, posteriors ``(B, L)``.
        targets
            ``(B, C, N)`` the particles' modelled pixels in ``layout``.

        Returns
        -------
        posterior, search
            Rows taken from the better hypothesis (gradients flow into that one only).
        """
        if len(hypotheses) == 1:
            return hypotheses[0]
        layout = layout if layout is not None else self.layout
        turn = self._prefers_half_turn(hypotheses, targets, ctf, layout, autocast)
        return _take_turned(hypotheses, turn)

    def encoder_view(self, images: torch.Tensor, ctf: torch.Tensor | None) -> torch.Tensor:
        """What the encoder sees of ``(B, C, H, W)`` images with CTF filters ``ctf``.

        The images themselves, or with ``ctf_encoder="flip"`` and a CTF, the phase-flipped
        images (Fourier coefficients times the sign of the CTF).
        """
        if ctf is None or self.config.ctf_encoder == "raw":
            return images
        return apply_filter(images, torch.sign(ctf)[:, None].to(images.dtype))

    def split_latent(
        self, latent: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(B, L)`` -> theta ``(B,)``, shift in coordinate units ``(B, 2)``, z ``(B, Z)``."""
        theta = shift = z = None
        i = 0
        if self.config.infers_rotation:
            theta, i = latent[:, 0], 1
        if self.config.infers_translation:
            shift, i = latent[:, i : i + 2] * self.dx_scale, i + 2
        if self.config.z_dim > 0:
            z = latent[:, i:]
        return theta, shift, z

    def decode(
        self,
        z: torch.Tensor | None,
        theta: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        batch_size: int | None = None,
        layout: PixelLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Render the modelled pixels for a pose and content.

        Parameters
        ----------
        z
            ``(B, Z)`` or None.
        theta, shift
            ``(B,)`` radians and ``(B, 2)`` coordinate units, or None for 0.
        batch_size
            ``B`` when neither z, theta nor shift is given.
        layout
            The pixels to render (:meth:`binned_layout`); default the full-resolution ones.

        Returns
        -------
        mean : torch.Tensor
            ``(B, C, N)`` predicted mean (gaussian) or logits (bernoulli) at the N modelled
            pixels (the whole image, or the inscribed circle with ``circular_mask``).
        logstd : torch.Tensor or None
            ``(B, C, N)`` predicted log noise std with ``fit_noise``, else None.
        """
        layout = layout if layout is not None else self.layout
        coords = layout.grid
        if theta is not None or shift is not None:
            # poses stay fp32 under a bf16 autocast: a bf16 rotation moves pixels visibly
            with torch.autocast(device_type=coords.device.type, enabled=False):
                coords = transform_coordinates(
                    coords,
                    None if theta is None else theta.float(),
                    None if shift is None else shift.float(),
                )
        elif z is None:
            coords = coords.expand(batch_size or 1, -1, -1)
        output = self.generator(coords, z).transpose(1, 2)  # (B, n_out, N)
        return self._split_output(output, layout.binning)

    def render(self, mean: torch.Tensor) -> torch.Tensor:
        """Scatter ``(B, C, N)`` modelled pixels into ``(B, C, H, W)`` images (0 outside the mask).

        For the bernoulli likelihood pass probabilities, not logits.
        """
        return self.layout.scatter(mean)

    def expected_values(self, mean: torch.Tensor) -> torch.Tensor:
        """The generator's ``(B, C, N)`` ``mean`` output as expected pixel values (same shape)."""
        return torch.sigmoid(mean) if self.config.likelihood == "bernoulli" else mean

    def expected_image(self, mean: torch.Tensor) -> torch.Tensor:
        """Turn the generator's ``mean`` output into expected pixel values, ``(B, C, H, W)``."""
        return self.render(self.expected_values(mean))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The modelled pixels of ``(B, C, H, W)`` images, ``(B, C, N)``."""
        return self.layout.targets(images)

    # -- the objective ----------------------------------------------------------------------
    def kl_terms(
        self, posterior: Posterior
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """KL of theta and of the shift, each ``(B,)``, and of each z dimension, ``(B, Z)``.

        The last is None for a model without z.
        """
        mu, logstd = posterior.mu, posterior.logstd
        zeros = mu.new_zeros(mu.shape[0])
        kl_theta = kl_shift = zeros
        kl_z_dims = None
        i = 0
        if self.config.infers_rotation:
            if self.config.theta_kl == "free-mean":
                kl_theta = free_mean_rotation_kl(logstd[:, 0], self.config.theta_prior)
            else:
                kl_theta = normal_kl(mu[:, 0], logstd[:, 0], self.config.theta_prior)
            i = 1
        if self.config.infers_translation:
            kl_shift = standard_normal_kl(mu[:, i : i + 2], logstd[:, i : i + 2]).sum(1)
            i += 2
        if self.config.z_dim > 0:
            kl_z_dims = standard_normal_kl(mu[:, i:], logstd[:, i:])
        return kl_theta, kl_shift, kl_z_dims

    def reconstruction_nll(
        self, targets: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor | None
    ) -> torch.Tensor:
        """``-log p(y | theta, dx, z)`` per image, ``(B,)``."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_nll(targets, mean)
        return gaussian_nll(targets, mean, logstd)

    def loss_terms(
        self,
        images: torch.Tensor,
        encoder_images: torch.Tensor | None = None,
        rotation_offset: torch.Tensor | None = None,
        freeze_z: bool = False,
        generator: torch.Generator | None = None,
        ctf: torch.Tensor | None = None,
    ) -> LossTerms:
        """Per-image terms of ``-ELBO`` with one reparameterised sample.

        Parameters
        ----------
        images
            ``(B, C, H, W)`` training images (the reconstruction targets).
        encoder_images
            ``(B, C, H, W)`` what the encoder sees (:meth:`encoder_view` of ``images``
            rotated by ``rotation_offset`` for augmentation), default the view of ``images``.
        rotation_offset
            ``(B,)`` the augmentation angle gamma, subtracted from the predicted theta.
        freeze_z
            Use ``z = 0`` (the z-delay phase: learn pose before content).
        generator
            Random source for the reparameterisation noise (reproducibility).
        ctf
            ``(B, H, W // 2 + 1)`` what each image's data see of the CTF (see
            :meth:`terms_from_noise`), or None for images without a CTF.
        """
        eps = torch.randn(
            (images.shape[0], self.n_latent),
            generator=generator,
            device=images.device,
            dtype=images.dtype,
        )
        return self.terms_from_noise(
            images, encoder_images, rotation_offset, eps, freeze_z, ctf=ctf
        )

    def terms_from_noise(
        self,
        images: torch.Tensor,
        encoder_images: torch.Tensor | None,
        rotation_offset: torch.Tensor | None,
        eps: torch.Tensor,
        freeze_z: bool = False,
        autocast: contextlib.AbstractContextManager | None = None,
        ctf: torch.Tensor | None = None,
        binning: int = 1,
    ) -> LossTerms:
        """The ``-ELBO`` terms for given reparameterisation noise ``eps`` ``(B, L)``.

        The one implementation of the objective: :meth:`loss_terms` draws ``eps``, the
        training step (:mod:`.step`) draws it for a global batch and passes each rank's rows.
        ``autocast`` is the context the generator runs in (bf16 autocast or None); the
        encoder, the pose transform and the likelihood stay fp32.

        With ``ctf`` ``(B, H, W // 2 + 1)`` (rfft2 layout, :mod:`.ctf`) the generator's
        rendering at the particle's pose (every candidate rotation with rotation search) is
        filtered by that particle's CTF before the likelihood: the CTF acts in the image
        frame, after rotation and shift. The generator itself stays CTF-free.

        With ``binning`` b > 1 (coarse-to-fine training) the encoder still sees the
        full-size images, while the generator renders the centres of b x b bins and the
        likelihood compares them with the binned images (:class:`~.layout.PixelLayout`);
        a CTF then acts on the binned rendering through its low frequencies
        (:func:`~.ctf.crop_filter`).
        """
        layout = self.binned_layout(binning)
        if encoder_images is None:
            encoder_images = self.encoder_view(images, ctf)
        encoder_input = encoder_images * self.input_mask
        search = None
        if not self.config.infers_rotation:
            rotation_offset = None
        if self.config.searches_rotation:
            assert isinstance(self.encoder, EquivariantEncoder)
            hypotheses = self.encoder.search_rotation(encoder_input, self.checks_half_turns)
            hypotheses = [(_rotated_back(p, rotation_offset), s) for p, s in hypotheses]
            # the check compares 2 x 2 bins where they apply (a quarter of its cost; the
            # coarse phase trains on them anyway), else the pixels trained on
            check = self.binned_layout(max(binning, self.coarse_binning))
            posterior, search = self.better_hypothesis(
                hypotheses, check.targets(images), ctf, check, autocast
            )
        else:
            posterior = _rotated_back(self.encoder(encoder_input), rotation_offset)
        sample = posterior.mu + torch.exp(posterior.logstd) * eps
        theta, shift, z = self.split_latent(sample)
        if freeze_z and z is not None:
            z = torch.zeros_like(z)
        kl_theta, kl_shift, kl_z_dims = self.kl_terms(posterior)
        kl_z = kl_z_dims.sum(1) if kl_z_dims is not None else torch.zeros_like(kl_shift)
        targets = layout.targets(images)
        with autocast or contextlib.nullcontext():
            if search is None:
                mean, logstd = self.decode(z, theta, shift, images.shape[0], layout)
            else:
                mean, logstd = self.decode_candidates(z, theta, shift, search.candidates, layout)
        mean = mean.float()
        logstd = None if logstd is None else logstd.float()
        if ctf is not None:
            mean = self.apply_ctf(mean, ctf, layout)
        if search is None:
            recon = self.reconstruction_nll(targets, mean, logstd)
        else:
            batch, k = search.attention.shape
            expanded = targets[:, None].expand(-1, k, -1, -1).reshape(batch * k, *targets.shape[1:])
            nll = self.reconstruction_nll(expanded, mean, logstd).reshape(batch, k)
            attention = search.attention
            recon = (attention * nll).sum(dim=1)
            # KL of the bin posterior to the uniform prior over the K bins, plus the offset's
            kl_bins = (attention * torch.log(attention.clamp_min(1e-12) * k)).sum(dim=1)
            kl_theta = kl_bins + free_mean_rotation_kl(posterior.logstd[:, 0], math.pi / k)
        return LossTerms(recon, kl_theta, kl_shift, kl_z, kl_z_dims)

    def decode_candidates(
        self,
        z: torch.Tensor | None,
        offset: torch.Tensor | None,
        shift: torch.Tensor | None,
        candidates: torch.Tensor,
        layout: PixelLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Render each image at every candidate rotation ``candidates[k] + offset``.

        The generator runs once per image, at rotation ``offset``, on a canvas that covers
        every modelled pixel at any rotation (see :meth:`_init_render_canvas`); the ``K``
        candidates are exact rotations of that rendering (``image(x) = rendering(x
        R(candidate))``), one batched bilinear resampling.

        Parameters
        ----------
        z
            ``(B, Z)`` or None.
        offset
            ``(B,)`` in-bin rotation (radians).
        shift
            ``(B, 2)`` or None.
        candidates
            ``(K,)`` bin angles.
        layout
            The pixels to render (:meth:`binned_layout`); default the full-resolution ones.

        Returns
        -------
        mean, logstd
            ``(B * K, C, N)`` (row ``b * K + k``), as :meth:`decode`.
        """
        layout = layout if layout is not None else self.layout
        batch = offset.shape[0] if offset is not None else (z.shape[0] if z is not None else 1)
        with torch.autocast(device_type=layout.render_grid.device.type, enabled=False):
            coords = transform_coordinates(
                layout.render_grid,
                None if offset is None else offset.float(),
                None if shift is None else shift.float(),
            )
        output = self.generator(coords, z).transpose(1, 2).float()  # (B, n_out, Nr)
        rendering = output.new_zeros(
            batch, output.shape[1], layout.canvas_shape[0] * layout.canvas_shape[1]
        )
        rendering[:, :, layout.render_index] = output
        rendering = rendering.reshape(batch, -1, *layout.canvas_shape)
        # candidate k of pixel x reads the rendering at x R(candidate_k): one (K, N) sampling
        # grid shared by the batch, so the rendering is never copied K times
        k = candidates.shape[0]
        sample_at = torch.einsum("nd,kde->kne", layout.grid, rotation_matrices(candidates.float()))
        sample_at = (sample_at * layout.render_scale).expand(batch, -1, -1, -1)
        rotated = F.grid_sample(
            rendering, sample_at, mode="bilinear", padding_mode="zeros", align_corners=True
        )  # (B, n_out, K, N)
        output = rotated.transpose(1, 2).reshape(batch * k, rotated.shape[1], -1)
        return self._split_output(output, layout.binning)

    def apply_ctf(
        self, mean: torch.Tensor, ctf: torch.Tensor, layout: PixelLayout | None = None
    ) -> torch.Tensor:
        """Filter renderings of the modelled pixels by their image's CTF.

        Parameters
        ----------
        mean
            ``(B * K, C, N)`` modelled pixels, rows ``b * K + k`` (``K = 1`` without
            rotation search), as :meth:`decode` / :meth:`decode_candidates` return them.
        ctf
            ``(B, H, W // 2 + 1)`` full-size filters in rfft2 layout; image ``b``'s is used
            for all its ``K`` candidates (broadcast, never copied).
        layout
            The rendered pixels (:meth:`binned_layout`); default the full-resolution ones.
            For ``b x b`` bins the filter is cropped to the binned grid's frequencies.

        Returns
        -------
        torch.Tensor
            ``(B * K, C, N)``: the renderings (0 outside the modelled pixels) filtered over
            the whole (binned) box with one batched rfft2/irfft2, read back at the modelled
            pixels.
        """
        layout = layout if layout is not None else self.layout
        channels, _, width = self.image_shape
        images = layout.scatter(mean).reshape(ctf.shape[0], -1, channels, *layout.shape)
        transfer = crop_filter(ctf, width, layout.binning)[:, None, None].to(images.dtype)
        return layout.gather(apply_filter(images, transfer).reshape(-1, channels, *layout.shape))

    def _split_output(
        self, output: torch.Tensor, binning: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Generator output ``(B, n_out, N)`` -> mean ``(B, C, N)`` and log std or None.

        The generator's log std is the noise of one full-resolution pixel; the mean of a
        ``b x b`` bin has ``b`` times less (independent noise), so binned renderings get
        ``log std - log b``: the likelihood then weighs a smooth template as the
        full-resolution one does, and nothing jumps when training moves to full size.
        """
        channels = self.image_shape[0]
        mean, logstd = output[:, :channels], None
        if self.config.fit_noise:
            logstd = output[:, channels:].clamp(*LOGSTD_RANGE)
            if binning > 1:
                logstd = logstd - math.log(binning)
        elif binning > 1 and self.config.likelihood == "gaussian":
            logstd = torch.full_like(mean, -math.log(binning))
        if self.config.softplus_mean:
            mean = nn.functional.softplus(mean)
        return mean, logstd
