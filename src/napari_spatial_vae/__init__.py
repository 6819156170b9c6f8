"""spatial-VAE for particle stacks: a napari plugin, a headless library and a command line.

The small public API (imported lazily, so that napari's plugin discovery does not load torch)::

    from napari_spatial_vae import TrainConfig, train, load_model, infer, read_stack

The torch core (:mod:`napari_spatial_vae.core`) runs without any GUI; file formats live in
:mod:`napari_spatial_vae.io`; the command line is :mod:`napari_spatial_vae.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = (
    "ModelConfig",
    "ParticleStack",
    "TrainConfig",
    "TrainResult",
    "infer",
    "load_model",
    "read_stack",
    "train",
)
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module("napari_spatial_vae.api"), name)
    raise AttributeError(f"module 'napari_spatial_vae' has no attribute {name!r}")
