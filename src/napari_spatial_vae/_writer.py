"""npe2 writers: an Image layer as an ``.mrcs`` stack; a poses Points layer as STAR/CSV.

npe2 single-layer writers receive ``(path, data, attributes)`` and return the paths written.
Both writers go through :mod:`napari_spatial_vae.io`, so files are written atomically and
match what the command line writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_spatial_vae._layers import META_KEY, pose_table
from napari_spatial_vae.io import ParticleStack, read_stack, write_mrcs, write_poses


def _pixel_size(attributes: dict[str, Any]) -> float | None:
    """Å per pixel: the layer metadata's, else the scale of the last axis when it is not 1."""
    info = (attributes.get("metadata") or {}).get(META_KEY, {})
    if info.get("pixel_size"):
        return float(info["pixel_size"])
    scale = attributes.get("scale")
    if scale is not None and len(scale) and float(scale[-1]) not in (0.0, 1.0):
        return float(scale[-1])
    return None


def write_image_stack(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write an Image layer as an MRC stack (float32, pixel size in the header).

    A 2-D image becomes a stack of one; leading axes beyond one (a latent traversal
    ``(K, steps, H, W)``) are flattened in C order, so image ``k * steps + s`` is latent
    ``k`` at step ``s``.

    Raises
    ------
    ValueError
        For colour (RGB) layers, which MRC cannot hold.
    """
    if attributes.get("rgb"):
        raise ValueError("MRC stacks hold grey images only; this layer is RGB")
    if getattr(data, "ndim", 0) < 2:
        raise ValueError(f"an image layer needs at least 2 dimensions, got shape {data.shape}")
    if data.ndim == 2:
        data = data[None]
    elif data.ndim > 3:
        data = np.asarray(data).reshape(-1, *data.shape[-2:])
    write_mrcs(path, data, _pixel_size(attributes))
    return [os.fspath(path)]


def write_poses_layer(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a poses Points layer (made by the widget) as ``.star`` or ``.csv``.

    The CSV is the command line's pose table (radians, pixels); the STAR file uses RELION
    labels. For STAR the stack the poses belong to is reopened when its file still exists,
    so its RELION/cryoSPARC metadata, image names and pixel size are carried over.

    Raises
    ------
    ValueError
        When the layer's features are not a pose table.
    """
    features = attributes.get("features")
    if not isinstance(features, pd.DataFrame) or features.empty:
        raise ValueError("the layer has no pose features (theta, dx, dy, z...) to write")
    table = pose_table(features)
    stack = None
    if Path(path).suffix.lower() == ".star":
        stack = _source_stack(attributes, len(table))
    notes = write_poses(path, table, stack)
    if notes:  # optics defaults assumed, .mrcs links or copies made for RELION
        from napari.utils.notifications import show_info

        for note in notes:
            show_info(note)
    return [os.fspath(path)]


def _source_stack(attributes: dict[str, Any], n: int) -> ParticleStack | None:
    """The input stack behind a poses layer, or a stand-in with its size and pixel size."""
    info = (attributes.get("metadata") or {}).get(META_KEY, {})
    source_path = info.get("path")
    if source_path and Path(source_path).exists():
        try:
            stack = read_stack(source_path)
        except Exception:  # only metadata is lost; the stand-in below still works
            stack = None
        if stack is not None and len(stack) == n:
            return stack
    shape = info.get("image_shape")
    if not shape:
        return None
    # zero-stride stand-in: only its shape and pixel size are used, nothing is read
    fake = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.float32), (n, *shape))
    name = info.get("source") or "particles"
    return ParticleStack.from_array(fake, info.get("pixel_size"), path=Path(name).stem + ".mrcs")
