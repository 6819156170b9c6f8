"""The torch core of spatial-VAE: headless, no Qt/napari/magicgui imports (enforced by ruff).

Public entry points: :class:`TrainConfig`, :func:`train`, :func:`load_run`, and the inference
helpers in :mod:`napari_spatial_vae.core.infer`.
"""

from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.errors import CheckpointError, ConfigError, DataError, SpatialVAEError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelConfig",
    "SpatialVAEError",
    "TrainConfig",
]
