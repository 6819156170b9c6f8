"""Pixel coordinates and the rigid transforms spatial-VAE applies to them.

Conventions (used everywhere in the package, see docs/conventions.md):

* Coordinates are in the *screen frame* of the displayed image: ``x`` grows to the right
  (columns), ``y`` grows downwards (rows), origin at the image centre, each axis spanning
  -1..1 from the centre of the first pixel to the centre of the last. This is exactly the
  normalised frame of :func:`torch.nn.functional.grid_sample` with ``align_corners=True``, so
  images and coordinates never disagree by a flip.
* A pose ``(theta, dx)`` maps a coordinate row vector ``x`` to ``x @ R(theta) + dx`` with
  ``R(theta) = [[cos, sin], [-sin, cos]]`` (the paper's form). The generator evaluated at the
  transformed coordinates renders ``image(x) = template(x @ R(theta) + dx)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Return the coordinates of every pixel, row-major.

    Parameters
    ----------
    height, width
        Image size in pixels.

    Returns
    -------
    torch.Tensor
        ``(height * width, 2)`` coordinates ``(x, y)`` in -1..1, ``x`` to the right and ``y``
        downwards; row ``i * width + j`` is pixel ``(i, j)``.
    """
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def inside_unit_disk(coords: torch.Tensor) -> torch.Tensor:
    """Boolean ``(N,)``: which ``(N, 2)`` coordinates lie inside the circle of radius 1."""
    return coords.pow(2).sum(dim=1) <= 1.0 + 1e-6


def circular_mask(height: int, width: int, device=None) -> torch.Tensor:
    """Boolean ``(height * width,)`` mask of the pixels inside the inscribed circle (radius 1)."""
    return inside_unit_disk(pixel_grid(height, width, device=device))


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Angles in radians, any shape, into ``[-pi, pi)``: the range theta is reported in."""
    return torch.remainder(theta + math.pi, 2.0 * math.pi) - math.pi


def rotation_matrices(theta: torch.Tensor) -> torch.Tensor:
    """``R(theta) = [[cos, sin], [-sin, cos]]`` for each angle.

    Parameters
    ----------
    theta
        ``(B,)`` angles in radians.

    Returns
    -------
    torch.Tensor
        ``(B, 2, 2)``; ``x @ R`` rotates the row vector ``x`` by ``+theta`` (from +x to +y).
    """
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)


def transform_coordinates(
    coords: torch.Tensor, theta: torch.Tensor | None, shift: torch.Tensor | None
) -> torch.Tensor:
    """Apply ``x @ R(theta) + shift`` to a shared coordinate grid, one pose per image.

    Parameters
    ----------
    coords
        ``(N, 2)`` grid shared by the batch (or ``(B, N, 2)``).
    theta
        ``(B,)`` rotations in radians, or None for no rotation.
    shift
        ``(B, 2)`` translations in coordinate units (1 = half the image width), or None.

    Returns
    -------
    torch.Tensor
        ``(B, N, 2)`` transformed coordinates.
    """
    if theta is None and shift is None:
        raise ValueError("transform_coordinates needs theta, shift or both")
    batch = (theta if theta is not None else shift).shape[0]  # type: ignore[union-attr]
    out = coords.expand(batch, *coords.shape[-2:]) if coords.dim() == 2 else coords
    if theta is not None:
        out = torch.bmm(out, rotation_matrices(theta))
    if shift is not None:
        out = out + shift[:, None, :]
    return out


def warp_images(
    images: torch.Tensor, theta: torch.Tensor | None, shift: torch.Tensor | None
) -> torch.Tensor:
    """Resample images at transformed coordinates: ``out(x) = images(x @ R(theta) + shift)``.

    This is how the generator renders a pose, applied to pixels instead of an MLP, so
    ``warp_images(render(0, 0), theta, shift) == render(theta, shift)`` up to interpolation.
    One batched ``grid_sample`` call: no per-image loop. Outside the image reads as 0.

    Parameters
    ----------
    images
        ``(B, C, H, W)``.
    theta
        ``(B,)`` radians, or None.
    shift
        ``(B, 2)`` coordinate units, or None.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)``.
    """
    batch, _, height, width = images.shape
    grid = pixel_grid(height, width, device=images.device, dtype=images.dtype)
    sample_at = transform_coordinates(grid, theta, shift).reshape(batch, height, width, 2)
    return F.grid_sample(
        images, sample_at, mode="bilinear", padding_mode="zeros", align_corners=True
    )


def align_images(images: torch.Tensor, theta: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Undo a pose: the inverse of :func:`warp_images`.

    If ``images = warp(template, theta, shift)`` then ``align_images(images, theta, shift)``
    returns ``template`` (inside the field of view): ``out(p) = images((p - shift) @ R(theta)^T)``.

    Parameters
    ----------
    images
        ``(B, C, H, W)`` observed particles.
    theta
        ``(B,)`` inferred rotations (radians).
    shift
        ``(B, 2)`` inferred translations (coordinate units).

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` particles in the template frame.
    """
    batch, _, height, width = images.shape
    grid = pixel_grid(height, width, device=images.device, dtype=images.dtype)
    centred = grid.expand(batch, -1, -1) - shift[:, None, :]
    sample_at = torch.bmm(centred, rotation_matrices(theta).transpose(1, 2))
    sample_at = sample_at.reshape(batch, height, width, 2)
    return F.grid_sample(
        images, sample_at, mode="bilinear", padding_mode="zeros", align_corners=True
    )


def shift_to_pixels(shift: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Convert ``(..., 2)`` shifts from coordinate units to pixels (x, y)."""
    scale = shift.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0])
    return shift * scale


def pixels_to_shift(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Convert ``(..., 2)`` shifts from pixels (x, y) to coordinate units (inverse of
    :func:`shift_to_pixels`)."""
    scale = pixels.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0])
    return pixels / scale


def shift_from_centre(theta: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """The model's translation that puts the template origin at ``centre``.

    Inverse of :func:`particle_centre`: ``centre = -shift @ R^T`` so ``shift = -centre @ R``.

    Parameters
    ----------
    theta
        ``(B,)`` radians.
    centre
        ``(B, 2)`` particle centre ``(x, y)`` in coordinate units, screen frame.

    Returns
    -------
    torch.Tensor
        ``(B, 2)`` translation in coordinate units, as :func:`align_images` takes it.
    """
    return -torch.bmm(centre[:, None, :], rotation_matrices(theta))[:, 0]


def particle_centre(theta: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Where the template's origin lands in the observed image.

    ``image(x) = template(x @ R + shift)`` puts the template origin at ``x = -shift @ R^T``.

    Parameters
    ----------
    theta
        ``(B,)`` radians.
    shift
        ``(B, 2)`` coordinate units.

    Returns
    -------
    torch.Tensor
        ``(B, 2)`` centre ``(x, y)`` in coordinate units, screen frame.
    """
    return -torch.bmm(shift[:, None, :], rotation_matrices(theta).transpose(1, 2))[:, 0]


def centre_std(
    theta: torch.Tensor, shift_std: torch.Tensor, turn: torch.Tensor | None = None
) -> torch.Tensor:
    """Posterior std of :func:`particle_centre`'s ``x`` and ``y`` from the shift's.

    The shift's posterior is diagonal in the template's axes; the centre is the shift turned
    into the screen's, so each of its axes mixes both of the shift's stds (equal stds come
    through unchanged).

    Parameters
    ----------
    theta
        ``(B,)`` radians: the angle the centre is computed with.
    shift_std
        ``(B, 2)`` coordinate units, the model's shift posterior std.
    turn
        ``(B,)`` radians, or None: a frame's turn (:func:`~napari_spatial_vae.core.frame.to_frame`)
        that turned the shift by ``R(-turn)`` before the centre was computed.

    Returns
    -------
    torch.Tensor
        ``(B, 2)`` std of the centre ``(x, y)`` in coordinate units.
    """
    # centre = -shift @ M, M = [R(-turn)] R(theta)^T; each axis's variance sums M_ij^2 var_i
    matrix = rotation_matrices(theta).transpose(1, 2)
    if turn is not None:
        matrix = torch.bmm(rotation_matrices(-turn), matrix)
    return torch.einsum("bi,bij->bj", shift_std.pow(2), matrix.pow(2)).sqrt()
