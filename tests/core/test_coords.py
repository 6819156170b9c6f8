"""Sign conventions and the rendering/resampling identities (docs/conventions.md)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.coords import (
    align_images,
    circular_mask,
    particle_centre,
    pixel_grid,
    rotation_matrices,
    transform_coordinates,
    warp_images,
)
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.simulate import blob_positions, render_blobs

SIZE = 41
BLOBS = torch.tensor([[0.45, 0.0], [-0.2, 0.25], [0.0, -0.3]])


def template(coords: torch.Tensor) -> torch.Tensor:
    """A smooth asymmetric image function of (…, 2) coordinates."""
    d2 = ((coords[..., None, :] - BLOBS) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * 0.12**2)).sum(-1)


def render(theta: float, shift: tuple[float, float]) -> torch.Tensor:
    """(1, 1, H, W) image(x) = template(x @ R(theta) + shift), evaluated exactly."""
    grid = pixel_grid(SIZE, SIZE)
    coords = transform_coordinates(grid, torch.tensor([theta]), torch.tensor([shift]))
    return template(coords).reshape(1, 1, SIZE, SIZE)


def inner(image: torch.Tensor, radius: float = 0.6) -> torch.Tensor:
    keep = pixel_grid(SIZE, SIZE).norm(dim=1) <= radius
    return image.flatten()[keep]


def test_grid_is_centred_and_spans_minus_one_to_one_x_right_y_down():
    grid = pixel_grid(3, 5)
    assert grid.shape == (15, 2)
    torch.testing.assert_close(grid[0], torch.tensor([-1.0, -1.0]))  # top-left pixel
    torch.testing.assert_close(grid[4], torch.tensor([1.0, -1.0]))  # top-right
    torch.testing.assert_close(grid[7], torch.tensor([0.0, 0.0]))  # centre
    torch.testing.assert_close(grid[10], torch.tensor([-1.0, 1.0]))  # bottom-left


def test_rotation_matrix_is_the_papers_form():
    r = rotation_matrices(torch.tensor([0.3]))[0]
    c, s = math.cos(0.3), math.sin(0.3)
    torch.testing.assert_close(r, torch.tensor([[c, s], [-s, c]]))


def test_positive_theta_turns_the_particle_counter_clockwise_on_screen():
    # the template's blob at (+0.45, 0) (right of centre) must appear above the centre
    coords = transform_coordinates(pixel_grid(SIZE, SIZE), torch.tensor([math.pi / 2]), None)
    image = torch.exp(-((coords - BLOBS[0]) ** 2).sum(-1) / 0.02).reshape(SIZE, SIZE)
    row, col = np.unravel_index(int(image.argmax()), image.shape)
    centre = SIZE // 2
    assert col == centre
    assert row == pytest.approx(centre - 0.45 * (SIZE - 1) / 2, abs=1)


@settings(max_examples=15, deadline=None)
@given(
    theta=st.floats(-math.pi, math.pi),
    dx=st.floats(-0.15, 0.15),
    dy=st.floats(-0.15, 0.15),
)
def test_rendering_at_a_pose_equals_warping_the_unposed_rendering(theta, dx, dy):
    warped = warp_images(render(0.0, (0.0, 0.0)), torch.tensor([theta]), torch.tensor([[dx, dy]]))
    direct = render(theta, (dx, dy))
    assert (inner(warped) - inner(direct)).abs().max() < 0.05


@settings(max_examples=15, deadline=None)
@given(theta=st.floats(-math.pi, math.pi), dx=st.floats(-0.15, 0.15), dy=st.floats(-0.15, 0.15))
def test_align_images_undoes_the_pose(theta, dx, dy):
    aligned = align_images(render(theta, (dx, dy)), torch.tensor([theta]), torch.tensor([[dx, dy]]))
    assert (inner(aligned, 0.5) - inner(render(0.0, (0.0, 0.0)), 0.5)).abs().max() < 0.05


def test_generator_rendering_commutes_with_image_warping():
    torch.manual_seed(0)
    model = SpatialVAE(
        ModelConfig(z_dim=2, hidden_dim=32, fit_noise=False, circular_mask=False, encoder="mlp"),
        (1, SIZE, SIZE),
    )
    z = torch.randn(3, 2)
    theta = torch.tensor([0.4, -2.0, 3.0])
    shift = torch.tensor([[0.1, -0.05], [0.0, 0.12], [-0.08, 0.0]])
    posed = model.render(model.decode(z, theta, shift)[0])
    unposed = model.render(model.decode(z)[0])
    warped = warp_images(unposed, theta, shift)
    keep = pixel_grid(SIZE, SIZE).norm(dim=1) <= 0.6
    difference = (posed.flatten(1)[:, keep] - warped.flatten(1)[:, keep]).abs().max()
    scale = unposed.abs().max()
    assert difference < 0.02 * scale


def test_particle_centre_is_where_the_template_origin_lands():
    theta, shift = torch.tensor([1.1]), torch.tensor([[0.2, -0.1]])
    centre = particle_centre(theta, shift)
    # the template origin maps to x with x @ R + shift = 0
    back = transform_coordinates(centre, theta, shift)
    torch.testing.assert_close(back, torch.zeros(1, 1, 2), atol=1e-6, rtol=0)


def test_simulation_uses_the_same_convention_as_the_model():
    conformation = np.array([0.5, 0.5])
    theta = np.array([0.0, 2.2])
    shift_px = np.array([[0.0, 0.0], [1.5, -1.0]])
    half = (SIZE - 1) / 2
    positions = blob_positions(conformation, theta, shift_px / half, np.zeros(2))
    images = torch.from_numpy(render_blobs(positions, np.ones(positions.shape[1]), SIZE, 0.12))
    t = torch.from_numpy(shift_px / half).float()
    th = torch.from_numpy(theta).float()
    # the model's shift for a particle centred at t is d = -(t @ R(theta))
    d = -torch.bmm(t[:, None, :], rotation_matrices(th))[:, 0]
    torch.testing.assert_close(particle_centre(th, d), t, atol=1e-6, rtol=0)
    aligned = align_images(images[:, None].float(), th, d)
    assert (inner(aligned[1], 0.55) - inner(images[0], 0.55)).abs().max() < 0.05 * images.max()


def test_circular_mask_keeps_the_inscribed_circle():
    mask = circular_mask(40, 40)
    # radius 1 reaches the centres of the edge pixels: (n - 1) / 2 pixels
    assert mask.sum() / mask.numel() == pytest.approx(math.pi * 19.5**2 / 40**2, abs=0.01)
    assert not mask[0] and mask[20 * 40 + 20]


def test_shift_from_centre_inverts_particle_centre_and_pixels_invert_shift_to_pixels():
    from napari_spatial_vae.core.coords import pixels_to_shift, shift_from_centre, shift_to_pixels

    generator = torch.Generator().manual_seed(0)
    theta = torch.rand(16, generator=generator) * 6.0 - 3.0
    shift = torch.randn(16, 2, generator=generator) * 0.2
    centre = particle_centre(theta, shift)
    torch.testing.assert_close(shift_from_centre(theta, centre), shift)
    pixels = shift_to_pixels(shift, 20, 24)
    torch.testing.assert_close(pixels_to_shift(pixels, 20, 24), shift)


@pytest.mark.parametrize("with_frame", [False, True])
def test_centre_std_is_the_spread_of_the_centres_of_sampled_shifts(with_frame):
    from napari_spatial_vae.core.coords import centre_std
    from napari_spatial_vae.core.frame import to_frame

    generator = torch.Generator().manual_seed(1)
    theta = torch.tensor([0.0, 0.5, math.pi / 2, -2.4])
    shift_std = torch.tensor([[0.01, 0.04], [0.05, 0.01], [0.02, 0.06], [0.03, 0.03]])
    mean = torch.tensor([[0.1, -0.2], [0.0, 0.3], [-0.1, 0.0], [0.2, 0.2]])
    samples = mean + shift_std * torch.randn(20_000, 4, 2, generator=generator)
    turn = torch.tensor([0.3, -1.0, 2.0, 0.7]) if with_frame else None
    reported = theta
    if turn is not None:  # the poses a held part is reported in (what inference does)
        frame_shift = torch.tensor([[0.05, 0.0], [0.0, -0.02], [0.1, 0.1], [0.0, 0.0]])
        reported, _ = to_frame(theta, mean, turn, frame_shift)
        samples = torch.stack([to_frame(theta, s, turn, frame_shift)[1] for s in samples.unbind(0)])
    centres = torch.stack([particle_centre(reported, s) for s in samples.unbind(0)])
    expected = centres.std(dim=0)
    torch.testing.assert_close(
        centre_std(reported, shift_std, turn), expected, rtol=0.03, atol=1e-4
    )
    if turn is None:
        # a quarter turn swaps the axes; equal stds come through unchanged
        torch.testing.assert_close(centre_std(theta, shift_std)[2], shift_std[2].flip(0))
        torch.testing.assert_close(centre_std(theta, shift_std)[3], shift_std[3])
