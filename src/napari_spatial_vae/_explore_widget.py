"""The "spatial-VAE explore" dock: latent plot, selections, clusters, averages, subsets, movies.

It works on the result layers the spatial-VAE dock (or a script using :mod:`._layers`) added:
the poses Points layer (one point per particle, the pose table as ``features``, the source
file and image shape in ``metadata``) and the particle Image layer it was inferred from. It
needs no trained model except for the decoder images and the traversal movie (the poses
layer's ``run_dir``, set by the spatial-VAE dock, or any run folder chosen here).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui import widgets
from magicgui.types import FileDialogMode
from napari.layers import Image, Layer, Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_spatial_vae._latent_plot import CLUSTER_COLOURS, LatentPlot
from napari_spatial_vae._layers import (
    COLUMN_LATENT_MAP,
    LATENT_MAP,
    META_KEY,
    image_layer,
    latent_coordinates,
    montage,
    panel_translate,
    pose_table,
)
from napari_spatial_vae._reader import layer_stack

if TYPE_CHECKING:
    import napari

#: Layers this dock adds (replaced on the next average).
AVERAGES = "averages"
DECODED = "decoder at mean z"
#: Panel column of the averages: right of the latent map (two panels wide).
COLUMN_AVERAGES = COLUMN_LATENT_MAP + 2


def is_poses_layer(layer: Layer) -> bool:
    """A Points layer with a pose table (theta, dx, dy) and the spatial-VAE metadata."""
    if not isinstance(layer, Points) or layer.name == LATENT_MAP:
        return False
    info = layer.metadata.get(META_KEY, {})
    return "image_shape" in info and {"theta", "dx", "dy"} <= set(layer.features.columns)


def z_columns(features: pd.DataFrame) -> list[str]:
    """``z1..zK`` in order."""
    names = [c for c in features.columns if str(c)[:1] == "z" and str(c)[1:].isdigit()]
    return sorted(names, key=lambda c: int(c[1:]))


class ExploreWidget(QWidget):
    """Browse the latent space of inferred poses and back states with data.

    Parameters
    ----------
    napari_viewer
        The viewer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.selection = np.zeros(0, dtype=np.int64)
        self.labels: np.ndarray | None = None
        self._model: Any = None
        self._model_dir: Path | None = None
        self._worker: Any = None
        self._watched: Points | None = None
        self._build()
        events = self.viewer.layers.events
        events.inserted.connect(self._reset_choices)
        events.removed.connect(self._reset_choices)
        self._reset_choices()
        self._on_poses_changed(self.poses_choice.value)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.poses_choice = widgets.ComboBox(
            label="poses", choices=self._poses_layers, tooltip="Points layer of inferred poses."
        )
        self.particles_choice = widgets.ComboBox(
            label="particles",
            choices=self._image_layers,
            tooltip="The particle stack the poses belong to (averages are made of it).",
        )
        self.colour_choice = widgets.ComboBox(label="colour by", choices=["theta_deg"])
        self.run_dir = widgets.FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY,
            label="model",
            value=None,
            tooltip="Run folder for the decoder images and the traversal movie (default: the "
            "model that made the poses).",
        )
        choices = widgets.Container(
            widgets=[self.poses_choice, self.particles_choice, self.colour_choice, self.run_dir],
            labels=True,
        )
        self.plot = LatentPlot(self._on_plot_selection)
        self.count_label = QLabel("no selection: drag a lasso (or a straight line for a box)")
        self.count_label.setWordWrap(True)
        self.show_index = QSpinBox()
        self.show_index.setPrefix("show selected #")
        self.show_index.setMinimum(1)
        self.show_index.setToolTip("Step the particle layer through the selection.")
        self.show_index.valueChanged.connect(self._on_show_index)
        clear = QPushButton("Clear")
        clear.clicked.connect(lambda: self.select(np.zeros(0, dtype=np.int64)))
        select_row = QHBoxLayout()
        select_row.addWidget(self.show_index)
        select_row.addWidget(clear)

        self.method = widgets.ComboBox(label="method", choices=["kmeans", "gmm"])
        self.k = widgets.SpinBox(label="k", value=4, min=1, max=64)
        self.cluster_button = QPushButton("Cluster")
        self.cluster_button.setToolTip("k-means or Gaussian mixture on z (seed 0).")
        self.cluster_button.clicked.connect(lambda: self.cluster())
        cluster_row = QHBoxLayout()
        cluster_row.addWidget(
            widgets.Container(widgets=[self.method, self.k], layout="horizontal").native
        )
        cluster_row.addWidget(self.cluster_button)

        self.average_button = QPushButton("Average selection")
        self.average_button.clicked.connect(lambda: self.average_selection())
        self.cluster_average_button = QPushButton("Average each cluster")
        self.cluster_average_button.clicked.connect(lambda: self.average_clusters())
        self.export_button = QPushButton("Export subset…")
        self.export_button.setToolTip("Selected particles as RELION STAR or cryoSPARC .cs.")
        self.export_button.clicked.connect(self._on_export_clicked)
        self.movie_button = QPushButton("Save movie…")
        self.movie_button.setToolTip("GIF of the latent traversal, or of the cluster averages.")
        self.movie_button.clicked.connect(self._on_movie_clicked)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        actions = QGroupBox("Averages, subsets, movies")
        grid = QVBoxLayout(actions)
        for pair in (
            (self.average_button, self.cluster_average_button),
            (self.export_button, self.movie_button),
        ):
            row = QHBoxLayout()
            for button in pair:
                row.addWidget(button)
            grid.addLayout(row)
        grid.addWidget(self.status)

        layout = QVBoxLayout(self)
        layout.addWidget(choices.native)
        layout.addWidget(self.plot)
        layout.addWidget(self.count_label)
        layout.addLayout(select_row)
        layout.addLayout(cluster_row)
        layout.addWidget(actions)
        layout.addStretch(1)
        self.setMinimumWidth(340)
        self.poses_choice.changed.connect(self._on_poses_changed)
        self.colour_choice.changed.connect(lambda _value: self._recolour())

    def _poses_layers(self, _widget: Any = None) -> list[Points]:
        return [layer for layer in self.viewer.layers if is_poses_layer(layer)]

    def _image_layers(self, _widget: Any = None) -> list[Image]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb
        ]

    def _reset_choices(self, _event: Any = None) -> None:
        before = self.poses_choice.value
        self.poses_choice.reset_choices()
        self.particles_choice.reset_choices()
        if self.poses_choice.value is not before:
            self._on_poses_changed(self.poses_choice.value)

    # ------------------------------------------------------------------ poses

    @property
    def poses(self) -> Points | None:
        """The chosen poses layer."""
        return self.poses_choice.value

    @property
    def features(self) -> pd.DataFrame:
        """The chosen poses layer's feature table (empty without one)."""
        return self.poses.features if self.poses is not None else pd.DataFrame()

    def _on_poses_changed(self, layer: Points | None) -> None:
        # new results replace the poses layer's data in place: show them when they come
        if self._watched is not layer:
            if self._watched is not None:
                self._watched.events.data.disconnect(self._on_poses_data)
            if layer is not None:
                layer.events.data.connect(self._on_poses_data)
            self._watched = layer
        self.selection = np.zeros(0, dtype=np.int64)
        self.labels = None
        if layer is None:
            self.plot.set_points(np.zeros(0), np.zeros(0), "", "")
            return
        features = layer.features
        if "cluster" in features.columns:
            self.labels = features["cluster"].to_numpy(dtype=np.int64)
        # the particle layer the poses were inferred from, by name (else keep the choice)
        source = layer.metadata.get(META_KEY, {}).get("source")
        for image in self._image_layers():
            if image.name == source and image.data.shape[0] == len(features):
                self.particles_choice.value = image
        run_dir = layer.metadata.get(META_KEY, {}).get("run_dir")
        if run_dir:
            self.run_dir.value = run_dir
        x, y, x_label, y_label = latent_coordinates(features)
        self.plot.set_points(x, y, x_label, y_label)
        numeric = [
            c
            for c in features.columns
            if c != "particle" and pd.api.types.is_numeric_dtype(features[c])
        ]
        self.colour_choice.choices = numeric
        if self.labels is not None:
            self.colour_choice.value = "cluster"
        else:
            self.colour_choice.value = "theta_deg" if "theta_deg" in numeric else numeric[0]
        self._recolour()
        self._show_count()

    def _on_poses_data(self, _event: Any = None) -> None:
        self._on_poses_changed(self.poses)

    def _recolour(self) -> None:
        features = self.features
        column = self.colour_choice.value
        if column is None or column not in features.columns:
            return
        if column == "cluster":
            self.plot.colour_by_cluster(features["cluster"].to_numpy(dtype=np.int64))
            return
        values = features[column].to_numpy(dtype=np.float64)
        if column == "theta_deg":
            limits = (-180.0, 180.0)
        else:
            limits = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        self.plot.colour_by_value(values, column, limits)

    # ------------------------------------------------------------------ selection

    def _on_plot_selection(self, mask: np.ndarray) -> None:
        self.select(np.flatnonzero(mask))

    def select(self, rows: np.ndarray) -> None:
        """Select particles (0-based rows of the poses layer) and show the first."""
        self.selection = np.asarray(rows, dtype=np.int64)
        mask = np.zeros(len(self.features), dtype=bool)
        mask[self.selection] = True
        self.plot.set_selection(mask)
        self._show_count()
        if len(self.selection):
            self.show_index.setMaximum(len(self.selection))
            self.show_index.setValue(1)
            self._on_show_index(1)

    def select_cluster(self, cluster: int) -> None:
        """Select every particle of one cluster."""
        if self.labels is None:
            show_error("spatial-VAE: no clusters yet; press Cluster first")
            return
        self.select(np.flatnonzero(self.labels == cluster))

    def _show_count(self) -> None:
        total = len(self.features)
        if len(self.selection) == 0:
            self.count_label.setText(
                f"{total} particles; drag a lasso (or a straight line for a box) to select"
            )
        else:
            self.count_label.setText(f"{len(self.selection)} of {total} particles selected")

    def _on_show_index(self, value: int) -> None:
        if 1 <= value <= len(self.selection):
            self.go_to_particle(int(self.selection[value - 1]))

    def go_to_particle(self, index: int) -> None:
        """Move the particle slider (the stacks' first axis) to ``index``."""
        axis = max(self.viewer.dims.ndim - 3, 0)
        self.viewer.dims.set_current_step(axis, index)

    # ------------------------------------------------------------------ clusters

    def cluster(self, k: int | None = None, method: str | None = None) -> np.ndarray | None:
        """Cluster on z, colour the plot, and write ``cluster`` into the layers' features."""
        from napari_spatial_vae.core.explore import cluster_latents

        layer = self.poses
        if layer is None:
            show_error("spatial-VAE: no poses layer; train or apply a model first")
            return None
        names = z_columns(layer.features)
        if not names:
            show_error("spatial-VAE: the poses have no z columns to cluster")
            return None
        k = int(k if k is not None else self.k.value)
        method = method or str(self.method.value)
        try:
            labels = cluster_latents(layer.features[names].to_numpy(), k, method, seed=0)
        except Exception as err:  # DataError: one line
            show_error(f"spatial-VAE: {err}")
            return None
        self.labels = labels
        features = layer.features.copy()
        features["cluster"] = labels
        layer.features = features
        if LATENT_MAP in self.viewer.layers:
            latent = self.viewer.layers[LATENT_MAP]
            if len(latent.data) == len(labels):
                latent_features = latent.features.copy()
                latent_features["cluster"] = labels
                latent.features = latent_features
                latent.face_color = [CLUSTER_COLOURS[c % len(CLUSTER_COLOURS)] for c in labels]
        self._on_poses_changed(layer)  # refresh the colour choices, colour by cluster
        sizes = np.bincount(labels, minlength=k)
        self.status.setText(f"{method}, k = {k}: sizes {', '.join(map(str, sizes))}")
        return labels

    # ------------------------------------------------------------------ averages

    def _particle_stack(self) -> tuple[Any, float | None]:
        layer = self.particles_choice.value
        if layer is None:
            raise ValueError("choose the particle layer the poses belong to")
        if layer.data.shape[0] != len(self.features):
            raise ValueError(
                f"{layer.name} has {layer.data.shape[0]} images but the poses have "
                f"{len(self.features)} rows"
            )
        info = layer.metadata.get(META_KEY, {})
        poses_info = self.poses.metadata.get(META_KEY, {}) if self.poses is not None else {}
        pixel = info.get("pixel_size") or poses_info.get("pixel_size")
        return layer_stack(layer.data, layer.metadata), pixel

    def model(self) -> Any:
        """The trained model of the chosen run folder (cached), or None."""
        run_dir = Path(str(self.run_dir.value or ""))
        # an empty FileEdit reads as Path(".")
        if str(run_dir) in ("", ".") or not run_dir.is_dir():
            return None
        if self._model is None or self._model_dir != run_dir:
            from napari_spatial_vae.core.checkpoint import load_model

            self._model, _, _ = load_model(run_dir, "cpu")
            self._model_dir = run_dir
        return self._model

    def _pose_frame(self) -> Any:
        """The frame the poses hold a painted part still in, when they are this model's.

        Set by the spatial-VAE dock's *hold still* (kept in the poses layer's metadata for
        this session; poses saved to a file and opened again have none); None for poses in
        the model's own frame or of another run folder than the one chosen here.
        """
        info = self.poses.metadata.get(META_KEY, {}) if self.poses is not None else {}
        frame, run_dir = info.get("frame"), info.get("run_dir")
        if frame is None or run_dir is None or self.model() is None:
            return None
        return frame if self._model_dir == Path(run_dir) else None

    def average_selection(self) -> Any:
        """Average the selected particles (a worker; the layers appear when it returns)."""
        if len(self.selection) == 0:
            show_error("spatial-VAE: select particles first (lasso in the latent plot)")
            return None
        return self._start_averages([("selection", self.selection)])

    def average_clusters(self) -> Any:
        """Average every cluster (a worker)."""
        if self.labels is None:
            show_error("spatial-VAE: no clusters yet; press Cluster first")
            return None
        groups = [
            (f"cluster {c}", np.flatnonzero(self.labels == c)) for c in np.unique(self.labels)
        ]
        return self._start_averages(groups)

    def _start_averages(self, groups: list[tuple[str, np.ndarray]]) -> Any:
        if self._worker is not None:
            show_error("spatial-VAE: an average is being computed; wait for it")
            return None
        try:
            stack, pixel = self._particle_stack()
            model = self.model()
        except Exception as err:
            show_error(f"spatial-VAE: {err}")
            return None
        features = self.features
        theta, dx, dy = (features[c].to_numpy() for c in ("theta", "dx", "dy"))
        names = z_columns(features)
        if model is not None and model.config.z_dim != len(names):
            model = None  # another model's latent space: no decoder images
        frame = self._pose_frame()
        z = features[names].to_numpy(dtype=np.float32) if names else None

        def compute() -> tuple[list, np.ndarray | None, float | None]:
            from napari_spatial_vae.core.ctf import StackCtfFilters
            from napari_spatial_vae.core.explore import aligned_average, render_latents

            # Wiener-filtered with each particle's CTF when the particles carry one
            ctf = StackCtfFilters.of_stack(stack)
            results = [
                (name, aligned_average(stack, theta, dx, dy, rows, ctf=ctf))
                for name, rows in groups
            ]
            decoded = None
            if model is not None and z is not None:
                means = np.stack([z[rows].mean(0) for _, rows in groups])
                decoded = render_latents(model, means, frame=frame)
            return results, decoded, pixel

        worker = create_worker(compute, _ignore_errors=True)
        # a bound method, not a lambda capturing self: Qt may keep the worker's signals (and
        # what they hold) alive after the viewer closes
        worker.returned.connect(self._show_averages)
        worker.errored.connect(lambda err: show_error(f"spatial-VAE: {err}"))
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self.status.setText(f"averaging {sum(len(r) for _, r in groups)} particles…")
        worker.start()
        return worker

    def _on_worker_finished(self) -> None:
        self._worker = None

    def _show_averages(self, out: tuple[list, np.ndarray | None, float | None]) -> None:
        results, decoded, pixel = out
        image_shape = results[0][1].average.shape[:2]
        averages = np.stack([r.average for _, r in results])[None]
        summary = [
            f"{name}: {r.count} particles, FRC 0.143 {r.resolution(pixel)}" for name, r in results
        ]
        if len(results) == 1:
            only = results[0][1]
            name = f"{AVERAGES}: {only.count} particles, FRC {only.resolution(pixel)}"
        else:
            name = f"{AVERAGES}: {len(results)} clusters"
        meta = {
            "groups": [n for n, _ in results],
            "counts": [r.count for _, r in results],
            "resolution_px": [r.resolution_px for _, r in results],
            "ctf_corrected": [r.ctf_corrected for _, r in results],
            "averages": averages[0],
        }
        average_layer = image_layer(
            montage(averages),
            name,
            pixel,
            leading_axes=0,
            translate=panel_translate(image_shape, pixel, 2, COLUMN_AVERAGES),
            metadata={META_KEY: {"pixel_size": pixel, "explore": meta}},
        )
        self._replace(AVERAGES, average_layer)
        if decoded is not None:
            decoded_layer = image_layer(
                montage(decoded[None]),
                f"{DECODED} ({', '.join(n for n, _ in results)})",
                pixel,
                leading_axes=0,
                translate=panel_translate(image_shape, pixel, 2, COLUMN_AVERAGES, row=1),
                metadata={META_KEY: {"pixel_size": pixel, "explore": {"decoded": True}}},
            )
            self._replace(DECODED, decoded_layer)
        self.status.setText("; ".join(summary))
        self.viewer.reset_view()

    def _replace(self, prefix: str, layer_data: Any) -> Layer:
        for layer in list(self.viewer.layers):
            if layer.name.startswith(prefix) and layer.metadata.get(META_KEY, {}).get("explore"):
                self.viewer.layers.remove(layer)
        return self.viewer.add_layer(Layer.create(*layer_data))

    # ------------------------------------------------------------------ export

    def export_subset(self, path: str | Path) -> bool:
        """Write the selection as RELION STAR or cryoSPARC .cs (every input column kept)."""
        from napari_spatial_vae.io import read_stack
        from napari_spatial_vae.io.subset import write_subset

        if len(self.selection) == 0:
            show_error("spatial-VAE: select particles first; nothing written")
            return False
        source = self.poses.metadata.get(META_KEY, {}).get("path") if self.poses else None
        if not source:
            show_error(
                "spatial-VAE: these particles were not read from a file; save the stack "
                "(File > Save) and open it again to export a subset"
            )
            return False
        try:
            stack = read_stack(source)
            table = pose_table(self.features)
            write_subset(path, stack, self.selection, table.iloc[self.selection])
        except Exception as err:  # StackError etc.: one line
            show_error(f"spatial-VAE: {err}")
            return False
        show_info(f"spatial-VAE: wrote {len(self.selection)} particles to {path}")
        return True

    def _on_export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export subset", "", "RELION STAR (*.star);;cryoSPARC (*.cs)"
        )
        if path:
            self.export_subset(path)

    # ------------------------------------------------------------------ movies

    def save_movie(self, path: str | Path, steps: int = 9) -> bool:
        """GIF/MP4 of the cluster averages when there are some, else of the traversal."""
        from napari_spatial_vae.core.explore import movie_frames
        from napari_spatial_vae.io.movie import write_movie

        averages = next(
            (
                layer.metadata[META_KEY]["explore"]["averages"]
                for layer in self.viewer.layers
                if layer.name.startswith(AVERAGES)
                and len(layer.metadata.get(META_KEY, {}).get("explore", {}).get("counts", [])) > 1
            ),
            None,
        )
        try:
            if averages is not None:
                frames = movie_frames(averages, bounce=False)
            else:
                from napari_spatial_vae.core.infer import latent_traversal

                model = self.model()
                if model is None:
                    raise ValueError("choose the model's run folder for a traversal movie")
                frames = movie_frames(latent_traversal(model, steps, frame=self._pose_frame()))
            write_movie(path, frames)
        except Exception as err:
            show_error(f"spatial-VAE: {err}")
            return False
        show_info(f"spatial-VAE: wrote {len(frames)} frames to {path}")
        return True

    def _on_movie_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save movie", "", "GIF (*.gif);;MP4 (*.mp4)")
        if path:
            self.save_movie(path)
