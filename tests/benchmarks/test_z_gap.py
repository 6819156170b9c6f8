"""z_gap's readings: the model's renderings give their z back, the design's its motion."""

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from z_gap import (
    frame_turn,
    generator_z,
    nearby_poses,
    own_renderings_reading,
    true_pose,
    truth_reading,
    z_grid,
)

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.coords import align_images, circular_mask
from napari_spatial_vae.core.designs import DESIGNS, render_design, simulate_design
from napari_spatial_vae.core.model import SpatialVAE


def test_renderings_of_known_z_read_back_at_their_pose_and_not_at_another():
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(z_dim=1, hidden_dim=32), (1, 24, 24)).eval()
    z = z_grid(1)[8:49:4]  # (11, 1) grid values from -2.5 to 2.5
    # quarter turns move pixel centres onto pixel centres: aligning back is exact
    theta = torch.tensor([0.0, math.pi / 2, math.pi, -math.pi / 2] * 3)[: len(z)]
    shift = torch.zeros(len(z), 2)
    with torch.no_grad():
        images = model.expected_image(model.decode(z, theta, shift)[0])
    # standardised as particles are (the amplitude is profiled out)
    images = (images - images.mean((1, 2, 3), keepdim=True)) / images.std((1, 2, 3), keepdim=True)
    read = generator_z(model, images, theta, shift, 1e-3, 1)
    assert (read - z).abs().max() < 0.01
    # aligned by a pose a quarter turn off, the same images do not give their z back
    wrong = generator_z(model, images, theta + math.pi / 2, shift, 1e-3, 1)
    assert (wrong - z).abs().max() > 1.0


def test_any_rotation_scores_each_turn_of_the_circle_once_with_every_shift():
    turns, moves = nearby_poses(180.0, 1.0)
    assert len(turns) == len(moves) == 120 * 25
    degrees = np.degrees(np.unique(turns.round(9)))
    assert len(degrees) == 120 and np.allclose(np.diff(degrees), 3.0)
    assert np.abs(moves).max() == 1.0
    # below half a turn: the oracle's grid around the given pose
    turns, moves = nearby_poses(8.0, 1.0)
    assert len(turns) == 9 * 25 and np.degrees(np.abs(turns)).max() == pytest.approx(8.0)


def test_the_true_pose_aligns_a_particle_onto_its_unposed_rendering():
    design = DESIGNS["tilted-hinge"]
    particles = simulate_design(design, 12, 5, snr=0.5)
    theta, shift = true_pose(particles, design.size)
    aligned = align_images(torch.from_numpy(particles.clean)[:, None], theta, shift)
    zeros = np.zeros(12)
    unposed = render_design(design, particles.conformation, zeros, zeros[:, None] * [0, 0],
                            particles.tilt)  # fmt: skip
    inside = circular_mask(design.size, design.size).flatten()
    want = unposed.reshape(12, -1)[:, inside]
    for i, got in enumerate(aligned.flatten(1)[:, inside]):
        assert np.corrcoef(got.numpy(), want[i])[0, 1] > 0.99


def test_the_designs_own_renderer_reads_the_motion_and_a_wrong_pose_does_not():
    design = DESIGNS["tilted-hinge"]
    particles = simulate_design(design, 60, 3, snr=0.5)
    images = torch.from_numpy(particles.images)[:, None]
    images = (images - images.mean((2, 3), keepdim=True)) / images.std((2, 3), keepdim=True)
    read = truth_reading(design, particles, images, 1 / 1.5)[:, 0].numpy()
    assert abs(np.corrcoef(read, particles.conformation[:, 0])[0, 1]) > 0.95
    turned = dataclasses.replace(particles, theta=particles.theta + np.pi / 2)
    wrong = truth_reading(design, turned, images, 1 / 1.5)[:, 0].numpy()
    assert abs(np.corrcoef(wrong, particles.conformation[:, 0])[0, 1]) < 0.7


def test_the_frame_turn_is_the_part_of_the_rotation_error_the_motion_explains():
    particles = simulate_design(DESIGNS["tilted-hinge"], 400, 1, snr=0.5)
    # a frame that turns 0.2 rad (11.5 degrees) over the whole motion, plus a fixed offset
    theta = particles.theta + 0.3 + 0.2 * particles.conformation[:, 0]
    spread, share = frame_turn(theta, particles)
    assert spread == pytest.approx(0.9 * 11.46, abs=0.5) and share > 0.999
    # errors the motion does not explain
    jitter = np.random.default_rng(0).normal(0.0, 0.1, 400)
    spread, share = frame_turn(particles.theta + jitter, particles)
    assert spread < 2.0 and share < 0.05


def test_own_renderings_read_back_when_clear_and_fall_to_the_prior_when_buried():
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(z_dim=1, hidden_dim=32), (1, 24, 24)).eval()
    z = z_grid(1)[12:45:4]  # (9, 1) from -2 to 2
    clear = own_renderings_reading(model, z, 1e4, seed=1)
    assert (clear - z).abs().max() < 0.15
    many = z_grid(1)[4:53]  # (49, 1) from -3 to 3
    buried = own_renderings_reading(model, many, 1e-4, seed=1)[:, 0]
    # nothing of z is left: the readings are the noise's, unrelated to the z rendered
    assert abs(np.corrcoef(buried.numpy(), many[:, 0].numpy())[0, 1]) < 0.4
