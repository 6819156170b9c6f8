"""z_gap's reading of z under the generator: the model's own renderings give their z back."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from z_gap import generator_z, z_grid

from napari_spatial_vae.core.config import ModelConfig
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
