"""spatial-VAE networks: inference networks, the spatial and the vanilla generator.

Latent layout (one vector per image, the same for every encoder): ``[theta?, u_x?, u_y?, z...]``
where theta is present when rotation is inferred, ``(u_x, u_y)`` when translation is, and
``u`` is the translation in units of its prior standard deviation (``shift = dx_scale * u``),
so every non-theta latent has a standard-normal prior.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.coords import (
    align_images,
    circular_mask,
    rotation_matrices,
    transform_coordinates,
    warp_images,
    wrap_angle,
)
from napari_spatial_vae.core.ctf import apply_filter, crop_filter
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

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

# Keeps exp(logstd) finite early in training, when the encoder can output anything.
_LOGSTD_RANGE = (-10.0, 5.0)
# Pose posteriors start confident (std e^-3: 3 degrees, 0.05 of the shift prior). Starting
# near the prior instead makes the sampled poses pure noise, the generator learns a
# rotational/translational average, the pose is never used and its KL keeps it at the prior.
POSE_LOGSTD_INIT = -3.0


def make_mlp(n_in: int, hidden: int, n_out: int, num_layers: int, activation: str) -> nn.Sequential:
    """``num_layers`` hidden layers of width ``hidden``, then a linear output layer."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


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


@torch.no_grad()
def _turn_z_columns(layer: nn.Linear, rotation: torch.Tensor) -> None:
    """A layer reading old-axis z reads new-axis z: ``W z = W R z'``."""
    layer.weight.copy_(layer.weight @ rotation.to(layer.weight))


@dataclass
class Posterior:
    """Diagonal Gaussian posterior in the latent layout of the module docstring.

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
        return Posterior(mu, logstd.clamp(*_LOGSTD_RANGE))

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
        self.trunk.append(_ACTIVATIONS[activation]())
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
            logstd = torch.cat([theta_logstd, rest_logstd], dim=1).clamp(*_LOGSTD_RANGE)
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
        logstd = torch.cat([theta_logstd, rest_logstd, z_logstd], dim=1).clamp(*_LOGSTD_RANGE)
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


class SpatialGenerator(nn.Module):
    """``g([x, z]) -> p(y_x)``: an MLP applied to every (transformed) pixel coordinate.

    The first layer is split into a coordinate part and a ``z`` part, so ``W_z z`` is computed
    once per image instead of once per pixel (same function as concatenating ``[x, z]``).

    Performance notes (the maths is that of ``Linear -> activation`` throughout):

    * The first layer is one batched GEMM ``[x, y, 1] @ [W_x^T; b + W_z z]`` per image, so
      the ``(B, N, H)`` pre-activation is written once, with bias and ``z`` folded in. It
      always runs in fp32 (coordinates quantised to bf16 would move pixels by up to a tenth
      of a pixel); under an autocast context its output is then cast to the autocast dtype.
    * Activations whose backward needs only their output (tanh, ReLU, leaky ReLU) run in
      place on the GEMM output, saving one ``(B, N, H)`` buffer per layer.
    """

    def __init__(
        self,
        z_dim: int,
        n_out: int,
        hidden: int,
        num_layers: int,
        activation: str,
        z_every_layer: bool = False,
    ):
        super().__init__()
        self.coord_layer = nn.Linear(2, hidden)
        self.z_layer = nn.Linear(z_dim, hidden, bias=False) if z_dim > 0 else None
        self.body = make_mlp(hidden, hidden, n_out, num_layers - 1, activation)
        self.first_activation = _ACTIVATIONS[activation]()
        # z also shifts every later hidden layer: one (B, H) bias per image and layer
        self.z_hidden = nn.ModuleList(
            nn.Linear(z_dim, hidden, bias=False)
            for _ in range(num_layers - 1 if z_every_layer and z_dim > 0 else 0)
        )

    def rotate_z(self, rotation: torch.Tensor) -> None:
        """Read z in turned axes (every layer z enters)."""
        for layer in [self.z_layer, *self.z_hidden]:
            if layer is not None:
                _turn_z_columns(layer, rotation)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Evaluate the generator.

        Parameters
        ----------
        coords
            ``(B, N, 2)`` transformed coordinates, or ``(N, 2)`` shared by the batch.
        z
            ``(B, Z)``, or None when ``z_dim = 0``.

        Returns
        -------
        torch.Tensor
            ``(B, N, n_out)``.
        """
        hidden = self._first_layer(coords, z)
        layers = list(self.body)
        z_biases = iter(self.z_hidden)
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.Linear):
                z_bias = next(z_biases, None)
                if z_bias is not None and z is not None:
                    # the per-image bias b + W z folded into one batched GEMM, as in the
                    # first layer: no second (B, N, H) buffer for the sum
                    dtype = hidden.dtype
                    per_image = (layer.bias + z_bias(z.to(layer.weight.dtype)))[:, None, :]
                    hidden = torch.baddbmm(
                        per_image.to(dtype),
                        hidden,
                        layer.weight.t().to(dtype).expand(hidden.shape[0], -1, -1),
                    )
                else:
                    hidden = nn.functional.linear(hidden, layer.weight, layer.bias)
                following = layers[index + 1] if index + 1 < len(layers) else None
                if following is not None and _can_run_in_place(following):
                    hidden = _apply_in_place(following, hidden)
            elif not _can_run_in_place(layer):
                hidden = layer(hidden)
        return hidden

    def _first_layer(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Activated first layer, ``(B, N, H)``, computed in fp32."""
        device_type = coords.device.type
        low_precision = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else None
        )
        with torch.autocast(device_type=device_type, enabled=False):
            weight = self.coord_layer.weight  # (H, 2)
            offset = self.coord_layer.bias[None, :]  # (1, H)
            if self.z_layer is not None and z is not None:
                offset = offset + self.z_layer(z.float())  # (B, H)
            elif coords.dim() == 2:
                raise ValueError("shared coordinates need z to know the batch size")
            batch = coords.shape[0] if coords.dim() == 3 else offset.shape[0]
            coords = coords.float().expand(batch, *coords.shape[-2:])
            ones = coords.new_ones(*coords.shape[:2], 1)
            augmented = torch.cat([coords, ones], dim=2)  # (B, N, 3)
            matrix = torch.cat(
                [weight.t().expand(batch, -1, -1), offset.expand(batch, -1)[:, None, :]], dim=1
            )  # (B, 3, H)
            hidden = torch.bmm(augmented, matrix)
            if _can_run_in_place(self.first_activation):
                hidden = _apply_in_place(self.first_activation, hidden)
            else:
                hidden = self.first_activation(hidden)
        return hidden if low_precision is None else hidden.to(low_precision)


def _can_run_in_place(activation: nn.Module) -> bool:
    """Activations whose backward reads only their output, so overwriting the input is safe."""
    if isinstance(activation, nn.LeakyReLU):
        return activation.negative_slope > 0.0
    return isinstance(activation, (nn.Tanh, nn.ReLU))


def _apply_in_place(activation: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    if isinstance(activation, nn.Tanh):
        return hidden.tanh_()
    if isinstance(activation, nn.ReLU):
        return hidden.relu_()
    assert isinstance(activation, nn.LeakyReLU)
    return nn.functional.leaky_relu_(hidden, activation.negative_slope)


class VanillaGenerator(nn.Module):
    """The paper's baseline decoder: an MLP from ``z`` straight to all modelled pixels."""

    def __init__(
        self, z_dim: int, n_pixels: int, n_out: int, hidden: int, num_layers: int, activation: str
    ):
        super().__init__()
        self.n_pixels, self.n_out = n_pixels, n_out
        self.net = make_mlp(z_dim, hidden, n_pixels * n_out, num_layers, activation)

    def rotate_z(self, rotation: torch.Tensor) -> None:
        """Read z in turned axes."""
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        _turn_z_columns(first, rotation)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """``z (B, Z)`` -> ``(B, N, n_out)``; ``coords`` only fixes nothing but the signature."""
        assert z is not None
        return self.net(z).reshape(z.shape[0], self.n_out, self.n_pixels).transpose(1, 2)


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
            logstd = output[:, channels:].clamp(*_LOGSTD_RANGE)
            if binning > 1:
                logstd = logstd - math.log(binning)
        elif binning > 1 and self.config.likelihood == "gaussian":
            logstd = torch.full_like(mean, -math.log(binning))
        if self.config.softplus_mean:
            mean = nn.functional.softplus(mean)
        return mean, logstd
