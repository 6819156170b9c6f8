"""Which part of a flexible particle holds still: the frame its poses are measured in.

A model of a flexible particle measures each particle's rotation and shift against its own
template for that particle's z. Nothing in the objective fixes how those templates sit
relative to one another: the generator may turn its template for one conformation a little
and the encoder turn those particles back, with the same fit. Trained models settle on
a consensus: the whole particle overlaid as well as it can be, so when one domain swings,
the templates turn a part of its swing the other way and the "still" domain appears to
move. On the project's simulated hinges the inferred angle drifted from the simulator's
(measured on the body) by 10-28 degrees at either end of the motion while particles of the
same state were aligned to within 1-2 degrees (docs/results.md, "Which frame the angle is
measured in"). No criterion on the templates alone picked the body's frame there (the
consensus was the most self-similar), so the user says which part holds still: a mask
drawn on the reference template (z = 0, theta = 0, no shift: the middle image of an
odd-numbered traversal).

:func:`fit_pose_frame` finds, on a grid over z, the rotation ``phi`` and shift ``t`` that
make each template match the reference inside the mask,
``T_z(x R(phi) + t) ~ T_0(x)``; :meth:`PoseFrame.at` interpolates them for any z.
A particle rendered as ``T_z(x R(theta) + s)`` is then ``T'_z(x R(theta') + s')`` with the
template in the new frame ``T'_z(x) = T_z(x R(phi) + t)``, ``theta' = theta - phi`` and
``s' = (s - t) R(-phi)`` (:func:`to_frame`): the same images, the masked region still.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_spatial_vae.core.coords import rotation_matrices, wrap_angle
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.memory import COMPUTE_PIXELS
from napari_spatial_vae.core.model import SpatialVAE

# The grid the frame is fitted on (interpolated between its values), per z dimension: how
# far it reaches either side of 0 and its values per axis. The drift is smooth in z; the
# step (0.2 in 1-D, 0.5 in 2-D) is finer than z's spread over a motion (about 1), and a
# 2-D grid costs the square. Not the training z's range: one particle the encoder could not
# place stretched that to -21..21 on a kept run (docs/defaults.md, 2026-12-06).
FRAME_GRID_REACH = {1: 4.0, 2: 3.0}
FRAME_GRID_STEPS = {1: 41, 2: 13}
# The rotations searched for each grid value before refining: this far either side of the
# rotation found for its neighbour one step nearer z = 0 (the grid is searched outwards
# from the reference), so the frame follows the masked part continuously along z instead of
# jumping to another part that matches a little better where the templates blur
FRAME_FOLLOW_DEG = 30.0
FRAME_SEARCH_STEP_DEG = 3.0
# L-BFGS iterations that refine every grid value's rotation and shift together from the
# best searched angle
FRAME_REFINE_STEPS = 20
# renderings at once: the search renders at most COMPUTE_PIXELS pixels (as inference does),
# the refinement, which keeps the activations for its gradient, this many times fewer
FRAME_REFINE_MEMORY_FACTOR = 8
# the fewest modelled pixels a mask must cover to define a rotation, and the largest share
# of them: a mask of (nearly) everything is the model's own frame again, most likely the
# particles or the template handed over by mistake
FRAME_MIN_PIXELS = 8
FRAME_MAX_SHARE = 0.9


@dataclass(frozen=True)
class PoseFrame:
    """The rotation and shift that hold a masked region still, on a grid over z.

    Attributes
    ----------
    low, high
        ``(Z,)`` the grid's ends in each z dimension (Z = 1 or 2).
    turn
        ``(G,)`` or ``(G, G)`` radians ``phi`` per grid value (2-D: rows walk z2, columns z1).
    shift
        ``(G, 2)`` or ``(G, G, 2)`` coordinate units ``t`` per grid value.
    mask_pixels
        Modelled pixels inside the mask.
    image_shape
        ``(C, H, W)`` of the model it was fitted for.
    """

    low: torch.Tensor
    high: torch.Tensor
    turn: torch.Tensor
    shift: torch.Tensor
    mask_pixels: int
    image_shape: tuple[int, int, int]

    def check(self, model: SpatialVAE) -> None:
        """Raise :class:`DataError` in one line unless the frame fits ``model``'s z and box.

        A frame of another model's z would be read along the wrong axes, silently.
        """
        if model.config.z_dim != len(self.low) or tuple(model.image_shape) != self.image_shape:
            raise DataError(
                f"this frame was fitted for a model with z-dim {len(self.low)} and "
                f"{self.image_shape} (C, H, W) images; this one has z-dim "
                f"{model.config.z_dim} and {tuple(model.image_shape)}"
            )

    def at(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi`` ``(B,)`` and ``t`` ``(B, 2)`` at ``(B, Z)`` z (linear between grid values).

        z beyond the grid takes its edge's values. On z's device.
        """
        device = z.device
        z = z.to(self.low.device, torch.float32)
        unit = 2.0 * (z - self.low) / (self.high - self.low) - 1.0  # (B, Z) in -1..1
        table = torch.cat([self.turn[..., None], self.shift], dim=-1)  # (G[, G], 3)
        if unit.shape[1] == 1:
            table = table[None]  # one row: (1, G, 3)
            points = torch.stack([unit[:, 0], torch.zeros_like(unit[:, 0])], dim=-1)
        else:
            points = unit  # grid_sample's x walks columns (z1), y rows (z2)
        sampled = F.grid_sample(
            table.permute(2, 0, 1)[None],  # (1, 3, rows, columns)
            points[None, None],  # (1, 1, B, 2)
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )[0, :, 0].to(device)  # (3, B)
        return sampled[0], sampled[1:].T

    def describe(self) -> str:
        """One line: how far the frame turns along a traversal of each z axis (for logs)."""
        # core.infer renders in a frame, so it is imported here, not at the top
        from napari_spatial_vae.core.infer import traversal_values

        z_dim = len(self.low)
        walk = torch.as_tensor(traversal_values(9), dtype=torch.float32)
        z = torch.zeros(z_dim, len(walk), z_dim)
        for k in range(z_dim):  # one walk per axis, the others at 0
            z[k, :, k] = walk
        degrees = torch.rad2deg(self.at(z.reshape(-1, z_dim))[0])
        return (
            f"holding {self.mask_pixels} masked pixels still: the frame turns by "
            f"{float(degrees.min()):+.1f} to {float(degrees.max()):+.1f} degrees along the "
            "traversal"
        )


def to_frame(
    theta: torch.Tensor,
    shift: torch.Tensor | None,
    turn: torch.Tensor,
    frame_shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Poses in the frame of :func:`fit_pose_frame`: ``theta - phi``, ``(s - t) R(-phi)``.

    Parameters
    ----------
    theta, shift
        ``(B,)`` radians and ``(B, 2)`` coordinate units (None: a model without shifts).
    turn, frame_shift
        ``phi`` ``(B,)`` and ``t`` ``(B, 2)``: :meth:`PoseFrame.at` at each particle's z.
    """
    new_theta = wrap_angle(theta - turn)
    if shift is None:
        return new_theta, None
    new_shift = torch.einsum("bd,bde->be", shift - frame_shift, rotation_matrices(-turn))
    return new_theta, new_shift


def check_frame_model(model: SpatialVAE) -> None:
    """Raise :class:`DataError` in one line unless a frame can be fitted for ``model``."""
    if not model.config.infers_rotation:
        raise DataError("holding a part still needs a model that infers the rotation")
    if model.config.z_dim not in FRAME_GRID_STEPS:
        raise DataError(
            "holding a part still needs z-dim 1 or 2 (the frame is fitted on a grid over z); "
            f"this model has z-dim {model.config.z_dim}"
        )


def mask_weights(model: SpatialVAE, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(C * N,)`` weights of the modelled pixels from an ``(H, W)`` mask (nonzero: held still).

    Raises
    ------
    DataError
        When the mask is not the model's image size, or covers (almost) none or nearly all
        of its pixels.
    """
    channels, height, width = model.image_shape
    array = np.asarray(mask)
    if array.ndim != 2 or array.shape != (height, width):
        raise DataError(
            f"the mask must be one {height} x {width} image (the model's box), "
            f"got shape {array.shape}"
        )
    device = next(model.parameters()).device
    image = torch.as_tensor(array != 0, dtype=torch.float32, device=device)
    weights = model.targets(image.expand(1, channels, height, width)).reshape(-1)
    covered = int(weights.sum()) // channels
    if covered < FRAME_MIN_PIXELS:
        raise DataError(
            f"the mask covers {covered} of the model's pixels; paint at least "
            f"{FRAME_MIN_PIXELS} on the part of the particle that should hold still"
        )
    share = covered / (len(weights) // channels)
    if share > FRAME_MAX_SHARE:
        raise DataError(
            f"the mask covers {share:.0%} of the model's pixels; paint only the part of the "
            "particle that should hold still (nonzero pixels count as painted)"
        )
    return weights


def _grid_values(low: torch.Tensor, high: torch.Tensor, steps: int) -> torch.Tensor:
    """``(G, 1)`` or ``(G * G, 2)`` z values, rows walking z2 and columns z1 (2-D)."""
    axes = [torch.linspace(float(a), float(b), steps) for a, b in zip(low, high, strict=True)]
    if len(axes) == 1:
        return axes[0][:, None]
    rows, columns = torch.meshgrid(axes[1], axes[0], indexing="ij")
    return torch.stack([columns.reshape(-1), rows.reshape(-1)], dim=1)


def _masked_correlation(
    values: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``(B,)`` weighted Pearson correlation of ``(B, P)`` renderings with ``(P,)`` reference."""
    weights = weights / weights.sum()
    centred = values - (values * weights).sum(1, keepdim=True)
    ref = reference - (reference * weights).sum()
    covariance = (centred * ref * weights).sum(1)
    spread = (centred.square() * weights).sum(1) * (ref.square() * weights).sum()
    return covariance / spread.clamp_min(1e-12).sqrt()


def _render(
    model: SpatialVAE, z: torch.Tensor, turn: torch.Tensor, shift: torch.Tensor | None
) -> torch.Tensor:
    """``(B, C * N)`` templates of ``(B, Z)`` z at rotation ``turn`` and shift."""
    values = model.expected_values(model.decode(z, theta=turn, shift=shift)[0])
    return values.reshape(len(values), -1).float()


def fit_pose_frame(
    model: SpatialVAE,
    mask: np.ndarray | torch.Tensor,
    should_stop: Callable[[], bool] | None = None,
) -> PoseFrame:
    """The frame in which the region ``mask`` ``(H, W)`` of the reference template holds still.

    For each value of a grid over z: the rotation that best matches the template to the
    reference (z = 0) inside the mask (weighted correlation), found outwards from z = 0
    starting from each neighbour's (:func:`_tracked`). The model is not changed.

    ``should_stop`` is asked between rings of the grid.

    Raises
    ------
    DataError
        A model without rotation or without z, or with more than two latent dimensions,
        or a mask :func:`mask_weights` refuses.
    InterruptedError
        When ``should_stop`` returns True.
    """
    check_frame_model(model)
    z_dim = model.config.z_dim
    weights = mask_weights(model, mask)
    channels, height, width = model.image_shape
    device = weights.device
    high = torch.full((z_dim,), FRAME_GRID_REACH[z_dim])
    low = -high
    steps = FRAME_GRID_STEPS[z_dim]
    grid = _grid_values(low, high, steps).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _render(model, grid.new_zeros(1, z_dim), grid.new_zeros(1), None)[0]
        turn, shift = _tracked(model, grid, reference, weights, should_stop)
    finally:
        model.train(was_training)
    shape = (steps,) * z_dim
    return PoseFrame(
        low=low,
        high=high,
        turn=turn.reshape(shape).cpu(),  # not wrapped: interpolated between neighbours
        shift=shift.reshape(*shape, 2).cpu(),
        mask_pixels=int(weights.sum()) // model.image_shape[0],
        image_shape=(channels, height, width),
    )


def _tracked(
    model: SpatialVAE,
    grid: torch.Tensor,
    reference: torch.Tensor,
    weights: torch.Tensor,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G,)`` rotations and ``(G, 2)`` shifts that match each grid value to the reference.

    ``grid`` ``(G, Z)`` as :func:`_grid_values` orders it. Fitted ring by ring outwards from
    the centre (z = 0): each value starts from the pose of its neighbour one step nearer the
    centre, searches the rotation :data:`FRAME_FOLLOW_DEG` either side of it at that
    neighbour's shift, then refines rotation and shift together (:func:`_refined`). The
    masked part moves little between neighbours, so each start lies near its optimum.
    """
    z_dim = grid.shape[1]
    steps = FRAME_GRID_STEPS[z_dim]
    centre = steps // 2
    # (G, Z) position of each value on the grid, z1 first and varying fastest (the grid's order)
    position = torch.cartesian_prod(*[torch.arange(steps)] * z_dim).reshape(-1, z_dim).flip(-1)
    ring = (position - centre).abs().amax(dim=1).to(grid.device)
    # the row of the neighbour one step nearer the centre in every axis that is off it
    parent = ((position - (position - centre).sign()) * steps ** torch.arange(z_dim)).sum(1)
    parent = parent.to(grid.device)
    search_angles = torch.deg2rad(
        torch.arange(-FRAME_FOLLOW_DEG, FRAME_FOLLOW_DEG + 1e-6, FRAME_SEARCH_STEP_DEG)
    ).to(grid.device)
    turn, shift = grid.new_zeros(len(grid)), grid.new_zeros(len(grid), 2)
    pixels = model.image_shape[1] * model.image_shape[2]
    search_chunk = max(1, COMPUTE_PIXELS // pixels)
    refine_chunk = max(1, COMPUTE_PIXELS // (FRAME_REFINE_MEMORY_FACTOR * pixels))
    for r in range(int(ring.max()) + 1):
        if should_stop is not None and should_stop():
            raise InterruptedError("fitting the frame stopped")
        members = torch.nonzero(ring == r).squeeze(1)
        # the centre is its own parent: it starts from no rotation and no shift
        start_turn, start_shift = turn[parent[members]], shift[parent[members]]
        candidates = start_turn[:, None] + search_angles  # (M, K)
        with torch.no_grad():
            scores = torch.cat([
                _masked_correlation(_render(model, z, t, s), reference, weights)
                for z, t, s in zip(
                    grid[members].repeat_interleave(len(search_angles), 0).split(search_chunk),
                    candidates.reshape(-1).split(search_chunk),
                    start_shift.repeat_interleave(len(search_angles), 0).split(search_chunk),
                    strict=True,
                )
            ]).reshape(len(members), len(search_angles))  # fmt: skip
        searched = candidates.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
        # the values are independent problems: refined in parts that bound the memory
        for first in range(0, len(members), refine_chunk):
            rows = slice(first, first + refine_chunk)
            part = members[rows]
            turn[part], shift[part] = _refined(
                model, grid[part], reference, weights, searched[rows], start_shift[rows]
            )
    return turn, shift


def _refined(
    model: SpatialVAE,
    grid: torch.Tensor,
    reference: torch.Tensor,
    weights: torch.Tensor,
    turn: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M,)`` rotations and ``(M, 2)`` shifts refined together from the given ones.

    L-BFGS on the sum of every value's correlation: the values are independent, and a
    quasi-Newton step reaches each optimum in a few iterations where Adam's fixed rate
    circles it. A model without shifts keeps ``shift`` (zeros).
    """
    turn = turn.clone().requires_grad_(True)
    shift = shift.clone().requires_grad_(model.config.infers_translation)
    parameters = [turn, shift] if shift.requires_grad else [turn]
    optimiser = torch.optim.LBFGS(
        parameters, max_iter=FRAME_REFINE_STEPS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        cost = -_masked_correlation(_render(model, grid, turn, shift), reference, weights).sum()
        # gradients for the pose only: the generator's weights are left untouched
        gradients = torch.autograd.grad(cost, parameters)
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = gradient
        return cost.detach()

    with torch.enable_grad():
        optimiser.step(closure)
    return turn.detach(), shift.detach()
