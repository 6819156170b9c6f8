"""The torch core of spatial-VAE: headless, no Qt/napari/magicgui imports (enforced by ruff).

Entry points: :class:`TrainConfig`, :func:`napari_spatial_vae.core.train.train`,
:func:`napari_spatial_vae.core.checkpoint.load_model`, and the inference helpers in
:mod:`napari_spatial_vae.core.infer`. Most users want the flat API of the package itself
(``from napari_spatial_vae import train, infer, load_model, read_stack``).
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
