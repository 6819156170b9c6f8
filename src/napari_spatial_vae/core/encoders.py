"""spatial-VAE inference networks: the paper's MLP and the rotation-equivariant encoder.

Latent layout (one vector per image, the same for every encoder): ``[theta?, u_x?, u_y?, z...]``
where theta is present when rotation is inferred, ``(u_x, u_y)`` when translation is, and
``u`` is the translation in units of its prior standard deviation (``shift = dx_scale * u``),
so every non-theta latent has a standard-normal prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from napari_spatial_vae.core.coords import (
    align_images,
    circular_mask,
    warp_images,
    wrap_angle,
)
from napari_spatial_vae.core.mlp import ACTIVATION_MODULES, make_mlp

# Keeps exp(logstd) finite early in training, when the encoder can output anything.
LOGSTD_RANGE = (-10.0, 5.0)


@torch.no_grad()
def _turn_z_rows(
    layer: nn.Linear, mu_start: int, logstd_start: int, rotation: torch.Tensor
) -> None:
    """Make the rows of ``layer`` that output z's mean and log std give them in turned axes.

    ``rotation`` ``(Z, Z)`` orthogonal, new axes as columns: the new mean is ``R^T mu``
    (exact, the rows are linear). A diagonal posterior has no exact diagonal form in turned
    axes; each new axis's log std becomes the ``R^2``-weighted mean of the old ones (exact
    where the old ones are equal, and the weights of each new axis sum to 1).
    """
    turn = rotation.to(layer.weight)
    n_z = turn.shape[0]
    for start, matrix in ((mu_start, turn.t()), (logstd_start, turn.square().t())):
        rows = slice(start, start + n_z)
        layer.weight[rows] = matrix @ layer.weight[rows]
        layer.bias[rows] = matrix @ layer.bias[rows]


@dataclass
class Posterior:
    """Diagonal Gaussian posterior in the latent layout of this module's docstring.

    Attributes
    ----------
    mu, logstd
        ``(B, L)``.
    """

    mu: torch.Tensor
    logstd: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample ``mu + std * eps``, ``(B, L)``."""
        eps = torch.randn(
            self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype
        )
        return self.mu + torch.exp(self.logstd) * eps


class MLPEncoder(nn.Module):
    """The paper's inference network: an MLP on the flattened image.

    Parameters
    ----------
    n_inputs
        ``C * H * W``.
    n_latent
        ``L``; the network outputs ``2 L`` numbers (means and log std).
    """

    def __init__(self, n_inputs: int, n_latent: int, hidden: int, num_layers: int, activation: str):
        super().__init__()
        self.net = make_mlp(n_inputs, hidden, 2 * n_latent, num_layers, activation)

    def forward(self, images: torch.Tensor) -> Posterior:
        """``(B, C, H, W)`` -> posterior over ``(B, L)``."""
        mu, logstd = self.net(images.flatten(1)).chunk(2, dim=1)
        return Posterior(mu, logstd.clamp(*LOGSTD_RANGE))

    @torch.no_grad()
    def init_pose_logstd(self, n_pose: int, value: float) -> None:
        """Set the initial log std of the first ``n_pose`` latents (theta, shift)."""
        output = self.net[-1]
        assert isinstance(output, nn.Linear)
        n_latent = output.out_features // 2
        output.bias[n_latent : n_latent + n_pose] = value

    def rotate_z(self, rotation: torch.Tensor, n_pose: int) -> None:
        """Report z in turned axes (``R^T z``; ``n_pose`` latents precede z)."""
        output = self.net[-1]
        assert isinstance(output, nn.Linear)
        n_latent = output.out_features // 2
        _turn_z_rows(output, n_pose, n_latent + n_pose, rotation)


@dataclass
class RotationSearch:
    """What the equivariant encoder says about the rotation in search mode.

    Attributes
    ----------
    attention
        ``(B, K)`` posterior probability of each rotation bin.
    candidates
        ``(K,)`` bin angles ``-phi_k``: with offset ``delta`` the candidate rotations of image
        ``b`` are ``candidates + delta_b``.
    """

    attention: torch.Tensor
    candidates: torch.Tensor


class EquivariantEncoder(nn.Module):
    """Rotation-equivariant inference network over ``K`` rotated copies of the input.

    One shared MLP looks at ``K`` copies of the image rotated by ``phi_k = 2 pi k / K`` and
    scores each; the copy rotated by ``phi_k`` looks like the template when
    ``theta = -phi_k``. The other latents come from the attention-pooled features, which are
    invariant to rotations of the input by multiples of ``2 pi / K``, except z with
    ``z_from_aligned``: a separate MLP reads it from the input resampled at the encoder's own
    pose (:meth:`aligned_view`). Two ways to read theta
    from the scores (in the spirit of TARGET-VAE's discrete rotation attention):

    * soft-argmax (``search=False``): theta is minus the attention-weighted circular mean of
      the copy angles, a single Gaussian latent;
    * search (``search=True``): the attention is a categorical posterior over the ``K`` bin
      angles and the theta slot of the posterior is a continuous offset ``delta`` within a bin
      (bounded to half a bin); the model marginalises the likelihood over the bins.

    Parameters
    ----------
    image_shape
        ``(C, H, W)``.
    n_latent
        ``L`` including theta (always inferred by this encoder, at index 0).
    num_rotations
        ``K``.
    search
        Search mode (see above).
    z_dim
        ``Z``: with ``z_from_aligned`` the last ``Z`` latents are not read from the pooled
        features but from the input aligned by the encoder's own pose estimate (theta, and
        the shift when ``n_shift`` is 2), through a separate MLP.
    n_shift
        0, or 2 when the shift is inferred (latents 1 and 2, scaled by ``dx_scale``).
    dx_scale
        Coordinate units per unit of the shift latent.
    """

    angles: torch.Tensor
    mask: torch.Tensor

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        n_latent: int,
        hidden: int,
        num_layers: int,
        activation: str,
        num_rotations: int,
        search: bool = False,
        z_from_aligned: bool = False,
        z_half_turn_invariant: bool = False,
        refine_pose: bool = False,
        z_dim: int = 0,
        n_shift: int = 0,
        dx_scale: float = 1.0,
    ):
        super().__init__()
        channels, height, width = image_shape
        self.num_rotations = num_rotations
        self.search = search
        self.n_shift = n_shift
        self.dx_scale = dx_scale
        self.z_half_turn_invariant = z_half_turn_invariant
        self.z_dim = z_dim
        # the aligned view also corrects the pose it was made with: the in-bin offset of
        # theta (search mode: the soft-argmax has no offset to correct), then the shift
        refines = z_from_aligned and refine_pose and z_dim > 0
        self.n_theta_correction = int(refines and search)
        self.n_correction = (self.n_theta_correction + n_shift) if refines else 0
        n_inputs = channels * height * width
        self.trunk = make_mlp(n_inputs, hidden, hidden, num_layers - 1, activation)
        self.trunk.append(ACTIVATION_MODULES[activation]())
        # no bias: a constant score changes nothing after the softmax, and its exactly-zero
        # gradient would let Adam amplify rounding noise into steps
        self.score = nn.Linear(hidden, 1, bias=False)
        # z from the aligned particle: its own MLP, mean and log std of each z dimension
        self.z_net = (
            make_mlp(n_inputs, hidden, 2 * z_dim + self.n_correction, num_layers, activation)
            if z_from_aligned and z_dim > 0
            else None
        )
        if self.z_net is not None and self.n_correction:
            # start from the first look's pose: the correction rows of the last layer at zero
            last = self.z_net[-1]
            assert isinstance(last, nn.Linear)
            with torch.no_grad():
                last.weight[2 * z_dim :] = 0.0
                last.bias[2 * z_dim :] = 0.0
        pooled_latents = n_latent - (z_dim if self.z_net is not None else 0)
        # theta's log std, the in-bin offset, then mean and log std of every other latent
        # read from the pooled features
        self.head = nn.Linear(hidden, 2 + 2 * (pooled_latents - 1))
        angles = 2.0 * math.pi * torch.arange(num_rotations) / num_rotations
        self.register_buffer("angles", angles, persistent=False)
        self.register_buffer(
            "mask", circular_mask(height, width).reshape(1, 1, height, width), persistent=False
        )

    def rotate_z(self, rotation: torch.Tensor, n_pose: int) -> None:
        """Report z in turned axes (``R^T z``; ``n_pose`` latents, theta first, precede z)."""
        if self.z_net is not None:
            output = self.z_net[-1]
            assert isinstance(output, nn.Linear)
            _turn_z_rows(output, 0, self.z_dim, rotation)
            return
        # the pooled head: theta's log std, the offset, then means and log stds of the rest
        n_rest = (self.head.out_features - 2) // 2
        first_z = 2 + n_pose - 1
        _turn_z_rows(self.head, first_z, first_z + n_rest, rotation)

    def _attend(
        self, images: torch.Tensor, half_turn: bool = False
    ) -> list[tuple[torch.Tensor, Posterior]]:
        """Attention ``(B, K)`` and the posterior with the in-bin offset in the theta slot.

        One ``(attention, posterior)`` pair, or with ``half_turn`` (and z from the aligned
        particle) two: the encoder's pose, then the same particle turned by 180 degrees about
        its centre (bins rolled by ``K / 2``, the shift negated, z and the pose correction
        read from the turned aligned particle).
        """
        batch = images.shape[0]
        k = self.num_rotations
        # (B*K, C, H, W): copy k of image b is images[b] rotated by angles[k], one grid_sample.
        copies = (
            warp_images(images.repeat_interleave(k, dim=0), self.angles.repeat(batch), None)
            * self.mask
        )
        features = self.trunk(copies.flatten(1)).reshape(batch, k, -1)
        attention = torch.softmax(self.score(features).squeeze(-1), dim=1)  # (B, K)
        head = self.head((attention[:, :, None] * features).sum(1))
        theta_logstd, offset, rest = head[:, :1], head[:, 1:2], head[:, 2:]
        rest_mu, rest_logstd = rest.chunk(2, dim=1)
        offset = torch.tanh(offset) * (math.pi / k)
        if self.z_net is None:
            mu = torch.cat([offset, rest_mu], dim=1)
            logstd = torch.cat([theta_logstd, rest_logstd], dim=1).clamp(*LOGSTD_RANGE)
            return [(attention, Posterior(mu, logstd))]
        aligned = self.aligned_view(images, attention, offset[:, 0], rest_mu)
        pooled = (offset, theta_logstd, rest_logstd)
        hypotheses = [(attention, self._posterior_from_aligned(aligned, rest_mu, *pooled))]
        if half_turn:
            # the pose a half turn away with the same centre: x R(theta + pi) - shift is
            # -(x R(theta) + shift), so that aligned view is this one flipped on both axes
            turned_mu = torch.cat([-rest_mu[:, : self.n_shift], rest_mu[:, self.n_shift :]], 1)
            turned = self._posterior_from_aligned(aligned.flip(-2, -1), turned_mu, *pooled)
            hypotheses.append((attention.roll(k // 2, dims=1), turned))
        return hypotheses

    def _posterior_from_aligned(
        self,
        aligned: torch.Tensor,
        rest_mu: torch.Tensor,
        offset: torch.Tensor,
        theta_logstd: torch.Tensor,
        rest_logstd: torch.Tensor,
    ) -> Posterior:
        """The posterior with z (and the pose correction) read from ``aligned`` ``(B, C, H, W)``.

        ``rest_mu`` / ``rest_logstd`` ``(B, .)``: the pooled features' shift (and any other
        non-z latent); ``offset``, ``theta_logstd`` ``(B, 1)``: the in-bin offset and its log std.
        """
        z_params, correction = self._read_z(aligned)
        z_mu, z_logstd = z_params.chunk(2, dim=1)
        if self.n_correction:
            # bounded like the in-bin offset: a refinement, not a second search
            turn = correction[:, : self.n_theta_correction]
            offset = offset + torch.tanh(turn).sum(1, keepdim=True) * (math.pi / self.num_rotations)
            shift_mu = rest_mu[:, : self.n_shift] + correction[:, self.n_theta_correction :]
            rest_mu = torch.cat([shift_mu, rest_mu[:, self.n_shift :]], dim=1)
        mu = torch.cat([offset, rest_mu, z_mu], dim=1)
        logstd = torch.cat([theta_logstd, rest_logstd, z_logstd], dim=1).clamp(*LOGSTD_RANGE)
        return Posterior(mu, logstd)

    @torch.no_grad()
    def aligned_view(
        self,
        images: torch.Tensor,
        attention: torch.Tensor,
        offset: torch.Tensor,
        pose_mu: torch.Tensor,
    ) -> torch.Tensor:
        """What z is read from with ``z_from_aligned``: ``images`` ``(B, C, H, W)`` aligned.

        The copies the pooled features come from are aligned only to a multiple of the bin
        width; a swinging domain looks like the left-over rotation, so z read from them
        follows the pose error. Here the particle is resampled once at the encoder's own
        theta (``(B,)`` offset plus the most probable of the ``(B, K)`` bins with search, else
        the soft-argmax) and shift (the first ``n_shift`` columns of ``pose_mu``, ``(B, .)``).
        No gradient: z must not bend the pose to make its own job easier.
        """
        theta = self._theta(attention, offset)
        shift = (
            pose_mu[:, : self.n_shift] * self.dx_scale
            if self.n_shift
            else images.new_zeros(len(images), 2)
        )
        return align_images(images, theta, shift) * self.mask

    def _read_z(self, aligned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and the pose correction from ``(B, C, H, W)`` aligned particles.

        Returns ``(B, 2 Z)`` means and log stds of z and ``(B, n_correction)`` corrections
        of theta and the shift (empty without ``refine_pose``).

        With ``z_half_turn_invariant`` z is the average over the particle and the particle
        turned by 180 degrees (an exact flip of both pixel axes about the image centre): a
        particle the encoder aligned upside down then gets the same z as one aligned the
        right way round. Without it, on a nearly symmetric template the generator can learn
        the flipped particle as a second template selected by z, and z describes the flip
        instead of the conformation; with it, the generator can instead turn its template
        upside down part-way along z, which z cannot see (both found in benchmarks,
        docs/defaults.md; off by default). The pose correction is read from the upright
        view only (a half turn would negate the shift's).
        """
        assert self.z_net is not None
        n_z = 2 * self.z_dim
        if not self.z_half_turn_invariant:
            out = self.z_net(aligned.flatten(1))
            return out[:, :n_z], out[:, n_z:]
        both = torch.cat([aligned, aligned.flip(-2, -1)])
        upright, turned = self.z_net(both.flatten(1)).chunk(2)
        return 0.5 * (upright[:, :n_z] + turned[:, :n_z]), upright[:, n_z:]

    def _theta(self, attention: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``(B,)`` theta read from the attention: best bin plus offset, or soft-argmax."""
        if self.search:
            return -self.angles[attention.argmax(dim=1)] + offset
        return torch.angle(self._resultant(attention))

    def _resultant(self, attention: torch.Tensor) -> torch.Tensor:
        """``(B,)`` complex attention-weighted mean of ``e^{-i phi_k}`` over the bins."""
        unit = torch.polar(torch.ones_like(self.angles), -self.angles)
        return (attention.to(unit.dtype) * unit).sum(1)

    def search_rotation(
        self, images: torch.Tensor, half_turn: bool = False
    ) -> list[tuple[Posterior, RotationSearch]]:
        """Search-mode output: posterior with the in-bin offset as theta, and the bins.

        One hypothesis, or two with ``half_turn`` (see :meth:`_attend`).
        """
        return [
            (posterior, RotationSearch(attention, -self.angles))
            for attention, posterior in self._attend(images, half_turn)
        ]

    def forward(self, images: torch.Tensor) -> Posterior:
        """``(B, C, H, W)`` -> posterior over ``(B, L)`` with theta as a single angle."""
        attention, posterior = self._attend(images)[0]
        return self.single_angle(attention, posterior)

    def single_angle(self, attention: torch.Tensor, posterior: Posterior) -> Posterior:
        """The posterior with theta as one angle instead of bins ``(B, K)`` plus offset.

        In search mode theta is the most probable bin's angle plus the offset, and its
        std combines the offset's std with the spread of the bin probabilities.
        """
        theta = self._theta(attention, posterior.mu[:, 0])
        if self.search:
            theta = wrap_angle(theta)
            # circular std of the bin distribution, sqrt(-2 ln R), combined with the offset's
            spread = -2.0 * torch.log(self._resultant(attention).abs().clamp(1e-6, 1.0))
            variance = torch.exp(2.0 * posterior.logstd[:, 0]) + spread
            theta_logstd = 0.5 * torch.log(variance)
        else:
            theta_logstd = posterior.logstd[:, 0]
        mu = torch.cat([theta[:, None], posterior.mu[:, 1:]], dim=1)
        logstd = torch.cat([theta_logstd[:, None], posterior.logstd[:, 1:]], dim=1)
        return Posterior(mu, logstd)

    @torch.no_grad()
    def init_pose_logstd(self, n_pose: int, value: float) -> None:
        """Set the initial log std of theta and of the next ``n_pose - 1`` latents (shift)."""
        n_rest = (self.head.out_features - 2) // 2
        self.head.bias[0] = value
        self.head.bias[2 + n_rest : 2 + n_rest + n_pose - 1] = value
