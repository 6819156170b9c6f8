"""Which pixels the model renders and compares, at full resolution or binned.

The generator is a function of continuous coordinates, so the same networks can render the
particle on any set of points. A :class:`PixelLayout` is one such set: the pixel centres of
the image (``binning=1``) or of its ``b x b`` bins (coarse-to-fine training renders the
first part of a run on 2x2-binned particles, a quarter of the pixels). Bin centres are
placed in the *full image's* coordinate frame (docs/conventions.md), so a pose means the
same rotation and shift at every binning.

For rotation search the layout also holds a render canvas: the generator renders once per
image on the canvas and each candidate rotation resamples it (``SpatialVAE.decode_candidates``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_spatial_vae.core.coords import inside_unit_disk, pixel_grid


class PixelLayout(nn.Module):
    """The modelled pixels of one resolution, and the render canvas for rotation search.

    Parameters
    ----------
    height, width
        Full image size in pixels; with ``binning > 1`` both must be multiples of it.
    masked
        Model only the pixels inside the inscribed circle (radius 1).
    searches
        Build the render canvas for rotation search.
    binning
        ``b``: the layout's pixels are the centres of ``b x b`` bins.

    Attributes
    ----------
    shape
        ``(H // b, W // b)``: the image the layout's pixels belong to.
    grid
        ``(N, 2)`` coordinates of the modelled pixels, in the full image's frame.
    pixel_index
        ``(N,)`` their row-major indices in the ``(height // b, width // b)`` image.
    render_grid, render_index, render_scale, canvas_shape
        The canvas (search only): its rendered points ``(Nr, 2)``, their indices in the
        canvas, image units -> the canvas's ``grid_sample`` units ``(2,)``, its size.
    """

    grid: torch.Tensor
    pixel_index: torch.Tensor
    render_grid: torch.Tensor
    render_index: torch.Tensor
    render_scale: torch.Tensor

    def __init__(self, height: int, width: int, masked: bool, searches: bool, binning: int = 1):
        super().__init__()
        if height % binning or width % binning:
            raise ValueError(f"a {height}x{width} image cannot be binned by {binning}")
        self.binning = binning
        rows, cols = height // binning, width // binning
        self.shape = (rows, cols)
        # bin centres sit (b - 1) / 2 full pixels in from the edge: the outer ones span
        # less than -1..1 by that much (1 for b = 1: the full image's own pixel grid)
        extent = torch.tensor([(width - binning) / (width - 1), (height - binning) / (height - 1)])
        grid = pixel_grid(rows, cols) * extent
        keep = inside_unit_disk(grid) if masked else torch.ones(rows * cols, dtype=torch.bool)
        self.register_buffer("pixel_index", torch.nonzero(keep).squeeze(1), persistent=False)
        self.register_buffer("grid", grid[keep], persistent=False)
        if searches:
            self._init_render_canvas(
                rows, cols, extent, masked, margin=2.0 * binning / (min(height, width) - 1)
            )

    def _init_render_canvas(
        self, rows: int, cols: int, extent: torch.Tensor, masked: bool, margin: float
    ) -> None:
        """Where rotation search renders: a canvas that holds every rotation of the pixels.

        The generator runs once per image and the K candidate rotations resample that
        rendering, so the rendering must cover every modelled pixel turned by any angle: the
        disk of radius 1 under the circular mask, of radius sqrt(2) (the square's corners)
        without it, plus one pixel (``margin``) for the bilinear reads at the rim. Without
        the mask the canvas is padded beyond the image; rendering only the disk keeps the
        cost at ~1.6x the image's pixels instead of 2x for the padded square.
        """
        reach = 1.0 if masked else math.sqrt(2.0)
        pad = 0 if masked else math.ceil((reach - 1.0) * max(rows, cols) / 2.0) + 1
        canvas_h, canvas_w = rows + 2 * pad, cols + 2 * pad
        # canvas pixel coordinates in the image's units
        scale = torch.tensor([(canvas_w - 1) / (cols - 1), (canvas_h - 1) / (rows - 1)]) * extent
        canvas_grid = pixel_grid(canvas_h, canvas_w) * scale
        render = canvas_grid.pow(2).sum(dim=1).sqrt() <= reach + margin
        self.canvas_shape = (canvas_h, canvas_w)
        self.register_buffer("render_index", torch.nonzero(render).squeeze(1), persistent=False)
        self.register_buffer("render_grid", canvas_grid[render], persistent=False)
        self.register_buffer("render_scale", 1.0 / scale, persistent=False)

    def bin(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images averaged over the layout's bins, ``(B, C, H/b, W/b)``."""
        if self.binning == 1:
            return images
        return nn.functional.avg_pool2d(images, self.binning)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The modelled pixels of ``(B, C, H, W)`` full-size images, ``(B, C, N)``."""
        return self.gather(self.bin(images))

    def gather(self, images: torch.Tensor) -> torch.Tensor:
        """The modelled pixels of ``(B, C, *shape)`` images at this resolution, ``(B, C, N)``."""
        return images.flatten(2)[:, :, self.pixel_index]

    def scatter(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)`` modelled pixels into ``(B, C, *shape)`` images, 0 elsewhere."""
        out = pixels.new_zeros(*pixels.shape[:2], self.shape[0] * self.shape[1])
        out[:, :, self.pixel_index] = pixels
        return out.reshape(*pixels.shape[:2], *self.shape)
