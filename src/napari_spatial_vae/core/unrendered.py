"""What the particles share that the model does not render: a folded z.

A one-dimensional z can lay a particle's motion out straight, or fold it so that two distinct
states read the same z (``out-of-plane`` s7 on 2026-12-07: z rose over five eighths of the
motion and fell back, at an ordinary test ELBO). The generator then renders the mean of
the two states at that z, and what tells them apart stays in every particle's residual. A
motion that z has no dimension for (two motions, z-dim 1) leaves a weaker trace, which the
warning's threshold does not reach (0.10 on ``two-hinges``).

The measure: each particle's residual (the particle less the model's expected image at its
inferred pose and z, with its CTF) is turned back into the template frame, and the variance
of those residuals along their strongest shared direction is compared with the same for the
residuals each turned by a random symmetry of the pixel grid (quarter turns and mirrors:
exact, no interpolation). Noise that looks the same in every direction (white, or coloured
but isotropic) has the same spectrum both ways; a variation the particles share in the
template frame is spread over several directions by the random symmetries and its strongest
direction loses most of its variance. The excess is reported against the variance of the
model's own renderings (pose removed) along their strongest direction: the variation z
renders. Measured in docs/defaults.md ("A warning for a folded z"): 1.04 on the folded run,
0.002-0.08 on the runs that did not fold.

The second strongest shared direction is measured the same way (its variance less the
null's second): a fold leaves one variation unrendered, the other branch of the motion, so
its second direction holds little; particles that vary in more ways than z renders (the
Hubble galaxies with z-dim 1) leave several, about as strong as the first. The warning at
the end of training words its advice by that (:func:`unrendered_warning`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_spatial_vae.core.coords import align_images, circular_mask
from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.infer import read_particles
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.posterior_z import TemplateCache

# training particles measured (the first ones of the training split): enough for the
# strongest direction of ~10^3 masked pixels to stand clear of the noise's spectrum
UNRENDERED_SAMPLE = 2048
# fewer particles than this give no measure (the spectrum's edge is then all noise)
UNRENDERED_MIN_PARTICLES = 256
# the share of z's rendered variation above which the run warns: 1.04 on a folded z, at most
# 0.08 on runs that were not folded (docs/defaults.md)
UNRENDERED_WARNING_SHARE = 0.25
# the second strongest unrendered direction, as a share of the first, from which the
# variation counts as spread over several directions, not one: at the end of training 0.0 on
# both folded runs measured (out-of-plane s7, s20's second attempt) and 1.43 on the Hubble
# galaxies with z-dim 1; a third of the way in, a fold's reached 0.68 (core/fold_restart.py
# asks more there) (docs/defaults.md, "Which way the end-of-run warning points")
SEVERAL_DIRECTIONS_RATIO = 0.5
# random starting directions of the low-rank decomposition, and its power iterations
_RANK = 8
_POWER_ITERATIONS = 6


@dataclass(frozen=True)
class UnrenderedVariation:
    """The strongest variation the residuals share, against the strongest one z renders.

    Attributes
    ----------
    residual
        Variance of the residuals along their strongest direction (a unit vector over the
        pixels inside the inscribed circle), less the same for the randomly turned residuals;
        0 when those are as strong. Model units squared.
    rendered
        Variance of the model's renderings (pose removed) along their strongest direction.
    particles
        How many particles were measured.
    runner_up
        The same for the residuals' second strongest direction (less the turned residuals'
        second); 0 when not measured or not stronger. Model units squared.
    """

    residual: float
    rendered: float
    particles: int
    runner_up: float = 0.0

    @property
    def share(self) -> float:
        """``residual / rendered``: the unrendered variation as a share of z's."""
        return self.residual / self.rendered if self.rendered > 0 else float("inf")

    @property
    def runner_up_ratio(self) -> float:
        """``runner_up / residual``: near 0 when one unrendered variation stands out (a
        fold), about 1 or more when several do (more kinds of variation than z has room for)."""
        return self.runner_up / self.residual if self.residual > 0 else 0.0

    @property
    def several_directions(self) -> bool:
        """Whether the unrendered variation is spread over several directions (the second
        at least :data:`SEVERAL_DIRECTIONS_RATIO` of the first), not one, as a fold leaves."""
        return self.runner_up_ratio >= SEVERAL_DIRECTIONS_RATIO


def _strongest_variances(rows: torch.Tensor, seed: int, count: int = 1) -> list[float]:
    """The ``count`` largest eigenvalues of the covariance of ``rows`` ``(n, P)``, largest
    first (randomised SVD)."""
    centred = rows - rows.mean(dim=0, keepdim=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
        torch.manual_seed(seed)
        rank = min(_RANK, *centred.shape)
        _, values, _ = torch.svd_lowrank(centred.cpu(), q=rank, niter=_POWER_ITERATIONS)
    return (values[:count] ** 2 / len(rows)).tolist()


def _random_symmetries(images: torch.Tensor, choices: np.ndarray) -> torch.Tensor:
    """Each ``(C, H, W)`` image of ``images`` ``(B, C, H, W)`` turned by a symmetry of the grid.

    ``choices`` ``(B,)`` in 0..7: bit 2 mirrors (a transpose), the rest counts quarter turns.
    A box that is not square keeps to its own symmetries (half turns and mirrors in x).
    """
    square = images.shape[-1] == images.shape[-2]
    out = images.clone()
    for choice in np.unique(choices):
        rows = torch.as_tensor(np.flatnonzero(choices == choice), device=images.device)
        turned = images[rows]
        if square:
            if choice >= 4:
                turned = turned.transpose(-1, -2)
            turned = torch.rot90(turned, int(choice % 4), dims=(-2, -1))
        else:
            if choice % 2:
                turned = turned.flip(-1)
            if choice % 4 >= 2:
                turned = torch.rot90(turned, 2, dims=(-2, -1))
        out[rows] = turned
    return out


def _masked_rows(images: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C * inside.sum())`` on the CPU: the pixels inside the mask."""
    return images.flatten(2)[..., inside.to(images.device)].flatten(1).cpu()


def shared_excesses(residuals: torch.Tensor, seed: int = 0, count: int = 2) -> list[float]:
    """Variance of ``residuals``' strongest shared directions beyond isotropic noise's.

    Parameters
    ----------
    residuals
        ``(N, C, H, W)`` residuals in the template frame (pose removed).
    seed
        Picks each residual's random symmetry and the low-rank decomposition's start.
    count
        How many directions, strongest first.

    Returns
    -------
    list of float
        For k = 1..count, the k-th largest eigenvalue of the residuals' covariance (pixels
        inside the inscribed circle) less the k-th of the same residuals each turned by a
        random symmetry of the grid; each at least 0.
    """
    inside = circular_mask(*residuals.shape[-2:])
    choices = np.random.default_rng(seed).integers(0, 8, len(residuals))
    shared = _strongest_variances(_masked_rows(residuals, inside), seed, count)
    turned = _masked_rows(_random_symmetries(residuals, choices), inside)
    null = _strongest_variances(turned, seed, count)
    return [max(s - n, 0.0) for s, n in zip(shared, null, strict=True)]


def residuals_at(
    model: SpatialVAE,
    images: torch.Tensor,
    ctf: torch.Tensor | None,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    z: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each particle less the model's expected image at its pose, and the pose removed.

    Parameters
    ----------
    images
        ``(B, C, H, W)`` preprocessed particles.
    ctf
        ``(B, H, W // 2 + 1)`` their CTFs, or None.
    theta, shift, z
        ``(B,)``, ``(B, 2)``, ``(B, Z)``: the poses and latents they are read at (None for a
        pose the model does not infer).

    Returns
    -------
    tuple of torch.Tensor
        The residuals in the template frame and the renderings of ``z`` at theta = 0, dx = 0
        (no CTF), both ``(B, C, H, W)``.
    """
    count = len(images)
    mean, _ = model.decode(z, theta, shift, batch_size=count)
    expected = model.expected_image(mean if ctf is None else model.apply_ctf(mean, ctf))
    residual = align_images(
        images - expected,
        theta if theta is not None else images.new_zeros(count),
        shift if shift is not None else images.new_zeros(count, 2),
    )
    rendering = model.expected_image(model.decode(z, None, None, count)[0])
    return residual, rendering


@torch.no_grad()
def measure_unrendered(
    model: SpatialVAE,
    feed: ImageFeeder,
    filters: CtfBatches | None,
    positions: torch.Tensor | None = None,
    batch: int = 64,
    seed: int = 0,
) -> UnrenderedVariation | None:
    """The strongest variation the particles at ``positions`` of ``feed`` share unrendered.

    ``positions`` None: the first :data:`UNRENDERED_SAMPLE` particles ``feed`` serves.

    Each particle is read as inference reads it
    (:func:`~napari_spatial_vae.core.infer.read_particles`: the encoder's pose and half-turn
    check, z read against the generator). None for a model without z (nothing
    to compare with) or fewer than :data:`UNRENDERED_MIN_PARTICLES` particles.
    """
    if positions is None:
        positions = torch.arange(min(UNRENDERED_SAMPLE, len(feed)))
    if model.config.z_dim == 0 or len(positions) < UNRENDERED_MIN_PARTICLES:
        return None
    was_training = model.training
    model.eval()
    residuals, renderings = [], []
    templates = TemplateCache()
    groups = list(positions.split(batch))
    for group, images in zip(groups, feed.batches_at(groups), strict=True):
        ctf = None if filters is None else filters.filters(group)
        reading = read_particles(model, images, ctf, templates=templates)
        assert reading.z is not None
        residual, rendering = residuals_at(
            model, images, ctf, reading.theta, reading.shift, reading.z
        )
        residuals.append(residual.cpu())
        renderings.append(rendering.cpu())
    model.train(was_training)
    rendered = torch.cat(renderings)
    inside = circular_mask(*rendered.shape[-2:])
    strongest, runner_up = shared_excesses(torch.cat(residuals), seed, count=2)
    return UnrenderedVariation(
        residual=strongest,
        rendered=_strongest_variances(_masked_rows(rendered, inside), seed)[0],
        particles=len(positions),
        runner_up=runner_up,
    )


def describe_share(share: float) -> str:
    """``share`` as the lines that report it say it: ``"104%"``, or ``"more than ten times"``
    (a z that renders next to nothing makes the share huge, and its digits would say nothing)."""
    return f"{share:.0%}" if share < 10 else "more than ten times"


def describe_many_variations(variation: UnrenderedVariation) -> str:
    """What the lines that report it (the fold check's, the end-of-run warning) say of a
    variation spread over several directions: the particles vary in more ways than z
    renders."""
    return (
        "the particles vary in more ways than z renders: what the model does not render is "
        f"{describe_share(variation.share)} as strong as what z renders, in several directions"
    )


def unrendered_warning(variation: UnrenderedVariation | None) -> str | None:
    """One line when the unrendered variation exceeds :data:`UNRENDERED_WARNING_SHARE`.

    Its advice follows the variation's shape: spread over several directions, the particles
    vary in more ways than z renders, which more latents answer and another seed does not;
    in one direction, z may be folded (another seed) or lack one dimension.
    """
    if variation is None or variation.share < UNRENDERED_WARNING_SHARE:
        return None
    if variation.several_directions:
        return (
            f"{describe_many_variations(variation)}; a larger --z-dim renders more (another "
            "--seed would not), see docs/defaults.md"
        )
    return (
        "the particles share a variation the model does not render, "
        f"{describe_share(variation.share)} "
        "as strong as the strongest one z renders: z may read two states as one (a folded "
        "z) or the particles need another dimension; train again with another --seed or a "
        "larger --z-dim, and see docs/defaults.md"
    )
