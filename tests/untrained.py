"""A small untrained model whose generator renders a sharp template (shared by tests)."""

from __future__ import annotations

import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.model import SpatialVAE


def sharp_untrained_model(**fields) -> SpatialVAE:
    """z-dim 1, 24 x 24 px, 8 rotation bins (eval mode); ``fields`` override the config."""
    torch.manual_seed(0)
    config = ModelConfig(**{"z_dim": 1, "hidden_dim": 16, "encoder_rotations": 8, **fields})
    model = SpatialVAE(config, (1, 24, 24)).eval()
    with torch.no_grad():  # an untrained generator is nearly flat: make its template sharp
        model.generator.coord_layer.weight.mul_(3.0)
        model.generator.body[-1].weight.mul_(20.0)
    return model


def smooth_blobs(n: int = 32) -> torch.Tensor:
    """``(n, 1, 24, 24)`` smooth random images."""
    return torch.nn.functional.avg_pool2d(torch.randn(n, 1, 24, 24), 5, 1, 2) * 3.0
