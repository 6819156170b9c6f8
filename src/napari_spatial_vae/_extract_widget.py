"""The "Extract particles" dock widget: micrograph layer + picks layer -> a particle layer.

It writes a RELION particle STAR with one ``.mrcs`` per micrograph (as ``spatial-vae
extract``) in a worker thread and adds the particles as a new Image layer, opened from that
STAR like any particle file, so the spatial-VAE widget trains on it directly with its CTF.
A score threshold hides weak picks on the Points layer and leaves them out of extraction.
"""

from pathlib import Path
from typing import Any

import napari.layers
import numpy as np
import pandas as pd
from magicgui import magic_factory
from napari.qt.threading import FunctionWorker, thread_worker
from napari.types import LayerDataTuple
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from napari_spatial_vae._layers import META_KEY
from napari_spatial_vae.io.coordinates import match_micrograph_key, match_picks
from napari_spatial_vae.io.errors import StackError
from napari_spatial_vae.io.micrographs import MicrographSet, micrograph_key, read_micrographs

__all__ = ["make_extract_widget", "micrographs_from_layer", "picks_from_layer"]


def micrographs_from_layer(layer: napari.layers.Image) -> MicrographSet:
    """The micrographs behind an Image layer, with their CTF table where known.

    A layer opened from micrograph files is reopened from them (headers only); any other
    ``(N, H, W)`` or ``(H, W)`` layer is used as it is, with the names, table and pixel size
    its metadata may hold.
    """
    info = layer.metadata.get(META_KEY, {})
    sources = info.get("sources")
    if info.get("kind") == "micrographs" and sources:
        reopened = read_micrographs(sources if len(sources) > 1 else sources[0])
        if tuple(reopened.images.shape) == tuple(layer.data.shape):
            return reopened
    pixel_size = info.get("pixel_size")
    if pixel_size is None and float(layer.scale[-1]) != 1.0:
        pixel_size = float(layer.scale[-1])
    return MicrographSet.from_array(
        layer.data,
        layer.metadata.get("micrograph_names"),
        pixel_size,
        layer.metadata.get("micrograph_table"),
        source=f"image layer '{layer.name}'",
    )


def picks_from_layer(
    points: napari.layers.Points,
    image: napari.layers.Image,
    micrographs: MicrographSet,
    min_score: float | None = None,
) -> pd.DataFrame:
    """The picks of a Points layer in the micrographs' pixels, matched to micrographs.

    Points are mapped through both layers' scale and translate, so they may have been drawn
    on a layer with another scale. A point's micrograph is its frame; frames named in the
    layer's metadata (a coordinate file opened before its micrographs) are matched by name.
    """
    where = f"points layer '{points.name}'"
    data = np.asarray(points.data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] not in (2, 3):
        raise StackError(where, f"points must be (frame, y, x) or (y, x), got {data.shape}")
    world = data * np.asarray(points.scale) + np.asarray(points.translate)
    dims = data.shape[1]
    pixels = (world - np.asarray(image.translate)[-dims:]) / np.asarray(image.scale)[-dims:]
    if dims == 2:
        if len(micrographs) != 1:
            raise StackError(where, "points have no micrograph axis but there are several")
        frames = np.zeros(len(data), dtype=np.int64)
    else:
        frames = np.rint(pixels[:, 0]).astype(np.int64)
    names = micrographs.names
    frame_names = points.metadata.get("frame_micrographs")
    if frame_names and [micrograph_key(n) for n in frame_names] != micrographs.keys:
        keys = {k: i for i, k in enumerate(micrographs.keys)}
        by_frame = [match_micrograph_key(n, keys) for n in frame_names]
        frames = np.array(
            [
                by_frame[f] if 0 <= f < len(by_frame) and by_frame[f] is not None else -1
                for f in frames.tolist()
            ],
            dtype=np.int64,
        )
    bad = (frames < 0) | (frames >= len(names))
    if bad.any():
        row = int(np.argmax(bad))
        raise StackError(where, f"row {row + 1}: on no micrograph of layer '{image.name}'")
    features = points.features
    score = (
        features["score"].to_numpy(dtype=np.float64)
        if "score" in features.columns
        else np.full(len(data), np.nan)
    )
    picks = pd.DataFrame(
        {
            "micrograph": [names[f] for f in frames.tolist()],
            "x": pixels[:, -1],
            "y": pixels[:, -2],
            "score": score,
            "file": where,
            "row": np.arange(1, len(data) + 1),
        }
    )
    if min_score is not None:
        picks = picks[~(picks["score"] < min_score)]  # picks without a score stay
    if len(picks) == 0:
        raise StackError(where, "no picks to extract")
    return match_picks(picks.reset_index(drop=True), micrographs)


def _update_shown(points: Any, use_threshold: bool, min_score: float) -> None:
    """Hide picks under the threshold (napari's ``shown``), or show them all."""
    if points is None or len(points.data) == 0:
        return
    if use_threshold and "score" in points.features.columns:
        score = points.features["score"].to_numpy(dtype=np.float64)
        points.shown = ~(score < min_score)
    else:
        points.shown = np.ones(len(points.data), dtype=bool)


def _init(widget: Any) -> None:
    def refresh(*_: Any) -> None:
        _update_shown(widget.picks.value, widget.use_threshold.value, widget.min_score.value)

    widget.use_threshold.changed.connect(refresh)
    widget.min_score.changed.connect(refresh)
    widget.picks.changed.connect(refresh)


@magic_factory(
    widget_init=_init,
    call_button="Extract",
    micrographs={"label": "micrographs"},
    picks={"label": "picks"},
    box={"label": "box (px)", "min": 2, "max": 8192, "step": 2},
    size={"label": "size (px, 0 = box)", "min": 0, "max": 8192, "step": 2},
    invert={"label": "invert contrast (dark particles -> white)"},
    use_threshold={"label": "hide picks under the score"},
    min_score={"label": "min score", "min": -1e6, "max": 1e6, "step": 0.05},
    output={"label": "particles STAR", "mode": "w", "filter": "*.star"},
)
def make_extract_widget(
    micrographs: napari.layers.Image,
    picks: napari.layers.Points,
    box: int = 128,
    size: int = 64,
    invert: bool = True,
    use_threshold: bool = False,
    min_score: float = 0.5,
    output: Path = Path("particles/particles.star"),
) -> FunctionWorker[LayerDataTuple]:
    """Extract the picks into a particle STAR and add the particles as a layer."""
    from napari_spatial_vae._reader import stack_layer
    from napari_spatial_vae.extraction import check_box_sizes, extract_particles
    from napari_spatial_vae.io import read_stack

    star = Path(output).expanduser()
    if star.suffix.lower() != ".star":
        star = star.with_suffix(".star")

    done: list[str] = []

    @thread_worker
    def work() -> LayerDataTuple:
        mics = micrographs_from_layer(micrographs)
        check_box_sizes(mics, box, size or None)
        table = picks_from_layer(picks, micrographs, mics, min_score if use_threshold else None)
        star.parent.mkdir(parents=True, exist_ok=True)
        result = extract_particles(mics, table, star, box, size or None, invert=invert)
        skipped = f", skipped {result.n_skipped} whose box leaves the micrograph"
        done.append(
            f"extracted {result.n_particles} particles to {star}"
            + (skipped if result.n_skipped else "")
        )
        data, kwargs, kind = stack_layer(read_stack(star), name=f"particles ({star.stem})")
        return (data, kwargs, kind)

    worker = work()
    # notifications go out from the Qt thread, not the worker
    worker.errored.connect(lambda err: show_error(str(err)))
    worker.returned.connect(lambda _: show_info(done[-1]) if done else None)
    # napari connects the layer-adding slot to the returned worker after this function
    # returns; start it from the event loop, so that connection is in place first
    QTimer.singleShot(0, worker.start)
    return worker
