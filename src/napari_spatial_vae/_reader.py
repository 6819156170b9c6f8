"""npe2 reader: particle stacks (MRC, STAR, cryoSPARC, numpy, TIFF) as one Image layer.

Conventions (npe2): :func:`get_reader` decides from the path alone (suffix, or a folder of
PNG/JPEG files) and returns None for anything else, so napari can offer other readers. A
file with a supported suffix that turns out to be broken is *not* silently declined: the
returned reader raises :class:`~napari_spatial_vae.io.StackError`, whose one-line
``"<path>: <problem>"`` message napari shows to the user. Declining it would only produce
napari's generic "no reader found" and hide the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_spatial_vae._layers import (
    META_KEY,
    STACK_AXES,
    LayerData,
    contrast_limits,
    pixel_scale,
)
from napari_spatial_vae.io import ParticleStack, can_read, read_stack

PathLike = str | os.PathLike[str]
ReaderFunction = Callable[[PathLike | Sequence[PathLike]], list[LayerData]]

# Stacks up to this size are read into memory (fast slicing, exact contrast); larger ones
# stay lazy and napari reads one particle per slice.
EAGER_LIMIT_BYTES = 512 * 1024**2


def get_reader(path: PathLike | Sequence[PathLike]) -> ReaderFunction | None:
    """Return :func:`read_particle_stacks` when the path looks like a particle stack.

    Parameters
    ----------
    path
        A path or a list of paths (napari passes lists when several files are dropped).

    Returns
    -------
    callable or None
        None for paths this plugin does not handle; nothing is opened here.
    """
    paths = _as_paths(path)
    # micrographs and coordinate files (their own module) before particle stacks
    from napari_spatial_vae._micrographs import get_micrograph_reader

    micrograph_reader = get_micrograph_reader(paths)
    if micrograph_reader is not None:
        return micrograph_reader
    if not paths or not all(can_read(os.fspath(p)) for p in paths):
        return None
    return read_particle_stacks


def read_particle_stacks(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Open each path as one Image layer ``(N, H, W)`` (``(N, H, W, 3)`` for colour).

    Raises
    ------
    StackError
        With a one-line message when a file cannot be read as a particle stack.
    """
    return [stack_layer(read_stack(p)) for p in _as_paths(path)]


def _as_paths(path: PathLike | Sequence[PathLike]) -> list[PathLike]:
    """The paths napari passed: one path, or a list/tuple of them.

    Raises
    ------
    TypeError
        For anything else (what ``os.fspath`` would raise on it).
    """
    if isinstance(path, (list, tuple)):
        return list(path)
    if isinstance(path, (str, os.PathLike)):
        return [path]
    raise TypeError(f"expected a path or a list of paths, not {type(path).__name__}")


def stack_layer(stack: ParticleStack, name: str | None = None) -> LayerData:
    """The Image ``LayerData`` of a particle stack.

    Small stacks are read into memory; large ones are wrapped in a dask array over the lazy
    source, one particle per chunk, so opening a 20 GB stack costs nothing and browsing it
    reads only the displayed particle. ``scale`` is the pixel size (Å) where the file gives
    it; the per-particle table and image names go into ``metadata``.
    """
    images = stack.images
    colour = len(stack.shape) == 4
    nbytes = int(np.prod(stack.shape)) * np.dtype(images.dtype).itemsize
    data: Any
    if nbytes <= EAGER_LIMIT_BYTES:
        data = np.asarray(images[:])
        if data.dtype == np.float16:  # vispy has no half-float textures
            data = data.astype(np.float32)
        sample = data
    else:
        import dask.array as da  # napari depends on dask; only large stacks need it

        data = da.from_array(
            images,
            chunks=(1, *stack.shape[1:]),
            asarray=False,
            meta=np.empty((0,) * len(stack.shape), dtype=images.dtype),
        )
        sample = images[np.linspace(0, len(stack) - 1, min(len(stack), 32)).astype(np.int64)]
    kwargs: dict[str, Any] = {
        "name": name or stack.path.stem,
        "scale": pixel_scale(stack.pixel_size, 3),
        "rgb": colour,
        "axis_labels": STACK_AXES,
        "contrast_limits": contrast_limits(sample),
        "metadata": {
            META_KEY: {
                "path": str(stack.path),
                "pixel_size": stack.pixel_size,
                "source": stack.path.name,
            },
            "particle_table": stack.metadata,
            "image_names": stack.image_names,
        },
    }
    if not colour:
        kwargs["colormap"] = "gray"
    return (data, kwargs, "image")


def layer_stack(data: Any, metadata: dict[str, Any] | None) -> Any:
    """The best stack to train or infer on for an Image layer's data.

    A layer opened by this reader from a file is reopened lazily (cheap: headers only),
    so training reads the file batch by batch through the io layer's checks; otherwise the
    layer data itself (numpy or dask) is used.
    """
    info = (metadata or {}).get(META_KEY, {})
    path = info.get("path")
    if path and Path(path).exists():
        try:
            stack = read_stack(path)
        except Exception:  # the layer data is still usable; fall back to it
            stack = None
        if stack is not None and tuple(stack.shape) == tuple(np.shape(data)):
            return stack
    if isinstance(data, np.ndarray):
        return ParticleStack.from_array(data, info.get("pixel_size"), path="<layer>")
    return data
