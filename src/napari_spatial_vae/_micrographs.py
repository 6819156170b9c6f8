"""napari side of micrographs: the reader, the layers, and the synthetic sample.

Micrographs open as one Image layer ``(N, H, W)`` (one frame per micrograph, browsed with the
slider) over a dask array with one micrograph per chunk, so only the shown micrograph is
read; the pixel size is the layer ``scale``. Coordinates open as a Points layer on those
frames: point ``(frame, row, column)`` with the same scale, so picks sit on their particles
and napari's own tools add, delete and move them; pick scores are the ``score`` feature.

Which file is what is decided cheaply from its name and first bytes (see
:func:`micrograph_file_kind`); particle stacks stay with :mod:`._reader`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_spatial_vae._layers import META_KEY, LayerData, contrast_limits, pixel_scale
from napari_spatial_vae.io.coordinates import match_micrograph_key, read_coordinates
from napari_spatial_vae.io.errors import StackError
from napari_spatial_vae.io.micrographs import MicrographSet, micrograph_key, read_micrographs

__all__ = [
    "MICROGRAPH_AXES",
    "get_micrograph_reader",
    "make_synthetic_micrographs",
    "micrograph_file_kind",
    "micrograph_layer",
    "picks_layer",
]

MICROGRAPH_AXES = ("micrograph", "y", "x")
# A single 2-D MRC this large is a micrograph, not a particle image.
MIN_MICROGRAPH_SIDE = 1024
# How far into a STAR file to look for its labels.
_SNIFF_BYTES = 1 << 16

ReaderFunction = Callable[[Any], list[LayerData]]


def _star_labels(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def micrograph_file_kind(path: str | os.PathLike[str]) -> str | None:
    """``"micrographs"``, ``"coordinates"`` or None (not ours: a particle stack or other).

    * ``.box``, ``.cbox``, topaz ``.txt`` (header ``image_name``): coordinates;
    * ``.star`` without ``rlnImageName``: coordinates when it has ``rlnCoordinateX``,
      micrographs when it has ``rlnMicrographName``;
    * cryoSPARC ``.cs`` with ``location/center_x_frac`` but no ``blob/path``: coordinates;
    * a 2-D ``.mrc`` of at least 1024 pixels a side: a micrograph;
    * a folder of ``.mrc`` files: micrographs; a folder of coordinate files: coordinates.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir():
        try:
            suffixes = {e.suffix.lower() for e in p.iterdir() if not e.name.startswith(".")}
        except OSError:
            return None
        if ".mrc" in suffixes:
            return "micrographs"
        if suffixes & {".box", ".cbox"}:
            return "coordinates"
        return None
    if suffix in (".box", ".cbox"):
        return "coordinates"
    if suffix == ".txt":
        return "coordinates" if _star_labels(p).lstrip().startswith("image_name") else None
    if suffix == ".star":
        text = _star_labels(p)
        if "rlnImageName" in text:
            return None
        if "rlnCoordinateX" in text:
            return "coordinates"
        return "micrographs" if "rlnMicrographName" in text else None
    if suffix == ".cs":
        try:
            fields = np.load(p, mmap_mode="r", allow_pickle=False).dtype.names or ()
        except Exception:  # not ours to judge; the particle reader will explain
            return None
        if "location/center_x_frac" in fields and "blob/path" not in fields:
            return "coordinates"
        return None
    if suffix == ".mrc":
        return "micrographs" if _is_large_2d_mrc(p) else None
    return None


def _is_large_2d_mrc(path: Path) -> bool:
    try:
        header = np.fromfile(path, dtype="<i4", count=3)
    except (OSError, ValueError):
        return False
    if header.size < 3:
        return False
    nx, ny, nz = (int(v) for v in header)
    if not (0 < nx < 1 << 20 and 0 < ny < 1 << 20):  # big-endian or not an MRC file
        return False
    return nz == 1 and min(nx, ny) >= MIN_MICROGRAPH_SIDE


def _paths(path: Any) -> list[Path]:
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    return [Path(path)]


def get_micrograph_reader(path: Any) -> ReaderFunction | None:
    """The reader for micrographs or coordinate files, None for anything else.

    All paths must be of one kind (several micrographs, or several coordinate files).
    """
    paths = _paths(path)
    kinds = {micrograph_file_kind(p) for p in paths}
    if kinds == {"micrographs"}:
        return read_micrograph_layers
    if kinds == {"coordinates"}:
        return read_coordinate_layers
    return None


def read_micrograph_layers(path: Any) -> list[LayerData]:
    """Open micrographs (files, a folder or a STAR) as one lazy Image layer."""
    paths = _paths(path)
    micrographs = read_micrographs(paths[0] if len(paths) == 1 else paths)
    return [micrograph_layer(micrographs, sources=[str(p) for p in paths])]


def read_coordinate_layers(path: Any) -> list[LayerData]:
    """Open coordinate files as one Points layer.

    Frames follow the micrograph layer already in the viewer (matched by base name) when
    there is one; otherwise the micrographs in order of first appearance, remembered in the
    layer's metadata so that extraction can match them by name later.
    """
    paths = _paths(path)
    picks = read_coordinates(paths)
    names, pixel_size = _micrographs_in_viewer()
    if names is not None and _frames(picks, names).isna().all():
        names = None  # picks of other micrographs: show them on frames of their own
    name = paths[0].stem if len(paths) == 1 else f"{paths[0].parent.name} picks"
    return [picks_layer(picks, names, pixel_size, name=name)]


def _frames(picks: pd.DataFrame, frame_keys: Sequence[str]) -> pd.Series:
    """Frame of every pick among micrographs ``frame_keys`` (base names); NaN where none."""
    keys = picks["micrograph"].astype(str).map(micrograph_key)
    frame_of = {micrograph_key(k): i for i, k in enumerate(frame_keys)}
    cache = {k: frame_of.get(k, match_micrograph_key(k, frame_of)) for k in keys.unique()}
    return keys.map(cache).astype("float64")


def _micrographs_in_viewer() -> tuple[list[str] | None, float | None]:
    """Micrograph names and pixel size of the newest micrograph layer in the viewer."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no napari, or no viewer (scripts, tests)
        return None, None
    if viewer is None:
        return None, None
    for layer in reversed(list(viewer.layers)):
        names = layer.metadata.get("micrograph_names")
        if names:
            return list(names), layer.metadata.get(META_KEY, {}).get("pixel_size")
    return None, None


def micrograph_layer(
    micrographs: MicrographSet, sources: Sequence[str] | None = None, name: str | None = None
) -> LayerData:
    """The Image ``LayerData`` of a micrograph set: lazy, one micrograph per chunk.

    ``metadata`` holds the micrograph names, their STAR table (CTF) and the paths to reopen
    them from (``sources``) for extraction.
    """
    import dask.array as da  # napari depends on dask

    images = micrographs.images
    data = da.from_array(
        images,
        chunks=(1, *images.shape[1:]),
        asarray=False,
        meta=np.empty((0, 0, 0), dtype=images.dtype),
    )
    first = np.asarray(images[0], dtype=np.float32)[::4, ::4]
    kwargs: dict[str, Any] = {
        "name": name or f"micrographs ({micrographs.source.name})",
        "scale": pixel_scale(micrographs.pixel_size, 3),
        "colormap": "gray",
        "axis_labels": MICROGRAPH_AXES,
        "contrast_limits": contrast_limits(first[None]),
        "metadata": {
            META_KEY: {
                "kind": "micrographs",
                "path": str(micrographs.source),
                "sources": list(sources) if sources is not None else None,
                "pixel_size": micrographs.pixel_size,
                "source": micrographs.source.name,
            },
            "micrograph_names": list(micrographs.names),
            "micrograph_table": micrographs.table,
        },
    }
    return (data, kwargs, "image")


def picks_layer(
    picks: pd.DataFrame,
    micrograph_names: Sequence[str] | None = None,
    pixel_size: float | None = None,
    name: str = "picks",
    point_size: float = 48.0,
) -> LayerData:
    """A Points ``LayerData``: one point ``(frame, y, x)`` per pick, ``score`` as feature.

    Parameters
    ----------
    picks : pandas.DataFrame
        :func:`~napari_spatial_vae.io.coordinates.read_coordinates`'s table.
    micrograph_names : sequence of str, optional
        The micrograph layer's frames; picks are put on the frame of their micrograph
        (matched by base name); a pick of a micrograph not listed raises
        :class:`~napari_spatial_vae.io.StackError`. Without it, frames are the picks'
        micrographs in order of first appearance.
    pixel_size : float, optional
        Å per pixel (the micrograph layer's scale).
    point_size : float
        Marker diameter in pixels.
    """
    if micrograph_names is None:
        keys = picks["micrograph"].astype(str).map(micrograph_key)
        frame_keys = list(dict.fromkeys(keys))
    else:
        frame_keys = [micrograph_key(n) for n in micrograph_names]
    frames = _frames(picks, frame_keys)
    unmatched = frames.isna().to_numpy()
    if unmatched.any():
        k = int(np.argmax(unmatched))
        raise StackError(
            picks["file"].iloc[k],
            f"row {picks['row'].iloc[k]}: micrograph '{picks['micrograph'].iloc[k]}' is not"
            f" among the {len(frame_keys)} micrographs of the micrograph layer",
        )
    data = np.stack(
        [
            frames.to_numpy(dtype=np.float64),
            picks["y"].to_numpy(dtype=np.float64),
            picks["x"].to_numpy(dtype=np.float64),
        ],
        axis=1,
    ).reshape(-1, 3)
    features = pd.DataFrame(
        {
            "score": picks["score"].to_numpy(dtype=np.float64),
            "micrograph": [frame_keys[int(f)] for f in frames],
        }
    )
    scored = bool(np.isfinite(features["score"]).any())
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": pixel_scale(pixel_size, 3),
        "size": point_size,
        "symbol": "square",
        "face_color": "transparent",
        # weak picks stand out when the border colour follows the score
        "border_color": "score" if scored else "yellow",
        "border_width": 0.05,
        "features": features,
        "axis_labels": MICROGRAPH_AXES,
        "metadata": {
            META_KEY: {"kind": "picks", "pixel_size": pixel_size},
            "frame_micrographs": frame_keys,
        },
    }
    if scored:
        kwargs["border_colormap"] = "plasma"
    return (data, kwargs, "points")


def make_synthetic_micrographs(
    n_micrographs: int = 4,
    side: int = 1024,
    n_particles: int = 40,
    n_false_picks: int = 8,
    particle_size: int = 64,
    pixel_size: float = 2.0,
    seed: int = 0,
) -> list[LayerData]:
    """Synthetic micrographs with their CTF, and picks with scores (some of them wrong).

    The true particles get scores in 0.5..1, the false picks (on empty ice) 0..0.4, so the
    ``score`` feature separates them, as a picker's figure of merit roughly does. Extract
    with a box of 64 px from the widget and train on the result.
    """
    from napari_spatial_vae.core.simulate_micrographs import OPTICS, simulate_micrograph
    from napari_spatial_vae.io.particles_star import micrographs_star_tables

    rng = np.random.default_rng(seed)
    images, ctf, picks = [], [], []
    names = [f"synthetic_{k + 1:03d}.mrc" for k in range(n_micrographs)]
    for k in range(n_micrographs):
        sim = simulate_micrograph(
            (side, side), n_particles, particle_size, pixel_size, noise_std=0.5, seed=seed + k
        )
        images.append(sim.image)
        ctf.append(sim.ctf)
        false_xy = rng.uniform(particle_size, side - particle_size, (n_false_picks, 2))
        picks.append(
            pd.DataFrame(
                {
                    "micrograph": names[k],
                    "x": np.concatenate([sim.x, false_xy[:, 0]]),
                    "y": np.concatenate([sim.y, false_xy[:, 1]]),
                    "score": np.concatenate(
                        [rng.uniform(0.5, 1.0, n_particles), rng.uniform(0.0, 0.4, n_false_picks)]
                    ),
                    "truth": [True] * n_particles + [False] * n_false_picks,
                }
            )
        )
    blocks = micrographs_star_tables(names, pixel_size, pd.DataFrame(ctf), **OPTICS)
    # the micrographs STAR's rows with the optics merged in, as read_micrographs gives them
    table = blocks["micrographs"].merge(blocks["optics"], on="rlnOpticsGroup", how="left")
    micrographs = MicrographSet.from_array(
        np.stack(images), names, pixel_size, table, source="synthetic micrographs"
    )
    image = micrograph_layer(micrographs, name="synthetic micrographs")
    all_picks = pd.concat(picks, ignore_index=True)
    points = picks_layer(
        all_picks, names, pixel_size, name="synthetic picks", point_size=particle_size
    )
    points[1]["metadata"]["truth"] = all_picks["truth"].to_numpy()
    image[1]["metadata"][META_KEY]["path"] = None
    return [image, points]
