"""Turning z's axes towards independent factors at the end of training (z-dim 2 or more).

z's prior is isotropic, so the ELBO is (nearly) the same for any rotation of z: nothing ties
the latent axes to the particle's motions, and with two independent motions each axis
usually carries a mix of both (on the simulated `two-hinges` design, |Pearson| 0.62-0.75 per
axis while a linear map of both latents reads each motion at 0.91-0.96). After training, the
rotation of z closest to the independent components of the training particles' z
(independent component analysis on the whitened z, then the nearest orthogonal frame, so
that the prior stays what it was) is folded into the networks: the encoder reports z in
the new axes and the generator reads them, so every later step (inference, refinement,
traversals, the plugin) sees the turned axes and nothing else changes. Measured in
docs/defaults.md.

Adam's moment estimates are not turned with the weights: a finished run that is resumed for
more epochs continues from moments of the old axes (an approximation that was not measured),
and is turned again at its new end.
"""

from __future__ import annotations

import math

import torch

from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.model import SpatialVAE

# E[log cosh(x)] for a standard normal x: the log-cosh contrast's value for a Gaussian axis
_GAUSSIAN_LOGCOSH = 0.3745672075
# training particles whose z the rotation is chosen on (the first ones of the training split)
LATENT_AXES_SAMPLE = 4096
# axes whose z means spread less than this over the particles (a tenth of the prior's) carry
# next to nothing and are left as they are: turning a strong factor onto them would smear it
MIN_AXIS_SPREAD = 0.1
# candidate angles per pair of axes, spread over a quarter turn (finer gains nothing: the
# contrast is flat near its optimum)
_ANGLES_PER_QUARTER = 180


def _non_gaussianity(values: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` -> ``(...)``: |E[log cosh(u)] - E[log cosh(gaussian)]| of standardised u."""
    centred = values - values.mean(dim=-1, keepdim=True)
    unit = centred / centred.std(dim=-1, keepdim=True).clamp_min(1e-12)
    # log cosh(u) = |u| + log(1 + exp(-2|u|)) - log 2, stable for large |u|
    magnitude = unit.abs()
    logcosh = magnitude + torch.log1p(torch.exp(-2.0 * magnitude)) - math.log(2.0)
    return (logcosh.mean(dim=-1) - _GAUSSIAN_LOGCOSH).abs()


def independence_rotation(z: torch.Tensor, sweeps: int = 8) -> torch.Tensor:
    """The rotation of z's axes closest to the directions of independent factors.

    Independent component analysis restricted to what keeps the prior: the z values are
    whitened (so the contrast of a turn does not depend on the axes' spreads; axes whose
    means spread less than :data:`MIN_AXIS_SPREAD` are left out), Jacobi sweeps then turn each pair
    of whitened axes by the angle (within ±45°) that maximises their summed log-cosh
    non-Gaussianity, and the orthogonal frame closest to the factors' directions in z (an
    orthogonal Procrustes fit) is returned, its axes matched and signed to the trained ones.

    Parameters
    ----------
    z
        ``(N, Z)`` latent values of many particles (posterior means).
    sweeps
        Most passes over all pairs.

    Returns
    -------
    torch.Tensor
        ``(Z, Z)`` orthogonal ``R`` (float64): the new axes are its columns, ``z @ R`` the
        particles in them; the identity where the axes already follow independent factors.
    """
    values = z.double()
    informative = values.std(dim=0) >= MIN_AXIS_SPREAD
    rotation = torch.eye(values.shape[1], dtype=torch.float64)
    if int(informative.sum()) < 2:
        return rotation
    keep = torch.nonzero(informative).flatten()
    rotation[keep[:, None], keep[None, :]] = _independent_frame(values[:, keep], sweeps)
    return rotation


def _independent_frame(z: torch.Tensor, sweeps: int) -> torch.Tensor:
    """:func:`independence_rotation` among axes that all vary, ``(Z, Z)``."""
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    variances, axes = torch.linalg.eigh(covariance)
    spread = variances.clamp_min(1e-12 * float(variances.max().clamp_min(1e-300))).sqrt()
    unmixing = _jacobi_rotation(centred @ (axes / spread), sweeps)
    # the factors' directions in z: whitened sources s = (z - mean) E S^-1 Q, so
    # z - mean = s Q^T S E^T and factor k points along column k of E S Q
    directions = (axes * spread) @ unmixing
    directions = directions / directions.norm(dim=0).clamp_min(1e-300)
    left, _, right = torch.linalg.svd(directions)
    return _nearest_to_trained_axes(left @ right)


def _jacobi_rotation(values: torch.Tensor, sweeps: int) -> torch.Tensor:
    """``(Z, Z)`` orthogonal Q maximising the summed non-Gaussianity of ``values @ Q``."""
    n_axes = values.shape[1]
    rotation = torch.eye(n_axes, dtype=torch.float64)
    angles = torch.linspace(-math.pi / 4, math.pi / 4, _ANGLES_PER_QUARTER + 1, dtype=torch.float64)
    cos, sin = torch.cos(angles)[:, None], torch.sin(angles)[:, None]
    for _ in range(sweeps):
        moved = False
        for i in range(n_axes):
            for j in range(i + 1, n_axes):
                a, b = values[:, i], values[:, j]
                # (angles, N) every candidate turn of the pair at once
                new_a, new_b = cos * a + sin * b, -sin * a + cos * b
                score = _non_gaussianity(new_a) + _non_gaussianity(new_b)
                best = int(torch.argmax(score))
                if abs(float(angles[best])) < 1e-9:
                    continue
                moved = True
                givens = torch.eye(n_axes, dtype=torch.float64)
                c, s = float(cos[best]), float(sin[best])
                givens[i, i], givens[i, j], givens[j, i], givens[j, j] = c, -s, s, c
                values = values @ givens
                rotation = rotation @ givens
        if not moved:
            break
    return rotation


def _nearest_to_trained_axes(rotation: torch.Tensor) -> torch.Tensor:
    """Reorder and sign the columns so each new axis is the one nearest its trained axis."""
    n_axes = rotation.shape[0]
    order = [-1] * n_axes
    closeness = rotation.abs().clone()
    for _ in range(n_axes):
        # greedy: the closest remaining (trained axis, new axis) pair first
        flat = int(torch.argmax(closeness))
        axis, column = divmod(flat, n_axes)
        order[axis] = column
        closeness[axis, :] = -1.0
        closeness[:, column] = -1.0
    matched = rotation[:, order]
    signs = torch.where(matched.diagonal() < 0, -1.0, 1.0).to(matched)
    return matched * signs


@torch.no_grad()
def latent_posteriors(
    model: SpatialVAE,
    feed: ImageFeeder,
    filters: CtfBatches | None,
    positions: torch.Tensor,
    batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's z means and stds ``(n, Z)`` of the images at ``positions`` of ``feed``."""
    was_training = model.training
    model.eval()
    means, stds = [torch.zeros(0, model.config.z_dim)], [torch.zeros(0, model.config.z_dim)]
    groups = list(positions.split(batch))
    for group, images in zip(groups, feed.batches_at(groups), strict=True):
        ctf = None if filters is None else filters.filters(group)
        posterior = model.encode(images, ctf)
        _, _, z = model.split_latent(posterior.mu)
        _, _, z_std = model.split_latent(torch.exp(posterior.logstd))
        assert z is not None and z_std is not None
        means.append(z.float().cpu())
        stds.append(z_std.float().cpu())
    model.train(was_training)
    return torch.cat(means), torch.cat(stds)


def latent_means(
    model: SpatialVAE, feed: ImageFeeder, filters: CtfBatches | None, limit: int, batch: int = 64
) -> torch.Tensor:
    """``(n, Z)`` the encoder's z means of the first ``limit`` images ``feed`` serves."""
    return latent_posteriors(model, feed, filters, torch.arange(min(limit, len(feed))), batch)[0]


def align_latent_axes(
    model: SpatialVAE, feed: ImageFeeder, filters: CtfBatches | None = None, batch: int = 64
) -> torch.Tensor | None:
    """Turn a trained model's z axes towards independent factors (in place).

    Every process of a distributed run computes the same rotation (the same first images,
    the same arithmetic). ``batch``: images encoded at once (training passes its own batch
    size, which its memory plan allows). Returns the ``(Z, Z)`` rotation folded in, or None
    for z-dim < 2.
    """
    if model.config.z_dim < 2 or len(feed) < 2:
        return None
    z = latent_means(model, feed, filters, LATENT_AXES_SAMPLE, batch)
    rotation = independence_rotation(z)
    model.rotate_z_axes(rotation)
    return rotation


def describe_turn(rotation: torch.Tensor | None) -> str | None:
    """One line for the run's log: how far the axes turned (None below half a degree)."""
    if rotation is None:
        return None
    degrees = math.degrees(math.acos(min(1.0, float(rotation.diagonal().abs().min()))))
    if degrees < 0.5:
        return None
    return (
        f"z axes turned by up to {degrees:.0f} degrees towards independent factors "
        "(each axis now follows its own motion where the particles have several)"
    )
