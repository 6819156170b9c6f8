"""Results -> napari ``LayerData`` tuples ``(data, kwargs, layer_type)``.

Pure numpy/pandas functions: no viewer, no Qt, no torch, so every layer the widget shows can
be tested on its own. The widget (and scripts) add them with ``viewer._add_layer_from_data``
or ``napari.layers.Layer.create(*layer_data)``.

Geometry (docs/io.md): in a displayed particle image (x right = column, y down = row) the
particle is its reconstruction rotated by ``theta`` counter-clockwise on screen, centred at
``(dx, dy)`` pixels from the geometric centre ``((W - 1) / 2, (H - 1) / 2)``. A Points layer
over an ``(N, H, W)`` stack therefore puts particle ``i`` at
``(i, (H - 1) / 2 + dy, (W - 1) / 2 + dx)``, and the reconstruction's x axis points along
``(row, col) = (-sin theta, cos theta)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

LayerData = tuple[Any, dict[str, Any], str]

# Layer names the widget adds and later replaces; scripts can look layers up by them.
ALIGNED = "aligned particles"
RECONSTRUCTIONS = "reconstructions"
POSES = "poses"
ORIENTATIONS = "orientations"
TRAVERSAL = "latent traversal"
LATENT_MAP = "latent map"
PREVIEW = "preview (training)"
REFERENCE = "reference template (z = 0)"
HOLD_STILL = "hold still"

#: Key under which every layer made here stores facts about its source in ``metadata``.
META_KEY = "spatial_vae"

#: Axis names of particle stacks.
STACK_AXES = ("particle", "y", "x")

#: Gap between side-by-side panels, as a fraction of the image width.
GAP_FRACTION = 0.15
# Panels left to right: input (with poses), aligned, reconstructions, latent map; the
# traversal montage goes under them all. Side by side, all stay visible at once.
COLUMN_INPUT, COLUMN_ALIGNED, COLUMN_RECONSTRUCTIONS, COLUMN_LATENT_MAP = 0, 1, 2, 3
#: The traversal montage starts this many panels down: below the latent map (two panels tall).
TRAVERSAL_ROW = 2
#: The reference template and its hold-still mask: one panel left of the input.
COLUMN_REFERENCE = -1


def panel_translate(
    image_shape: tuple[int, int],
    pixel_size: float | None,
    ndim: int,
    column: int = 0,
    row: int = 0,
) -> tuple[float, ...]:
    """Layer ``translate`` that puts a panel ``column`` to the right and ``row`` below.

    Parameters
    ----------
    image_shape
        ``(H, W)`` of a particle image; panels are one image plus a gap apart.
    pixel_size
        Å per pixel (world units), or None for pixels.
    ndim
        Dimensionality of the layer (leading axes are not moved).
    column, row
        Panel position.
    """
    height, width = image_shape
    pixel = float(pixel_size) if pixel_size else 1.0
    step_x = width * (1 + GAP_FRACTION) * pixel
    step_y = height * (1 + GAP_FRACTION) * pixel
    return (0.0,) * (ndim - 2) + (row * step_y, column * step_x)


@dataclass
class InferenceResults:
    """Everything the result layers are made from (plain arrays, safe to pass across threads).

    Attributes
    ----------
    columns
        Pose table as ``name -> (N,)`` arrays, as :meth:`core.infer.Poses.columns` returns it:
        ``theta`` (rad), ``dx``, ``dy`` (px), ``z1..zK``, then ``theta_std``, ``dx_std``,
        ``dy_std``, ``z1_std..zK_std``.
    image_shape
        ``(H, W)`` of the particle images.
    pixel_size
        Å per pixel, or None when unknown.
    aligned, reconstructions
        ``(M, H, W)`` (or ``(M, H, W, C)``) images of the first ``M <= N`` particles, or None.
    traversal
        ``(K, steps, H, W)`` latent traversal, or None (``K == 0``).
    source
        Name of the layer or file the results belong to (kept in layer metadata).
    source_path
        File the input stack was read from, when there is one (the STAR writer reopens it
        to carry the particles' RELION metadata over).
    frame
        The :class:`~napari_spatial_vae.core.frame.PoseFrame` the results hold a painted part
        still in, or None (the model's own frame). Kept in the poses layer's metadata, so the
        explore dock renders the decoder's images and the traversal in it too.
    """

    columns: Mapping[str, np.ndarray]
    image_shape: tuple[int, int]
    pixel_size: float | None = None
    aligned: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    traversal: np.ndarray | None = None
    source: str = ""
    source_path: str | None = None
    frame: Any = None

    @property
    def n_particles(self) -> int:
        """Number of particles with a pose."""
        return len(self.columns["theta"])

    @property
    def z_dim(self) -> int:
        """Number of content latents ``K``."""
        return sum(1 for name in self.columns if name[0] == "z" and name[1:].isdigit())


def pixel_scale(pixel_size: float | None, ndim: int) -> tuple[float, ...]:
    """Layer ``scale``: 1 on leading (stack/latent) axes, the pixel size on the last two."""
    size = float(pixel_size) if pixel_size else 1.0
    return (1.0,) * (ndim - 2) + (size, size)


def contrast_limits(images: np.ndarray, sample: int = 64) -> tuple[float, float]:
    """Robust (0.5 %, 99.5 %) intensity range over at most ``sample`` images.

    Noisy cryo-EM stacks have a few extreme pixels; min/max would leave particles grey.
    """
    images = np.asarray(images[: max(1, sample)], dtype=np.float32)
    finite = images[np.isfinite(images)]
    if finite.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(finite, [0.5, 99.5])
    if not high > low:
        low, high = float(finite.min()), float(finite.max())
    if not high > low:
        high = low + 1.0
    return (float(low), float(high))


def image_layer(
    images: np.ndarray,
    name: str,
    pixel_size: float | None = None,
    source: str = "",
    leading_axes: int = 1,
    axis_labels: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> LayerData:
    """An Image layer of images ``(*leading, H, W)`` or colour images ``(*leading, H, W, C)``.

    Parameters
    ----------
    images
        The pixels; ``leading_axes`` axes (particle, or latent and step) come first.
    name
        Layer name.
    pixel_size
        Å per pixel (sets ``scale`` so results overlay the input stack), or None.
    source
        Name of the input the images belong to (kept in metadata).
    leading_axes
        Number of axes before ``(H, W)``; one more trailing axis means colour (RGB).
    axis_labels
        Optional names of the non-channel axes.
    **kwargs
        Further layer keyword arguments (override the defaults).
    """
    rgb = images.ndim == leading_axes + 3
    ndim = leading_axes + 2
    layer_kwargs: dict[str, Any] = {
        "name": name,
        "scale": pixel_scale(pixel_size, ndim),
        "rgb": rgb,
        "metadata": {META_KEY: {"pixel_size": pixel_size, "source": source}},
    }
    flat = images.reshape(-1, *images.shape[leading_axes:])
    layer_kwargs["contrast_limits"] = contrast_limits(flat)
    if not rgb:
        layer_kwargs["colormap"] = "gray"
    if axis_labels is not None and len(axis_labels) == ndim:
        layer_kwargs["axis_labels"] = axis_labels
    layer_kwargs.update(kwargs)
    return (images, layer_kwargs, "image")


def aligned_layer(results: InferenceResults) -> LayerData:
    """Each input image rotated and shifted back by its inferred pose."""
    if results.aligned is None:
        raise ValueError("no aligned images in these results")
    return image_layer(
        results.aligned,
        ALIGNED,
        results.pixel_size,
        results.source,
        axis_labels=STACK_AXES,
        translate=panel_translate(results.image_shape, results.pixel_size, 3, COLUMN_ALIGNED),
    )


def reconstructions_layer(results: InferenceResults) -> LayerData:
    """The generator's image at theta = 0, dx = 0 for each particle's ``z``."""
    if results.reconstructions is None:
        raise ValueError("no reconstructions in these results")
    return image_layer(
        results.reconstructions,
        RECONSTRUCTIONS,
        results.pixel_size,
        results.source,
        axis_labels=STACK_AXES,
        translate=panel_translate(
            results.image_shape, results.pixel_size, 3, COLUMN_RECONSTRUCTIONS
        ),
    )


def preview_mosaic(inputs: np.ndarray, reconstructions: np.ndarray, columns: int = 4) -> np.ndarray:
    """Tile particles as ``[input | reconstruction]`` pairs, ``columns`` pairs per row.

    Parameters
    ----------
    inputs, reconstructions
        ``(B, H, W)`` or ``(B, H, W, C)`` in the same intensity units.
    columns
        Pairs per row.

    Returns
    -------
    numpy.ndarray
        ``(rows * H, columns * 2 * W[, C])``; empty tiles are the inputs' median.
    """
    count, height, width = inputs.shape[:3]
    rows = -(-count // columns)
    fill = float(np.median(inputs)) if inputs.size else 0.0
    out = np.full((rows * height, columns * 2 * width, *inputs.shape[3:]), fill, dtype=np.float32)
    for k in range(count):
        r, c = divmod(k, columns)
        y, x = r * height, c * 2 * width
        out[y : y + height, x : x + width] = inputs[k]
        out[y : y + height, x + width : x + 2 * width] = reconstructions[k]
    return out


def preview_layer(
    inputs: np.ndarray,
    reconstructions: np.ndarray,
    pixel_size: float | None = None,
    epoch: int = 0,
) -> LayerData:
    """Live ``[input | reconstruction]`` pairs of a few particles while training runs.

    A 2-D mosaic, so it stays visible whatever particle the dims slider shows; it sits to
    the right of the input stack.
    """
    height, width = inputs.shape[1:3]
    mosaic = preview_mosaic(inputs, reconstructions)
    return image_layer(
        mosaic,
        PREVIEW,
        pixel_size,
        leading_axes=0,
        translate=panel_translate((height, width), pixel_size, 2, COLUMN_ALIGNED),
        contrast_limits=contrast_limits(inputs),
        metadata={META_KEY: {"epoch": epoch, "preview": True}},
    )


def pose_features(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The per-particle table shown as layer ``features``.

    Columns: ``particle`` (0-based index), ``theta_deg``, ``theta`` (rad), ``dx``, ``dy``
    (px), ``z1..zK``, ``theta_std_deg``, ``theta_std`` (rad), ``dx_std``, ``dy_std``,
    ``z1_std..zK_std``. Degrees are added for people; radians keep the CSV convention.
    """
    n = len(columns["theta"])
    table: dict[str, np.ndarray] = {"particle": np.arange(n)}
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float64)
        if name == "theta":
            table["theta_deg"] = np.degrees(values)
        elif name == "theta_std":
            table["theta_std_deg"] = np.degrees(values)
        table[name] = values
    return pd.DataFrame(table)


def poses_layer(
    results: InferenceResults, color_by: str = "theta_deg", point_size: float | None = None
) -> LayerData:
    """One point per particle, at its frame and inferred centre, with the pose table.

    The face colour follows ``color_by`` (any feature column; angles use the cyclic
    ``twilight`` colour map so -180° and 180° look the same).
    """
    height, width = results.image_shape
    columns = results.columns
    n = results.n_particles
    data = np.column_stack(
        [
            np.arange(n, dtype=np.float64),
            (height - 1) / 2 + np.asarray(columns["dy"], dtype=np.float64),
            (width - 1) / 2 + np.asarray(columns["dx"], dtype=np.float64),
        ]
    )
    features = pose_features(columns)
    if color_by not in features.columns:
        raise ValueError(f"no feature {color_by!r}; choose one of {', '.join(features.columns)}")
    kwargs: dict[str, Any] = {
        "name": POSES,
        "features": features,
        "scale": pixel_scale(results.pixel_size, 3),
        "size": point_size if point_size is not None else max(2.0, min(height, width) / 12),
        "face_color": color_by,
        "border_color": "white",
        "border_width": 0.1,
        "symbol": "disc",
        "out_of_slice_display": False,
        "metadata": {
            META_KEY: {
                "source": results.source,
                "path": results.source_path,
                "image_shape": tuple(results.image_shape),
                "pixel_size": results.pixel_size,
                "frame": results.frame,
            }
        },
    }
    kwargs.update(_colormap_for(color_by, features[color_by]))
    return (data, kwargs, "points")


def _colormap_for(feature: str, values: pd.Series) -> dict[str, Any]:
    if feature.startswith("theta") and not feature.startswith("theta_std"):
        limits = (-180.0, 180.0) if feature.endswith("deg") else (-np.pi, np.pi)
        return {"face_colormap": "twilight", "face_contrast_limits": limits}
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    return {
        "face_colormap": "viridis",
        "face_contrast_limits": (low, high if high > low else low + 1),
    }


def orientation_layer(results: InferenceResults, length: float | None = None) -> LayerData:
    """Vectors from each particle centre along its reconstruction's x axis (theta)."""
    height, width = results.image_shape
    theta = np.asarray(results.columns["theta"], dtype=np.float64)
    n = len(theta)
    length = length if length is not None else min(height, width) / 4
    data = np.zeros((n, 2, 3))
    data[:, 0, 0] = np.arange(n)
    data[:, 0, 1] = (height - 1) / 2 + np.asarray(results.columns["dy"], dtype=np.float64)
    data[:, 0, 2] = (width - 1) / 2 + np.asarray(results.columns["dx"], dtype=np.float64)
    # counter-clockwise on screen (rows grow downwards): x axis -> (row, col) = (-sin, cos)
    data[:, 1, 1] = -np.sin(theta) * length
    data[:, 1, 2] = np.cos(theta) * length
    kwargs = {
        "name": ORIENTATIONS,
        "features": pose_features(results.columns)[["particle", "theta_deg"]],
        "scale": pixel_scale(results.pixel_size, 3),
        "edge_width": max(0.5, min(height, width) / 60),
        "edge_color": "yellow",
        "vector_style": "arrow",
        "out_of_slice_display": False,
        "metadata": {META_KEY: {"source": results.source}},
    }
    return (data, kwargs, "vectors")


def montage(images: np.ndarray, gap: int = 1, fill: float | None = None) -> np.ndarray:
    """Tile ``(R, C, H, W)`` (or ``(R, C, H, W, ch)``) images into one 2-D image.

    Row ``r`` and column ``c`` of the grid hold ``images[r, c]``; ``gap`` pixels of ``fill``
    (default: the images' median) separate the tiles.

    Returns
    -------
    numpy.ndarray
        ``(R * H + (R - 1) * gap, C * W + (C - 1) * gap[, ch])`` float32.
    """
    rows, cols, height, width = images.shape[:4]
    fill = float(np.median(images)) if fill is None else fill
    out = np.full(
        (rows * height + (rows - 1) * gap, cols * width + (cols - 1) * gap, *images.shape[4:]),
        fill,
        dtype=np.float32,
    )
    for r in range(rows):
        for c in range(cols):
            y, x = r * (height + gap), c * (width + gap)
            out[y : y + height, x : x + width] = images[r, c]
    return out


def traversal_layer(
    traversal: np.ndarray, pixel_size: float | None = None, source: str = ""
) -> LayerData:
    """Images along each latent axis as one 2-D montage: row k walks ``z(k+1)``.

    A 2-D layer has no slider of its own, so the traversal stays visible whatever particle
    the stacks' slider shows. ``metadata`` keeps the ``(K, steps, H, W)`` layout.
    """
    if traversal.ndim < 4:
        raise ValueError(f"a traversal is (K, steps, H, W), got shape {traversal.shape}")
    image_shape = traversal.shape[2:4]
    z_dim, steps = traversal.shape[:2]
    return image_layer(
        montage(traversal),
        TRAVERSAL,
        pixel_size,
        source,
        leading_axes=0,
        translate=panel_translate(image_shape, pixel_size, 2, COLUMN_INPUT, row=TRAVERSAL_ROW),
        contrast_limits=contrast_limits(traversal.reshape(-1, *traversal.shape[2:])),
        metadata={
            META_KEY: {
                "pixel_size": pixel_size,
                "source": source,
                "traversal": {"z_dim": z_dim, "steps": steps, "gap": 1},
            }
        },
    )


def latent_coordinates(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str, str]:
    """What to plot in the latent map: ``(x, y, x_label, y_label)``.

    ``z1`` vs ``z2`` for ``K == 2``; the first two principal components of ``z`` for
    ``K > 2``; ``z1`` vs theta (radians) for ``K == 1``; ``dx`` vs ``dy`` for ``K == 0``.
    """
    z_names = [c for c in features.columns if c[0] == "z" and c[1:].isdigit()]
    if len(z_names) == 2:
        return features[z_names[0]].to_numpy(), features[z_names[1]].to_numpy(), "z1", "z2"
    if len(z_names) > 2:
        z = features[z_names].to_numpy(dtype=np.float64)
        z = z - z.mean(axis=0)
        # SVD rows of vt are the principal axes; signs are arbitrary but stable for a run
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        pcs = z @ vt[:2].T
        return pcs[:, 0], pcs[:, 1], "PC1 of z", "PC2 of z"
    if len(z_names) == 1:
        return features["z1"].to_numpy(), features["theta"].to_numpy(), "z1", "theta (rad)"
    return features["dx"].to_numpy(), features["dy"].to_numpy(), "dx (px)", "dy (px)"


def latent_map_layer(results: InferenceResults, extent: float | None = None) -> LayerData:
    """The latent space as a 2-D scatter, one point per particle, coloured by theta.

    The layer's data are the latent values themselves (row = -y so larger values plot
    upwards); ``scale`` and ``translate`` fit the cloud into an ``extent``-sized square
    (default: two image sizes) right of the reconstructions, so it shares the
    canvas with the images. Features are the full pose table, so a selected point tells
    which particle it is.
    """
    height, width = results.image_shape
    features = pose_features(results.columns)
    x, y, x_label, y_label = latent_coordinates(features)
    data = np.column_stack([-np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)])
    # two panels wide: a cloud of thousands of points needs more room than one particle
    extent = float(extent if extent is not None else 2 * max(height, width))
    span = float(np.ptp(data, axis=0).max()) if len(data) else 0.0
    unit = extent / span if span > 0 else 1.0
    centre = (data.max(axis=0) + data.min(axis=0)) / 2 if len(data) else np.zeros(2)
    pixel = float(results.pixel_size) if results.pixel_size else 1.0
    scale = (unit * pixel, unit * pixel)
    # top-align the cloud with the images, right of the reconstructions (world coordinates)
    left = panel_translate(results.image_shape, None, 2, COLUMN_LATENT_MAP)[1]
    translate = (
        (extent / 2 - 0.5 - centre[0] * unit) * pixel,
        (left + extent / 2 - centre[1] * unit) * pixel,
    )
    kwargs: dict[str, Any] = {
        "name": LATENT_MAP,
        "features": features,
        "scale": scale,
        "translate": translate,
        "size": max(extent / 50, 1e-3) / unit,
        "face_color": "theta_deg",
        "face_colormap": "twilight",
        "face_contrast_limits": (-180.0, 180.0),
        "border_width": 0,
        "metadata": {
            META_KEY: {
                "source": results.source,
                "x_label": x_label,
                "y_label": y_label,
                "axes": "row = -y, column = x",
            }
        },
    }
    return (data, kwargs, "points")


def result_layers(results: InferenceResults, color_by: str = "theta_deg") -> list[LayerData]:
    """All result layers present in ``results``, in the order the widget stacks them."""
    layers: list[LayerData] = []
    if results.aligned is not None:
        layers.append(aligned_layer(results))
    if results.reconstructions is not None:
        layers.append(reconstructions_layer(results))
    if results.traversal is not None:
        layers.append(traversal_layer(results.traversal, results.pixel_size, results.source))
    layers.append(poses_layer(results, color_by))
    layers.append(orientation_layer(results))
    layers.append(latent_map_layer(results))
    return layers


def pose_table(features: pd.DataFrame) -> pd.DataFrame:
    """The CSV/STAR pose table (radians, pixels) back from layer features.

    Drops the display-only columns (``particle``, ``*_deg``); keeps ``theta``, ``dx``,
    ``dy``, ``z1..zK`` and the std columns in the order :func:`io.write_poses` expects.

    Raises
    ------
    ValueError
        When ``theta``, ``dx`` or ``dy`` is missing (not a poses layer).
    """
    missing = [c for c in ("theta", "dx", "dy") if c not in features.columns]
    if missing:
        raise ValueError(
            f"the layer's features lack {', '.join(missing)}: not a spatial-VAE poses layer"
        )
    keep = [c for c in features.columns if c != "particle" and not c.endswith("_deg")]
    return features[keep].reset_index(drop=True)
