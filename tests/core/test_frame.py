"""The frame that holds a masked part of the particle still (core/frame.py)."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.coords import (
    align_images,
    pixel_grid,
    pixels_to_shift,
    rotation_matrices,
    shift_from_centre,
    transform_coordinates,
)
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.frame import fit_pose_frame, to_frame
from napari_spatial_vae.core.infer import (
    encode_stack,
    iter_inference,
    latent_grid,
    latent_traversal,
)
from napari_spatial_vae.core.model import SpatialVAE

SIZE = 24
BODY = torch.tensor([[-0.35, 0.0], [-0.35, 0.3]])  # two blobs: a body with no symmetry


def _blobs(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` sum of Gaussian blobs at ``(B, K, 2)`` centres, at ``(B, N, 2)`` points."""
    distance = (points[:, :, None, :] - centres[:, None, :, :]).square().sum(-1)
    return torch.exp(-distance / (2 * 0.12**2)).sum(-1)


def drift(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation and shift by which the template below turns the body along z (z2 too)."""
    turn = 0.35 * torch.tanh(z[:, 0])
    if z.shape[1] > 1:
        turn = turn - 0.2 * torch.tanh(z[:, 1])
    return turn, 0.08 * torch.stack([torch.tanh(z[:, 0]), -torch.tanh(z[:, 0])], dim=1)


class HingeWithDrift(nn.Module):
    """A generator whose arm swings with z1 while its frame turns and shifts the body.

    ``T_z(x) = body(u) + arm_z(u)`` with ``u = x R(delta(z)) + c(z)``: the consensus-like
    drift a trained model shows; holding the body still must undo exactly ``delta`` and
    ``c`` (``phi = -delta``, ``t = -c R(-delta)``).
    """

    def __init__(self, n_out: int):
        super().__init__()
        self.n_out = n_out
        # a weight, so a test can tell whether fitting the frame changed the generator
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        assert z is not None
        coords = coords.expand(len(z), -1, -1)
        turn, shift = drift(z)
        u = torch.einsum("bnd,bde->bne", coords, rotation_matrices(turn)) + shift[:, None]
        swing = 0.9 * z[:, 0]
        arm = 0.4 * torch.stack([torch.cos(swing), torch.sin(swing)], dim=1)[:, None]
        values = self.gain * (_blobs(u, BODY.expand(len(z), -1, -1)) + _blobs(u, arm))
        out = values.new_zeros(*values.shape, self.n_out)
        out[..., 0] = values  # a log noise std of 0 in any further output
        return out


def drifting_model(make_config, z_dim: int = 1) -> SpatialVAE:
    config = make_config(z_dim=z_dim, softplus_mean=False).model
    # the encoder is untrained: seeded, so every run reads the same z from the same images
    torch.manual_seed(0)
    model = SpatialVAE(config, (1, SIZE, SIZE)).eval()
    model.generator = HingeWithDrift(1 + int(config.fit_noise))
    return model


def body_mask() -> np.ndarray:
    """``(SIZE, SIZE)`` the pixels the reference template's body covers."""
    grid = pixel_grid(SIZE, SIZE)[None]
    return (_blobs(grid, BODY[None])[0] > 0.2).reshape(SIZE, SIZE).numpy()


def test_poses_in_the_frame_render_the_same_coordinates():
    # x R(theta) + s  ==  (x R(theta') + s') R(phi) + t  for the frame's (phi, t)
    generator = torch.Generator().manual_seed(0)
    theta, turn = torch.rand(2, 5, generator=generator) * 6 - 3
    shift, offset = torch.randn(2, 5, 2, generator=generator) * 0.2
    new_theta, new_shift = to_frame(theta, shift, turn, offset)
    grid = pixel_grid(6, 6)
    direct = transform_coordinates(grid, theta, shift)
    in_frame = transform_coordinates(grid, new_theta, new_shift)
    through_frame = (
        torch.einsum("bnd,bde->bne", in_frame, rotation_matrices(turn)) + offset[:, None]
    )
    assert torch.allclose(direct, through_frame, atol=1e-5)
    assert to_frame(theta, None, turn, offset)[1] is None


def test_the_fitted_frame_undoes_the_drift_of_the_masked_part(make_config):
    model = drifting_model(make_config)
    frame = fit_pose_frame(model, body_mask())
    z = torch.tensor([[-1.6], [-0.5], [0.0], [0.7], [1.5]])
    turn, offset = frame.at(z)
    true_turn, true_shift = drift(z)
    expected_offset = -torch.einsum("bd,bde->be", true_shift, rotation_matrices(-true_turn))
    assert torch.rad2deg((turn + true_turn).abs()).max() < 1.0
    assert (offset - expected_offset).abs().max() < 0.02  # a quarter pixel
    # the arm alone moves: the body is where the reference has it, for every z
    with torch.no_grad():
        held = model.render(model.decode(z, turn, offset)[0])[:, 0]
        reference = model.render(model.decode(torch.zeros(1, 1))[0])[0, 0]
    inside = torch.from_numpy(body_mask())
    assert (held[:, inside] - reference[inside]).abs().max() < 0.05 * reference.max()


def test_a_two_latent_frame_interpolates_between_grid_values(make_config):
    model = drifting_model(make_config, z_dim=2)
    frame = fit_pose_frame(model, body_mask())
    # off the grid's values; the drift turns along both axes
    z = torch.tensor([[-1.2, 2.0], [0.4, -0.9], [1.1, 0.3], [0.0, -1.6]])
    turn, _ = frame.at(z)
    assert torch.rad2deg((turn + drift(z)[0]).abs()).max() < 1.5


def test_inference_and_traversals_report_the_frame(make_config):
    model = drifting_model(make_config)
    frame = fit_pose_frame(model, body_mask())
    images = torch.randn(6, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).numpy()
    config = TrainConfig(model=model.config)
    plain = encode_stack(model, config, images, refine_steps=0)
    held = encode_stack(model, config, images, refine_steps=0, frame=frame)
    turn, _ = frame.at(torch.from_numpy(plain.z))
    expected = np.angle(np.exp(1j * (plain.theta - turn.numpy())))
    assert np.allclose(held.theta, expected, atol=1e-5)
    assert np.allclose(held.z, plain.z)
    # the traversal's body stands still; without the frame it turns
    inside = body_mask()
    still = latent_traversal(model, 5, frame=frame)[0][:, inside]
    moving = latent_traversal(model, 5)[0][:, inside]
    assert np.ptp(still, axis=0).max() < 0.5 * np.ptp(moving, axis=0).max()


def test_aligned_particles_reconstructions_and_centres_in_the_frame(make_config):
    model = drifting_model(make_config)
    frame = fit_pose_frame(model, body_mask())
    config = TrainConfig(model=model.config, normalize=False)
    images = torch.randn(5, SIZE, SIZE, generator=torch.Generator().manual_seed(2)).numpy()
    run = {"refine_steps": 0, "aligned": True, "reconstructions": True}
    (plain,) = iter_inference(model, config, images, **run)
    (held,) = iter_inference(model, config, images, frame=frame, **run)

    def pose(poses):  # theta and the model's shift (coordinate units) from a pose table
        theta = torch.from_numpy(poses.theta)
        centre = pixels_to_shift(torch.from_numpy(np.c_[poses.dx, poses.dy]), SIZE, SIZE)
        return theta, shift_from_centre(theta, centre)

    z = torch.from_numpy(plain.poses.z)
    turn, frame_shift = frame.at(z)
    expected_theta, expected_shift = to_frame(*pose(plain.poses), turn, frame_shift)
    theta, shift = pose(held.poses)
    assert torch.allclose(
        torch.angle(torch.exp(1j * (theta - expected_theta))), torch.zeros(5), atol=1e-5
    )
    assert torch.allclose(shift, expected_shift, atol=1e-5)
    raw = torch.from_numpy(images)[:, None]
    aligned = align_images(raw, expected_theta, expected_shift)[:, 0].numpy()
    np.testing.assert_allclose(held.aligned, aligned, atol=1e-5)
    with torch.no_grad():
        template = model.expected_image(model.decode(z, turn, frame_shift)[0])[:, 0].numpy()
    np.testing.assert_allclose(held.reconstructions, template, atol=1e-5)
    assert np.abs(held.reconstructions - plain.reconstructions).max() > 0.1


def test_a_frame_of_another_model_is_refused(make_config):
    frame = fit_pose_frame(drifting_model(make_config), body_mask())
    other = drifting_model(make_config, z_dim=2)
    with pytest.raises(DataError, match="fitted for a model with z-dim 1"):
        encode_stack(other, TrainConfig(model=other.config), np.zeros((2, SIZE, SIZE)), frame=frame)
    with pytest.raises(DataError, match="fitted for a model with z-dim 1"):
        latent_traversal(other, 3, frame=frame)


def test_a_latent_grid_in_the_frame(make_config):
    model = drifting_model(make_config, z_dim=2)
    frame = fit_pose_frame(model, body_mask())
    inside = body_mask()
    still = latent_grid(model, 3, frame=frame)[:, :, inside].reshape(9, -1)
    moving = latent_grid(model, 3)[:, :, inside].reshape(9, -1)
    assert np.ptp(still, axis=0).max() < 0.5 * np.ptp(moving, axis=0).max()


@pytest.mark.parametrize(
    ("z_dim", "mask", "message"),
    [
        (1, np.ones((SIZE, SIZE + 1)), "must be one 24 x 24 image"),
        (1, np.zeros((SIZE, SIZE)), "covers 0 of the model's pixels"),
        (1, np.ones((SIZE, SIZE)), "covers 100% of the model's pixels"),
        (3, body_mask(), "needs z-dim 1 or 2"),
    ],
)
def test_masks_and_models_the_frame_refuses(make_config, z_dim, mask, message):
    model = SpatialVAE(make_config(z_dim=z_dim).model, (1, SIZE, SIZE))
    with pytest.raises(DataError, match=message):
        fit_pose_frame(model, mask)


def test_a_model_without_rotation_is_refused(make_config):
    model = SpatialVAE(make_config(rotate=False, encoder="mlp").model, (1, SIZE, SIZE))
    with pytest.raises(DataError, match="needs a model that infers the rotation"):
        fit_pose_frame(model, body_mask())


def test_a_stop_request_interrupts_the_fit(make_config):
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # after two rings of the grid

    with pytest.raises(InterruptedError):
        fit_pose_frame(drifting_model(make_config), body_mask(), should_stop=stop)
    assert len(asked) == 3


def test_the_frame_leaves_the_model_as_it_was(make_config):
    model = drifting_model(make_config)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_pose_frame(model, body_mask())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
