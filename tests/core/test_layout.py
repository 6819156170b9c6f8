"""Binned pixel layouts (coarse-to-fine training) sit where the bins of the full image are."""

from __future__ import annotations

import math

import pytest
import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.coords import circular_mask, pixel_grid, transform_coordinates
from napari_spatial_vae.core.layout import PixelLayout
from napari_spatial_vae.core.model import SpatialVAE


@pytest.mark.parametrize("masked", [True, False])
def test_unbinned_layout_is_the_image_pixel_grid(masked):
    layout = PixelLayout(30, 30, masked, searches=False)
    keep = circular_mask(30, 30) if masked else torch.ones(900, dtype=torch.bool)
    torch.testing.assert_close(layout.grid, pixel_grid(30, 30)[keep])
    torch.testing.assert_close(layout.pixel_index, torch.nonzero(keep).squeeze(1))


@pytest.mark.parametrize(("height", "width", "binning"), [(40, 40, 2), (24, 36, 2), (24, 24, 3)])
def test_bin_centres_are_the_mean_coordinates_of_their_pixels(height, width, binning):
    layout = PixelLayout(height, width, masked=False, searches=False, binning=binning)
    full = pixel_grid(height, width).T.reshape(1, 2, height, width)
    centres = torch.nn.functional.avg_pool2d(full, binning).flatten(2)[0].T  # (N/b^2, 2)
    torch.testing.assert_close(layout.grid, centres)


def test_binned_targets_are_bin_means_of_the_modelled_pixels():
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    layout = PixelLayout(16, 16, masked=True, searches=False, binning=2)
    expected = torch.nn.functional.avg_pool2d(images, 2).flatten(2)[:, :, layout.pixel_index]
    torch.testing.assert_close(layout.targets(images), expected)
    assert layout.targets(images).shape[-1] < 64  # the corners are outside the disk


def test_an_odd_box_cannot_be_binned():
    with pytest.raises(ValueError, match="cannot be binned"):
        PixelLayout(33, 33, masked=True, searches=False, binning=2)


@torch.no_grad()
def test_binned_rendering_is_the_full_rendering_of_the_bin_centres_with_lower_noise():
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(z_dim=1, hidden_dim=16), (1, 20, 20))
    z, theta, shift = torch.randn(3, 1), torch.randn(3), 0.1 * torch.randn(3, 2)
    binned = model.binned_layout(2)
    assert model.binned_layout(2) is binned  # built once
    mean, logstd = model.decode(z, theta, shift, layout=binned)
    # the same generator at the same coordinates, read as full-resolution pixels
    generator_out = model.generator(transform_coordinates(binned.grid, theta, shift), z).transpose(
        1, 2
    )  # small weights: the log std is far inside its clamp
    torch.testing.assert_close(mean, generator_out[:, :1])
    torch.testing.assert_close(logstd, generator_out[:, 1:] - math.log(2))
