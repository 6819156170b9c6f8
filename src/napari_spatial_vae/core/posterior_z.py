"""Each particle's posterior over a one-dimensional z, on a grid, near the encoder's pose.

The encoder's z is an amortised guess, and :mod:`.refine` moves it to the generator's mode.
With one latent the posterior itself is cheap to compute exactly: render the generator's
template for every z of a grid once, resample the templates at each particle's pose
(the rotation search resamples its candidates the same way), and weigh each z by the
particle's likelihood under the generator times a prior; between two grid values z's
template is taken as the blend of theirs (:data:`BLENDS_PER_STEP`), so a posterior narrower
than the grid's step is still read where it lies. The posterior *mean* is what is
reported: on noisy particles the likelihood in z is wide and often lopsided, and its mean
follows the conformation better than its mode (docs/defaults.md, "z read from its
posterior"). The posterior std is reported with it, in place of the encoder's. The
encoder's rotation is itself a guess: z's likelihood is summed over rotations a few degrees
either side of it (:data:`ROTATION_WINDOW_DEGREES`), each template turned about the
particle's centre. On request (``spatial-vae infer --search-rotation``) the rotation itself
is first searched on the whole circle, by the same likelihood summed over z
(:func:`likeliest_rotation`), for noisy particles the encoder places far off.

The grid and the prior are the training particles' own (:class:`TrainingZ`, computed at the
end of training and kept in the checkpoint): z's distribution over them (the mixture of the
encoder's posteriors, the aggregate posterior), on a grid spanning it. The model was trained
to place particles there, so a grid over N(0, 1) would be too coarse where a run packed its
conformations into a narrow range of z (a noise-free toy: 0.02 wide), and the aggregate
posterior is a better prior for a new particle of the same population than N(0, 1).

Two choices make the likelihood fit particles noisier than the training stack:

* each template is scaled and offset to its particle before the comparison: per-image
  standardisation gives a noisier particle less signal than the model was trained on;
* the noise is white at each particle's own level, its residual variance at its
  best-fitting z and rotation, so a model trained at SNR 0.5 applied to SNR 0.1 particles is not
  over-confident. (The learned per-pixel noise is left out: it varies with z, and its
  log-determinant then outweighs the data on noisy particles.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_spatial_vae.core.coords import pixel_grid, rotation_matrices, wrap_angle
from napari_spatial_vae.core.layout import PixelLayout
from napari_spatial_vae.core.losses import bernoulli_nll
from napari_spatial_vae.core.model import SpatialVAE

# grid values, and how far the grid reaches past the training particles' extreme means (in
# their typical posterior std)
Z_GRID_POINTS = 81
Z_GRID_REACH = 4.0
# the posterior is read on a grid this many times finer than the rendered one: between two
# grid values z's template is the blend of theirs, whose fit follows from the two templates'
# fits and their overlap (no more rendering or resampling). A posterior narrower than the
# grid's step is then read between grid values, not at the nearest one: a CTF run's posteriors
# (std 0.03) on a grid of step 0.5 (stretched by one particle the encoder could not place) read
# |Pearson(z, motion)| 0.963 at the grid values, 0.978 with the blends (docs/defaults.md)
BLENDS_PER_STEP = 8
# memory bounds: the values (particles x rotations x grid values x pixels) compared at once
# (~32 MB per temporary, 13 particles of 40 x 40 px), and the grid values rendered at once
VALUES_PER_CHUNK = 8_000_000
GRID_CHUNK = 16
# rotations (relative to the encoder's) z's likelihood is summed over, a uniform prior on
# them. The encoder's angle is a bin plus an offset of at most half a bin (5.6 degrees with
# 32 bins); summing over +-4 degrees raised |Pearson(z, motion)| on SNR 0.1 particles by
# 0.007-0.011 on four runs (1,000 particles each) and left SNR 0.5 within 0.002; a wider or
# finer window, or +-0.5 px of shift as well, gained no more (docs/defaults.md, "z read from
# its posterior")
ROTATION_WINDOW_DEGREES = (-4.0, 0.0, 4.0)
# pixels the kept canvas reaches past the poses of the batch it was rendered for, so the next
# batches' (a little further out) need no new rendering
CANVAS_MARGIN = 4
# the rotation search (``spatial-vae infer --search-rotation``): the whole circle about the
# encoder's angle (a half turn either side) in steps of 7.5 degrees; z is then read over the
# rotation window about the angle found, which spans the step (3.75-degree steps gave the
# same scores on out-of-plane s2 at twice the cost; docs/defaults.md)
SEARCH_STEP_DEGREES = 7.5
SEARCH_DEGREES = tuple(
    SEARCH_STEP_DEGREES * k
    for k in range(1 - round(180 / SEARCH_STEP_DEGREES), round(180 / SEARCH_STEP_DEGREES) + 1)
)
# the second, full-resolution look: about each of the binned look's best separate angles
# (peaks), these offsets in search steps
SEARCH_PEAKS = 2
FINE_STEPS = (-1.0, -0.5, 0.0, 0.5, 1.0)


@dataclass
class TrainingZ:
    """The training particles' z (z-dim 1): the grid inference reads z on, and its prior.

    Attributes
    ----------
    low, high
        The grid's ends: the training particles' z means, reaching :data:`Z_GRID_REACH` of
        their posterior stds further.
    log_density
        :data:`Z_GRID_POINTS` values: the log density of the mixture of the training
        particles' posteriors (the aggregate posterior) at each grid value, up to a constant.
    """

    low: float
    high: float
    log_density: list[float]

    def grid(self, device: torch.device | None = None) -> torch.Tensor:
        """``(G, 1)`` the z values the posterior is computed on."""
        return torch.linspace(self.low, self.high, len(self.log_density), device=device)[:, None]

    def log_prior(self, device: torch.device | None = None) -> torch.Tensor:
        """``(G,)`` the prior's log density at :meth:`grid`."""
        return torch.tensor(self.log_density, device=device)

    def fine_grid(self, device: torch.device | None = None) -> torch.Tensor:
        """``(F,)`` float64: the z values the posterior is read on, :data:`BLENDS_PER_STEP`
        per step of :meth:`grid` (``F = BLENDS_PER_STEP * (G - 1) + 1``)."""
        return _between_grid_values(self.grid(device)[:, 0].double())

    def fine_log_prior(self, device: torch.device | None = None) -> torch.Tensor:
        """``(F,)`` float64: the prior's log density at :meth:`fine_grid` (linear in between)."""
        return _between_grid_values(self.log_prior(device).double())

    @classmethod
    def from_dict(cls, values: object) -> TrainingZ:
        """Read back what :func:`dataclasses.asdict` wrote (ValueError in one line if malformed)."""
        try:
            low, high = float(values["low"]), float(values["high"])  # type: ignore[index]
            log_density = [float(v) for v in values["log_density"]]  # type: ignore[index]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed training z ({type(err).__name__}: {err})") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"training z grid from {low} to {high}")
        if len(log_density) < 2 or not all(math.isfinite(v) for v in log_density):
            raise ValueError("training z needs at least two finite log densities")
        return cls(low, high, log_density)

    @classmethod
    def from_density(cls, low: float, high: float, density: torch.Tensor) -> TrainingZ:
        """From the summed density ``(G,)`` on the grid from ``low`` to ``high``."""
        # floored far below the peak: a grid value no training particle came near is
        # improbable, not impossible (and its log stays finite in the checkpoint's JSON)
        log_density = torch.log(density.double().clamp_min(float(density.max()) * 1e-30))
        log_density = log_density - log_density.max()
        return cls(low, high, [round(float(v), 6) for v in log_density])


def summarise_training_z(mean: torch.Tensor, std: torch.Tensor) -> TrainingZ:
    """The :class:`TrainingZ` of training particles' encoder posteriors, ``(N, 1)`` each."""
    low, high = training_z_range(mean, std)
    return TrainingZ.from_density(low, high, training_z_density(mean, std, low, high))


def training_z_range(mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    """The grid's ends for posteriors ``(N, 1)``: the extreme means -+ :data:`Z_GRID_REACH`
    times the median std.

    The median, not each particle's own: a particle the encoder could not place (junk, an
    empty box) has a posterior as wide as the prior or wider (std 5.2 among stds of 0.03 in
    a CTF run), and would stretch the grid ten times past where the particles are.
    """
    if len(mean) == 0:
        raise ValueError("the training z of no particles")
    reach = Z_GRID_REACH * float(std.double().median().clamp_min(1e-6))
    return float(mean.min()) - reach, float(mean.max()) + reach


def training_z_density(
    mean: torch.Tensor, std: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """``(G,)`` float64: the posteriors' ``(N, 1)`` summed density at each grid value.

    Each posterior is at least one grid step wide: a mixture of spikes narrower than the
    step would put its mass between the grid values.
    """
    grid = torch.linspace(low, high, Z_GRID_POINTS, dtype=torch.float64)
    mean, std = mean[:, 0].double().cpu(), std[:, 0].double().cpu()
    width = torch.clamp(std, min=max((high - low) / (Z_GRID_POINTS - 1), 1e-6))
    scaled = (grid[:, None] - mean[None]) / width[None]
    return (torch.exp(-0.5 * scaled**2) / width[None]).sum(dim=1)


@torch.no_grad()
def posterior_z(
    model: SpatialVAE,
    images: torch.Tensor,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    training_z: TrainingZ,
    ctf: torch.Tensor | None = None,
    templates: TemplateCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of z for particles near their inferred pose (z-dim 1).

    The likelihood of each z is summed over the rotations of :data:`ROTATION_WINDOW_DEGREES`
    about the encoder's (the particle's centre held where the encoder put it).

    Parameters
    ----------
    model
        A trained model with ``z_dim`` 1.
    images
        ``(B, C, H, W)`` preprocessed particles (as the encoder saw them).
    theta, shift
        ``(B,)`` radians and ``(B, 2)`` coordinate units: each particle's pose, or None where
        the model infers none.
    training_z
        The grid and the prior (the model's ``training_z``, :mod:`.checkpoint`).
    ctf
        ``(B, H, W // 2 + 1)`` each particle's CTF filter (rfft2 layout), or None.
    templates
        Keeps the rendered templates for the next batch of the same model and training z
        (inference makes one per pass over a stack); default: rendered for this call only.

    Returns
    -------
    mean, std
        ``(B, 1)`` each.
    """
    grid = training_z.grid(images.device)
    fine = training_z.fine_grid(images.device)[:, None]  # (F, 1)
    log_prior = training_z.fine_log_prior(images.device)
    means, stds = [], []
    for log_likelihood in _window_log_likelihoods(
        model, images, theta, shift, ROTATION_WINDOW_DEGREES, grid, ctf, templates
    ):
        # summed over the rotations: (b, F)
        posterior = torch.softmax(torch.logsumexp(log_likelihood, dim=1) + log_prior, dim=1)
        first = posterior @ fine
        second = posterior @ fine**2
        means.append(first.float())
        stds.append((second - first**2).clamp_min(0.0).sqrt().float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def likeliest_rotation(
    model: SpatialVAE,
    images: torch.Tensor,
    theta: torch.Tensor,
    shift: torch.Tensor | None,
    training_z: TrainingZ,
    ctf: torch.Tensor | None = None,
    templates: TemplateCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each particle's rotation on the whole circle that the generator finds likeliest (z-dim 1).

    Not the training-time search over the encoder's bins (``rotation_search``): a search at
    inference, over the whole circle, scored by the particle's likelihood summed over z (the
    posterior's grid and prior), each angle's shift turned with it about the particle's
    centre (as in the rotation window). First the encoder's angle plus every multiple of
    :data:`SEARCH_STEP_DEGREES`, compared in 2 x 2 bins where the model allows (a quarter of
    the comparisons); then, at full resolution, the encoder's own angle against the
    :data:`SEARCH_PEAKS` best separate angles of the first look, each with the
    :data:`FINE_STEPS` about it (the bins blur a turn of one step, and templates read
    bilinearly off the canvas at bin centres only approximate the bins' means). A particle
    whose angle the encoder found keeps it; one it placed far off (a half turn, say, on a
    noisy particle) is moved to the angle that fits.

    Parameters
    ----------
    model, images, training_z, ctf, templates
        As for :func:`posterior_z`.
    theta, shift
        ``(B,)`` radians and ``(B, 2)`` coordinate units (or None): the encoder's pose.

    Returns
    -------
    theta, shift
        ``(B,)`` in [-pi, pi), as the encoder reports it, and ``(B, 2)`` (None where
        ``shift`` was): the likeliest angle and its shift.
    """
    grid = training_z.grid(images.device)
    log_prior = training_z.fine_log_prior(images.device)
    templates = templates if templates is not None else TemplateCache()  # one canvas for both

    def summed(window: torch.Tensor, layout: PixelLayout) -> torch.Tensor:
        """``(B, P)``: each of the particles' ``window`` angles' likelihood summed over z."""
        return torch.cat(
            [
                torch.logsumexp(log_likelihood + log_prior, dim=2)
                for log_likelihood in _window_log_likelihoods(
                    model, images, theta, shift, window, grid, ctf, templates, layout
                )
            ]
        )

    rows = torch.arange(len(images), device=images.device)
    circle = torch.tensor(SEARCH_DEGREES, device=images.device).expand(len(images), -1)
    coarse = summed(circle, model.binned_layout(model.coarse_binning))
    steps = torch.tensor(FINE_STEPS, device=images.device) * SEARCH_STEP_DEGREES
    fine = [torch.zeros(len(images), 1, device=images.device)]  # the encoder's own angle
    for _ in range(SEARCH_PEAKS):
        peak = coarse.argmax(dim=1)
        fine.append(circle[rows, peak][:, None] + steps)
        # the next peak a separate one: this one and its neighbours left out
        for neighbour in (-1, 0, 1):
            coarse[rows, (peak + neighbour) % circle.shape[1]] = -math.inf
    window = torch.cat(fine, dim=1)  # (B, 1 + peaks * steps)
    best = window[rows, summed(window, model.layout).argmax(dim=1)]
    angles, shifts = _rotation_window(theta, shift, best[:, None])
    assert angles is not None
    return wrap_angle(angles[:, 0]), None if shifts is None else shifts[:, 0]


def _window_log_likelihoods(
    model: SpatialVAE,
    images: torch.Tensor,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    window: tuple[float, ...] | torch.Tensor,
    grid: torch.Tensor,
    ctf: torch.Tensor | None,
    templates: TemplateCache | None,
    layout: PixelLayout | None = None,
) -> Iterator[torch.Tensor]:
    """Each particle's log-likelihood at every rotation of ``window`` and every z of the fine
    grid (:meth:`TrainingZ.fine_grid`: the grid values and the blends between them).

    Parameters
    ----------
    window
        The rotations about each particle's pose, in degrees: ``P`` for all, or ``(B, P)``
        each particle its own (one, the pose itself, for a model without a rotation).
    grid
        ``(G, 1)`` the z values.
    layout
        The pixels compared (:meth:`SpatialVAE.binned_layout`), default the full-resolution
        ones.
    model, images, theta, shift, ctf, templates
        As for :func:`posterior_z`.

    Yields
    ------
    torch.Tensor
        float64 ``(b, P, F)`` for consecutive chunks of the particles,
        ``F = BLENDS_PER_STEP * (G - 1) + 1``.
    """
    if model.config.z_dim != 1:
        raise ValueError(f"the grid posterior is for z-dim 1, this model has {model.config.z_dim}")
    layout = layout if layout is not None else model.layout
    targets = layout.targets(images)
    theta, shift = _rotation_window(theta, shift, window)  # (B, P), (B, P, 2)
    poses = 1 if theta is None else theta.shape[1]
    sample_at = _pose_points(
        layout,
        None if theta is None else theta.flatten(),
        None if shift is None else shift.flatten(0, 1),
    )  # (B * P, N, 2)
    if sample_at is None:  # no pose (or the vanilla VAE): the same templates for every particle
        shared, _ = model.decode(grid, None, None, len(grid), layout)
    else:
        canvas = (templates or TemplateCache()).canvas(model, grid, sample_at)
    chunk = max(1, VALUES_PER_CHUNK // (poses * len(grid) * targets[0].numel()))
    for start in range(0, len(images), chunk):
        rows = slice(start, start + chunk)
        if sample_at is None:  # the shared templates, once per particle: (b * G, C, N)
            mean = shared.repeat(len(targets[rows]), 1, 1)
        else:  # (b * P * G, C, N)
            mean = canvas.at(sample_at[start * poses : (start + chunk) * poses])
        if ctf is not None:
            mean = model.apply_ctf(mean, ctf[rows], layout)
        yield _log_likelihood(model, targets[rows], mean, poses)  # (b, P, F)


def _rotation_window(
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    window: tuple[float, ...] | torch.Tensor = ROTATION_WINDOW_DEGREES,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The poses near each particle's: ``(B, P)`` angles and ``(B, P, 2)`` shifts.

    Each of ``window``'s angles (degrees; the same P for every particle, or ``(B, P)`` each
    particle its own) added to ``theta`` ``(B,)``, the shift ``(B, 2)``
    turned with it so the particle's centre stays put (the pixel ``c`` the template's origin
    lands on solves ``c R(theta) + shift = 0``; for ``theta + delta`` the shift is then
    ``shift R(delta)``). Without a rotation, the pose as given (``P = 1``).
    """
    if theta is None:
        return None, None if shift is None else shift[:, None, :]
    delta = torch.deg2rad(torch.as_tensor(window, dtype=torch.float64, device=theta.device))
    delta = delta.expand(len(theta), -1)  # (B, P)
    angles = theta[:, None] + delta.to(theta.dtype)
    if shift is None:
        return angles, None
    # each particle's shift turned by each of its angles: (B, P, 2)
    turns = rotation_matrices(delta.flatten()).reshape(*delta.shape, 2, 2).to(shift.dtype)
    turned = torch.einsum("bi,bpij->bpj", shift, turns)
    return angles, turned


def _pose_points(
    layout: PixelLayout, theta: torch.Tensor | None, shift: torch.Tensor | None
) -> torch.Tensor | None:
    """``(B, N, 2)``: where each pose sends ``layout``'s pixels, ``x R(theta) + shift``.

    None without a pose: the templates are compared as rendered.
    """
    if theta is None and shift is None:
        return None
    batch = (theta if theta is not None else shift).shape[0]  # type: ignore[union-attr]
    points = layout.grid.expand(batch, -1, -1)
    if theta is not None:
        points = torch.bmm(points, rotation_matrices(theta))
    if shift is not None:
        points = points + shift[:, None, :]
    return points


class TemplateCache:
    """The templates of one model's grid, rendered once for every batch of an inference pass.

    The canvas is rendered again only when a batch's poses reach past it (then with a margin
    of :data:`CANVAS_MARGIN` pixels). The model and its training z must not change while it
    is used: make one per pass.
    """

    def __init__(self) -> None:
        self._canvas: _TemplateCanvas | None = None

    def canvas(
        self, model: SpatialVAE, grid: torch.Tensor, points: torch.Tensor
    ) -> _TemplateCanvas:
        """A canvas of ``grid`` ``(G, 1)``'s templates that holds ``points`` ``(B, N, 2)``."""
        reach = float(points.abs().max())
        kept = self._canvas
        if (
            kept is None
            or reach > kept.reach
            # another model or grid (a cache handed on by mistake) is rendered afresh
            or kept.model is not model
            or kept.grid.shape != grid.shape
            or not torch.equal(kept.grid, grid)
        ):
            kept = self._canvas = _TemplateCanvas(model, grid, reach, CANVAS_MARGIN)
        return kept


class _TemplateCanvas:
    """Every grid value's template rendered once on a canvas that reaches every pose's pixels.

    The generator runs once per grid value, on the image's pixel grid padded to hold every
    point within a given reach of the centre (+1 pixel for the bilinear reads, and a margin);
    a particle's templates are then one resampling of the canvas, as
    :meth:`SpatialVAE.decode_candidates` turns its candidates.
    """

    def __init__(self, model: SpatialVAE, grid: torch.Tensor, reach: float, margin: int = 0):
        """Templates of ``grid`` ``(G, 1)`` for points up to ``reach`` from the centre
        (coordinate units), and ``margin`` pixels further."""
        self.model, self.grid, self.n_grid = model, grid, len(grid)
        _, height, width = model.image_shape
        pad = max(0, math.ceil((reach - 1.0) * (max(height, width) - 1) / 2.0)) + 1 + margin
        rows, cols = height + 2 * pad, width + 2 * pad
        # the farthest point it holds (in x and y, coordinate units), one pixel kept for the
        # bilinear reads
        self.reach = 1.0 + 2.0 * (pad - 1) / (max(height, width) - 1)
        self.scale = torch.tensor(
            [(cols - 1) / (width - 1), (rows - 1) / (height - 1)], device=grid.device
        )
        canvas = pixel_grid(rows, cols, device=grid.device) * self.scale
        # (G, Nc, n_out), a few grid values at a time: the generator's activations are per point
        output = torch.cat(
            [
                model.generator(canvas.expand(len(values), -1, -1), values).float()
                for values in grid.split(GRID_CHUNK)
            ]
        )
        # (1, G * C, rows, cols): channel g * C + c, the mean's channels only (the learned
        # noise is not compared, and resampling it would double the cost)
        channels = model.image_shape[0]
        self.rendering = output[:, :, :channels].transpose(1, 2).reshape(1, -1, rows, cols)

    def at(self, points: torch.Tensor) -> torch.Tensor:
        """The templates' means at ``points`` ``(b, N, 2)``, ``(b * G, C, N)`` (row b * G + g)."""
        batch, n_pixels = points.shape[:2]
        sampled = F.grid_sample(
            self.rendering,
            (points / self.scale)[None],
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )  # (1, G * C, b, N)
        sampled = sampled.reshape(self.n_grid, -1, batch, n_pixels).permute(2, 0, 1, 3)
        # the model's own reading of its output's mean channels (a softplus where it has one;
        # the noise channels, absent here, come back empty)
        return self.model._split_output(sampled.reshape(batch * self.n_grid, -1, n_pixels))[0]


def _log_likelihood(
    model: SpatialVAE, targets: torch.Tensor, mean: torch.Tensor, poses: int
) -> torch.Tensor:
    """``(b, P, F)`` float64 log-likelihood of each particle at each of its ``P`` poses and
    each z of the fine grid (:meth:`TrainingZ.fine_grid`).

    ``targets`` ``(b, C, N)``; ``mean`` ``(b * P * G, C, N)``, row ``(b * P + p) * G + g``:
    the templates at the grid values.
    """
    batch = targets.shape[0]
    if model.config.likelihood == "bernoulli":
        # binary images: the log-likelihood at the grid values, linear in between
        expanded = targets.repeat_interleave(len(mean) // batch, dim=0)
        at_grid = -bernoulli_nll(expanded, mean).reshape(batch, poses, -1).double()
        return _between_grid_values(at_grid)
    observed = targets.flatten(1)
    templates = mean.reshape(batch, poses, -1, observed.shape[-1])  # (b, P, G, M)
    # white noise of the particle's own level: the learned per-pixel noise is left out, as it
    # varies with z and its log-determinant then outweighs the data on noisy particles
    # (tilted-hinge at SNR 0.1: |Pearson| 0.17 with it, 0.66 without; docs/defaults.md)
    chi2 = _fitted_chi2(observed, templates)
    # the particle's noise variance: its residual at its best-fitting template
    noise_var = chi2.flatten(1).min(dim=1).values / observed.shape[-1]
    return -0.5 * chi2 / noise_var.clamp_min(1e-12)[:, None, None]


def _fitted_chi2(observed: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """``(b, P, F)`` float64: the squared residual of each particle ``(b, M)`` against each
    template of the fine grid, scaled and offset to it (least squares).

    ``templates`` ``(b, P, G, M)``: at each of ``P`` poses, the grid values' templates. The
    fine grid's are those and, between grid values ``g`` and ``g + 1``, the blends
    ``(1 - t) T_g + t T_(g+1)`` for ``t = k / BLENDS_PER_STEP`` (``F = BLENDS_PER_STEP *
    (G - 1) + 1``). The scale is clamped at 0 (a template never fits turned negative); the
    offset takes up the background level, which per-image standardisation moves with the
    particle's SNR. Computed from sums over the pixels (each centred template against the
    centred particle, its sum of squares, and its overlap with the next grid value's), so no
    blend, fitted template or residual is ever formed.
    """
    centred = observed - observed.mean(-1, keepdim=True)  # (b, M)
    # each template about its own mean: sums of raw values would lose float32 precision to
    # the templates' common level (an unnormalised stack's background)
    templates = templates - templates.mean(-1, keepdim=True)  # (b, P, G, M)
    batch, poses, n_grid, n_pixels = templates.shape
    flat = templates.reshape(batch, poses * n_grid, n_pixels)
    cross = torch.bmm(flat, centred[:, :, None]).reshape(batch, poses, n_grid).double()
    squares = torch.linalg.vector_norm(templates, dim=-1).double() ** 2  # (b, P, G)
    # each grid value's template against the next one's: (b, P, G - 1)
    overlap = torch.linalg.vecdot(templates[:, :, :-1], templates[:, :, 1:]).double()
    # the blends: the cross term is linear in t, the sum of squares quadratic
    t = torch.arange(BLENDS_PER_STEP, dtype=torch.float64, device=cross.device) / BLENDS_PER_STEP
    blend_cross = cross[..., :-1, None] * (1 - t) + cross[..., 1:, None] * t  # (b, P, G-1, K)
    blend_spread = (
        squares[..., :-1, None] * (1 - t) ** 2
        + 2.0 * overlap[..., None] * t * (1 - t)
        + squares[..., 1:, None] * t**2
    )
    cross = torch.cat([blend_cross.flatten(2), cross[..., -1:]], dim=2)  # (b, P, F)
    spread = torch.cat([blend_spread.flatten(2), squares[..., -1:]], dim=2).clamp_min(1e-12)
    scale = (cross / spread).clamp_min(0.0)
    total = centred.double().pow(2).sum(-1)[:, None, None]  # (b, 1, 1)
    return (total - 2.0 * scale * cross + scale**2 * spread).clamp_min(0.0)


def _between_grid_values(values: torch.Tensor) -> torch.Tensor:
    """``(..., G)`` -> ``(..., F)``: linear in between, :data:`BLENDS_PER_STEP` per step."""
    t = torch.arange(BLENDS_PER_STEP, dtype=values.dtype, device=values.device) / BLENDS_PER_STEP
    between = values[..., :-1, None] * (1 - t) + values[..., 1:, None] * t
    return torch.cat([between.flatten(-2), values[..., -1:]], dim=-1)
