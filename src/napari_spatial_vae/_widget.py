"""The spatial-VAE dock widget: settings, Train/Stop, progress, live loss and preview,
Save/Load model, and "Apply to layer".

A thin layer over :mod:`napari_spatial_vae.core` and :mod:`napari_spatial_vae.io`: it builds a
:class:`TrainConfig`, hands training to a napari ``thread_worker`` (:mod:`._worker`) and turns
what comes back into layers (:mod:`._layers`). The Qt thread only ever receives small events,
so napari stays responsive while the model trains; every error ends up as a napari
notification with its one-line message.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets
from magicgui.types import FileDialogMode
from napari.layers import Image, Labels, Layer, Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_spatial_vae._layers import (
    COLUMN_REFERENCE,
    HOLD_STILL,
    LATENT_MAP,
    META_KEY,
    POSES,
    PREVIEW,
    REFERENCE,
    TRAVERSAL_ROW,
    InferenceResults,
    LayerData,
    panel_translate,
    pixel_scale,
    preview_layer,
    result_layers,
)
from napari_spatial_vae._loss_plot import LossPlot
from napari_spatial_vae._reader import layer_stack
from napari_spatial_vae._widget_settings import SettingsForm
from napari_spatial_vae._worker import (
    ApplyJob,
    Preview,
    TrainJob,
    TrainOutcome,
    run_inference,
    run_training,
)
from napari_spatial_vae.core.checkpoint import load_model, read_history
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.frame import check_frame_model, mask_weights
from napari_spatial_vae.core.infer import (
    check_rotation_search,
    check_rotation_search_settings,
    reference_template,
)
from napari_spatial_vae.core.metrics import (
    EpochMetrics,
    collapse_warning,
    describe_latent_use,
    half_turn_warning,
)
from napari_spatial_vae.core.runlock import LOCK_FILE
from napari_spatial_vae.core.train import TrainUpdate
from napari_spatial_vae.core.unrendered import unrendered_warning

if TYPE_CHECKING:
    import napari

#: Particles shown in the live preview (input | reconstruction pairs).
PREVIEW_COUNT = 16
#: Seconds the widget waits for training to save and stop when the viewer closes.
CLOSE_TIMEOUT_S = 30.0


def default_run_dir(name: str) -> Path:
    """``~/spatial-vae-runs/<layer>-<date-time>``: a fresh folder for every run."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.home() / "spatial-vae-runs" / f"{safe}-{stamp}"


def format_seconds(seconds: float) -> str:
    """``1:05:09`` / ``4:07``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SpatialVAEWidget(QWidget):
    """Train spatial-VAE on an Image layer and browse what it learned.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: Any = None
        self.model_config: TrainConfig | None = None
        self.model_run_dir: Path | None = None
        self.last_results: InferenceResults | None = None
        self._train_job: TrainJob | None = None
        self._apply_job: ApplyJob | None = None
        self._worker: Any = None
        self._eta_start: tuple[float, float] | None = None
        self._started_message = ""
        self._apply_started = 0.0  # time.monotonic() when the last apply began
        # (epoch, metrics) of the last epoch, held-out where there are: for the collapse check
        self._last_epoch: tuple[int, EpochMetrics] | None = None
        self._build()
        self._connect_viewer()
        self._set_busy(False)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.input_layer = widgets.ComboBox(
            label="particles",
            choices=self._image_layers,
            tooltip="Image layer (N, H, W) of particle images to train on.",
        )
        self.form = SettingsForm()
        self.run_dir = widgets.FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY,
            label="run folder",
            value=None,
            tooltip="Folder for the model, config.json and history.csv (what the command "
            "line writes). Empty: a new folder under ~/spatial-vae-runs.",
        )
        self.resume = widgets.CheckBox(
            value=False,
            text="resume the run in this folder",
            tooltip="Continue the run saved in the run folder (e.g. with more epochs).",
        )
        top = widgets.Container(widgets=[self.input_layer], labels=True)
        run = widgets.Container(widgets=[self.run_dir, self.resume], labels=True)

        self.advanced_box = QCollapsible("Advanced settings")
        self.advanced_box.addWidget(self.form.advanced.native)

        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train on the chosen layer; press again to stop.")
        self.train_button.clicked.connect(self._on_train_clicked)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.loss_plot = LossPlot()

        self.model_label = QLabel("no model yet")
        self.model_label.setWordWrap(True)
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("Copy the run folder (weights, config, history) elsewhere.")
        self.save_button.clicked.connect(self._on_save_clicked)
        self.load_button = QPushButton("Load model…")
        self.load_button.setToolTip("Open a run folder written by this widget or the CLI.")
        self.load_button.clicked.connect(self._on_load_clicked)
        self.apply_layer = widgets.ComboBox(
            label="apply to",
            choices=self._image_layers,
            tooltip="Image layer to infer poses, aligned particles and reconstructions for.",
        )
        self.apply_button = QPushButton("Apply to layer")
        self.apply_button.clicked.connect(self._on_apply_clicked)
        self.hold_still = widgets.ComboBox(
            label="hold still",
            choices=self._mask_layers,
            nullable=True,
            value=None,
            tooltip="Labels painted on the reference template (Draw mask…): the results "
            "hold that part of the particle still along z. Empty: the model's own frame.",
        )
        self.mask_button = QPushButton("Draw mask…")
        self.mask_button.setToolTip(
            "Show the reference template (z = 0) and a Labels layer over it: paint the part "
            "that should hold still (e.g. the rigid body), then Apply to layer."
        )
        self.mask_button.clicked.connect(self.draw_mask)
        model_box = QGroupBox("Model")
        model_layout = QVBoxLayout(model_box)
        model_layout.addWidget(self.model_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.load_button)
        model_layout.addLayout(buttons)
        apply_row = QHBoxLayout()
        apply_row.addWidget(widgets.Container(widgets=[self.apply_layer], labels=True).native)
        apply_row.addWidget(self.apply_button)
        model_layout.addLayout(apply_row)
        mask_row = QHBoxLayout()
        mask_row.addWidget(widgets.Container(widgets=[self.hold_still], labels=True).native)
        mask_row.addWidget(self.mask_button)
        model_layout.addLayout(mask_row)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(top.native)
        layout.addWidget(self.form.main.native)
        layout.addWidget(self.advanced_box)
        layout.addWidget(run.native)
        layout.addWidget(self.train_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.loss_plot)
        layout.addWidget(model_box)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumWidth(340)
        self.input_layer.changed.connect(self._on_input_changed)

    def _image_layers(self, _widget: Any = None) -> list[Image]:
        """Image layers that can be particle stacks: (N, H, W) or (N, H, W, C)."""
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image)
            and layer.ndim == 3
            and not layer.metadata.get(META_KEY, {}).get("preview")
        ]

    def _mask_layers(self, _widget: Any = None) -> list[Labels]:
        """Labels layers of one image (2-D), which a hold-still mask can come from."""
        return [
            layer for layer in self.viewer.layers if isinstance(layer, Labels) and layer.ndim == 2
        ]

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._reset_choices)
        events.removed.connect(self._reset_choices)
        self._reset_choices()
        # napari does not stop plugin workers when its window closes: watch the window we
        # are docked in (known once napari has docked us, i.e. after this turn of the loop)
        self._close_filter = _CloseFilter(self.shutdown)
        self._watched_window: QWidget | None = None
        QTimer.singleShot(0, self._watch_window)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    def _watch_window(self) -> None:
        window = self.window()
        if window is None:  # never for a QWidget, but the Qt stubs allow it
            return
        if window is not self and window is not self._watched_window:
            window.installEventFilter(self._close_filter)
            self._watched_window = window

    def showEvent(self, event: Any) -> None:
        """Also (re)attach the close watch when shown, e.g. after being re-docked."""
        super().showEvent(event)
        self._watch_window()

    def _reset_choices(self, _event: Any = None) -> None:
        self.input_layer.reset_choices()
        self.apply_layer.reset_choices()
        self.hold_still.reset_choices()

    def _on_input_changed(self, layer: Image | None) -> None:
        if layer is not None:
            self.form.set_image_size(layer.data.shape[2], layer.data.shape[1])

    # ------------------------------------------------------------------ state

    @property
    def is_busy(self) -> bool:
        """Whether training or inference is running."""
        return self._worker is not None

    def _set_busy(self, busy: bool, training: bool = False) -> None:
        for widget in (*self.form.all_widgets, self.input_layer, self.run_dir, self.resume):
            widget.enabled = not busy
        self.train_button.setText("Stop" if training else "Train")
        self.train_button.setEnabled(training or not busy)
        for button in (self.save_button, self.load_button, self.apply_button):
            button.setEnabled(not busy)

    def _input_stack(self, layer: Image) -> tuple[Any, float | None, str | None]:
        info = layer.metadata.get(META_KEY, {})
        pixel = info.get("pixel_size")
        if pixel is None and float(layer.scale[-1]) != 1.0:
            pixel = float(layer.scale[-1])
        return layer_stack(layer.data, layer.metadata), pixel, info.get("path")

    # ------------------------------------------------------------------ training

    def _on_train_clicked(self) -> None:
        if self._train_job is not None:
            self.stop_training()
        else:
            self.start_training()

    def start_training(self) -> bool:
        """Start training on the chosen layer; False (with a notification) when it cannot."""
        if self.is_busy:
            show_warning("spatial-VAE: a job is already running; stop it first")
            return False
        layer = self.input_layer.value
        if layer is None:
            show_error("spatial-VAE: open a particle stack (an Image layer N x H x W) first")
            return False
        try:
            height, width = layer.data.shape[1:3]
            config = self.form.to_config(max(height, width))
            if self.form.search_rotation.value:
                check_rotation_search_settings(config.model)
            images, pixel_size, source_path = self._input_stack(layer)
        except Exception as err:  # ConfigError, StackError: one-line messages
            show_error(f"spatial-VAE: {err}")
            return False
        chosen = self.run_dir.value  # a Path in "d" mode; "." when the field is empty
        run_dir = chosen if isinstance(chosen, Path) and str(chosen) not in ("", ".") else None
        if run_dir is None:
            run_dir = default_run_dir(layer.name)
            self.run_dir.value = run_dir
        count = min(PREVIEW_COUNT, len(images))
        job = TrainJob(
            config=config,
            images=images,
            run_dir=run_dir,
            preview_indices=np.linspace(0, len(images) - 1, count).round().astype(np.int64),
            preview_every=self.form.preview_every.value,
            result_limit=self.form.result_limit.value,
            search_rotation=self.form.search_rotation.value,
            pixel_size=pixel_size,
            source=layer.name,
            source_path=source_path,
            resume=self.resume.value,
            run_info={"napari_layer": layer.name, "data": source_path},
        )
        self._train_job = job
        self.loss_plot.clear()
        if job.resume:
            self.loss_plot.set_history(read_history(run_dir))
        self._eta_start = None
        self._last_epoch = None
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.status.setText(f"run folder: {run_dir}")
        worker = create_worker(run_training, job, _ignore_errors=True)
        worker.yielded.connect(self._on_train_event)
        worker.returned.connect(self._on_trained)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self._set_busy(True, training=True)
        worker.start()
        return True

    def stop_training(self) -> None:
        """Ask training to stop at the next step; the model so far is saved and shown."""
        if self._train_job is not None:
            self._train_job.stop.set()
            self.train_button.setText("Stopping…")
            self.train_button.setEnabled(False)

    def _on_train_event(self, event: TrainUpdate | Preview) -> None:
        if isinstance(event, Preview):
            self._show_preview(event)
            return
        if event.kind == "started":
            self._started_message = event.message
            self.status.setText(event.message)
        elif event.kind in ("step", "epoch"):
            self._show_progress(event)
            if event.kind == "epoch" and event.train is not None:
                self.loss_plot.add_epoch(
                    event.epoch,
                    event.train.elbo,
                    event.test.elbo if event.test else None,
                    binned=event.train.binned > 0,
                )
                self._last_epoch = (event.epoch, event.test or event.train)
                if event.train.kl_z_dims:
                    # what each latent carries: a collapsed one shows ~0 nats
                    self.status.setText(
                        f"{self._started_message}\nepoch {event.epoch}: "
                        f"{describe_latent_use(event.test or event.train)} nats"
                    )
                if event.message:  # the half-turn check switched on, or a restart
                    show_info(f"spatial-VAE: {event.message}")
                if event.restarted:  # epochs count from 1 again, on a fresh model
                    self.loss_plot.clear()
                    self._last_epoch = None
                    self._eta_start = None
        elif event.kind == "finished":
            self.progress.setFormat(
                f"{event.stop_reason} after epoch {event.epoch}; making result layers…"
            )
            if event.message:  # z axes turned
                show_info(f"spatial-VAE: {event.message}")

    def _show_progress(self, event: TrainUpdate) -> None:
        steps = max(event.steps_per_epoch, 1)
        done = ((event.epoch - 1) * steps + event.step) / (event.epochs * steps)
        self.progress.setValue(round(1000 * done))
        if self._eta_start is None:
            self._eta_start = (event.seconds, done)
            eta = ""
        else:
            seconds0, done0 = self._eta_start
            rate = (done - done0) / max(event.seconds - seconds0, 1e-9)
            eta = f" · {format_seconds((1 - done) / rate)} left" if rate > 0 else ""
        self.progress.setFormat(f"epoch {event.epoch}/{event.epochs}{eta}")

    def _show_preview(self, preview: Preview) -> None:
        pixel = self._train_job.pixel_size if self._train_job is not None else None
        data, kwargs, _ = preview_layer(
            preview.inputs, preview.reconstructions, pixel, preview.epoch
        )
        if PREVIEW in self.viewer.layers:
            layer = self.viewer.layers[PREVIEW]
            layer.data = data
            layer.metadata = kwargs["metadata"]
        else:
            self.viewer.add_layer(Layer.create(data, kwargs, "image"))

    def _on_trained(self, outcome: TrainOutcome) -> None:
        self.model = outcome.model
        self.model_config = outcome.config
        self.model_run_dir = outcome.run_dir
        self.hold_still.value = None  # a mask belongs to the template it was painted on
        self.progress.setValue(
            1000 if outcome.stop_reason == "completed" else self.progress.value()
        )
        self.progress.setFormat(
            f"{outcome.stop_reason}: {outcome.epochs_completed} epoch(s) in "
            f"{format_seconds(outcome.seconds)}"
        )
        self._describe_model()
        warnings = [unrendered_warning(outcome.unrendered)]
        if self._last_epoch is not None:
            epoch, metrics = self._last_epoch
            warnings[:0] = [
                collapse_warning(metrics, epoch, outcome.config.z_delay),
                half_turn_warning(metrics, outcome.config.model.half_turn_check),
            ]
        for warning in warnings:
            if warning:
                show_warning(f"spatial-VAE: {warning}")
        if outcome.results is not None:
            self.show_results(outcome.results)
            if PREVIEW in self.viewer.layers:
                # keep the last preview, hidden below the results (removing costs a gc pass)
                preview = self.viewer.layers[PREVIEW]
                preview.translate = preview_translate(
                    outcome.results, row=_below_results(outcome.results)
                )
                preview.visible = False
        show_info(
            f"spatial-VAE: training {outcome.stop_reason} after {outcome.epochs_completed} "
            f"epoch(s); model saved in {outcome.run_dir}"
        )

    def _on_error(self, err: BaseException) -> None:
        job = self._train_job or self._apply_job
        if job is not None and getattr(job, "abort", job.stop).is_set():
            return  # the viewer is closing: nobody is left to read it
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "out of memory" in message.lower():
            message += " (try a smaller batch size or hidden width, or the CPU)"
        self.progress.setFormat("failed")
        self.status.setText(message)
        show_error(f"spatial-VAE: {message}")

    def _on_worker_finished(self) -> None:
        self._worker = None
        self._train_job = None
        self._apply_job = None
        self._set_busy(False)

    # ------------------------------------------------------------------ results

    def show_results(self, results: InferenceResults) -> list[Layer]:
        """Add the result layers, replacing earlier ones of the same name in place."""
        self.last_results = results
        layers = [self._put_layer(layer_data) for layer_data in result_layers(results)]
        latent = self.viewer.layers[LATENT_MAP]
        latent.selected_data.events.items_changed.connect(self._on_latent_selection)
        latent.mode = "select"
        if self.model_run_dir is not None:  # the explore dock decodes mean z with this model
            poses = self.viewer.layers[POSES]
            poses.metadata = {
                **poses.metadata,
                META_KEY: {**poses.metadata.get(META_KEY, {}), "run_dir": str(self.model_run_dir)},
            }
        self.viewer.reset_view()  # results sit beside the input: show them all
        return layers

    def _put_layer(self, layer_data: LayerData) -> Layer:
        """Add a layer, or update the existing layer of that name in place.

        Updating in place keeps the user's visibility, opacity and colour choices, and is
        much cheaper than remove + add (napari runs a full garbage collection per removal).
        """
        data, kwargs, layer_type = layer_data
        name = kwargs["name"]
        old = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if old is None or old._type_string != layer_type or old.ndim != _layer_ndim(layer_data):
            if old is not None:
                self.viewer.layers.remove(old)
            return self.viewer.add_layer(Layer.create(data, kwargs, layer_type))
        old.data = data
        for key in _UPDATABLE:
            if key in kwargs:
                setattr(old, key, kwargs[key])
        return old

    def _on_latent_selection(self, *_args: Any) -> None:
        if LATENT_MAP not in self.viewer.layers:
            return
        layer = self.viewer.layers[LATENT_MAP]
        selected = sorted(layer.selected_data)
        if selected:
            self.go_to_particle(latent_map_particle(layer, selected[-1]))

    def go_to_particle(self, index: int) -> None:
        """Move the dims slider to particle ``index`` (of the (N, H, W) stacks)."""
        # stacks are (N, H, W): the particle axis is the first of the last three
        axis = max(self.viewer.dims.ndim - 3, 0)
        self.viewer.dims.set_current_step(axis, index)

    # ------------------------------------------------------------------ model

    def _describe_model(self) -> None:
        if self.model is None or self.model_config is None:
            self.model_label.setText("no model yet")
            return
        m = self.model_config.model
        _, height, width = self.model.image_shape
        self.model_label.setText(
            f"{self.model_run_dir}\nz dim {m.z_dim}, hidden {m.hidden_dim}x{m.num_layers}, "
            f"{m.likelihood}, images {height}x{width}"
        )

    def load_model(self, run_dir: str | Path) -> bool:
        """Load a run folder (this widget's or the command line's); False on failure."""
        if self.is_busy:
            show_warning("spatial-VAE: wait for the running job to finish")
            return False
        run_dir = Path(run_dir)
        try:
            model, config, progress = load_model(run_dir, "cpu")
            history = read_history(run_dir)
        except Exception as err:  # CheckpointError/ConfigError carry one-line messages
            show_error(f"spatial-VAE: {err}")
            return False
        self.model, self.model_config, self.model_run_dir = model, config, run_dir
        self.hold_still.value = None  # a mask belongs to the template it was painted on
        _, height, width = model.image_shape
        self.form.set_from_config(config, max(height, width))
        self.loss_plot.set_history(history)
        self.run_dir.value = run_dir
        self._describe_model()
        show_info(
            f"spatial-VAE: loaded {run_dir.name} ({progress.epochs_completed} epoch(s) trained)"
        )
        return True

    def save_model(self, destination: str | Path) -> bool:
        """Copy the current run folder to ``destination`` (new or empty); False on failure."""
        if self.model_run_dir is None:
            show_error("spatial-VAE: no model to save yet; train or load one first")
            return False
        destination = Path(destination)
        if destination.resolve() == self.model_run_dir.resolve():
            return True
        if destination.exists() and any(destination.iterdir()):
            show_error(f"spatial-VAE: {destination} is not empty; choose a new folder")
            return False
        try:
            shutil.copytree(
                self.model_run_dir,
                destination,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(LOCK_FILE),  # a copy is nobody's run yet
            )
        except OSError as err:
            show_error(f"spatial-VAE: could not copy the run folder: {err}")
            return False
        show_info(f"spatial-VAE: model saved to {destination}")
        return True

    def _on_save_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save model to (a new or empty folder)")
        if folder:
            self.save_model(folder)

    def _on_load_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Load model: choose a run folder")
        if folder:
            self.load_model(folder)

    # ------------------------------------------------------------------ apply

    def _on_apply_clicked(self) -> None:
        self.apply_to_layer()

    def apply_to_layer(self, layer: Image | None = None) -> bool:
        """Infer poses and result layers for ``layer`` (default: the chosen one)."""
        if self.is_busy:
            show_warning("spatial-VAE: a job is already running")
            return False
        if self.model is None or self.model_config is None:
            show_error("spatial-VAE: train or load a model first")
            return False
        layer = layer if layer is not None else self.apply_layer.value
        if layer is None:
            show_error("spatial-VAE: choose an Image layer to apply the model to")
            return False
        search_rotation = self.form.search_rotation.value
        try:
            if search_rotation:
                check_rotation_search(self.model)
            mask = self._hold_still_mask()
            images, pixel_size, source_path = self._input_stack(layer)
        except Exception as err:
            show_error(f"spatial-VAE: {err}")
            return False
        job = ApplyJob(
            model=self.model,
            config=self.model_config,
            images=images,
            device=self.form.device.value,
            result_limit=self.form.result_limit.value,
            pixel_size=pixel_size,
            source=layer.name,
            source_path=source_path,
            search_rotation=search_rotation,
            hold_still=mask,
        )
        self._apply_job = job
        self.progress.setValue(0)
        self.progress.setFormat(f"inferring {layer.name}…")
        self._apply_started = time.monotonic()
        worker = create_worker(run_inference, job, _ignore_errors=True)
        worker.yielded.connect(self._on_apply_progress)
        # bound methods only: a lambda capturing self would keep the widget, and with it the
        # closed viewer's window, alive for as long as Qt keeps the worker's signals
        worker.returned.connect(self._on_applied)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self._set_busy(True)
        worker.start()
        return True

    def _hold_still_mask(self) -> np.ndarray | None:
        """The chosen Labels layer as an ``(H, W)`` mask (None: none chosen).

        Raises
        ------
        DataError
            When it is not one image of the model's box, or covers too little of it.
        """
        layer = self.hold_still.value
        if layer is None or self.model is None:
            return None
        mask = np.asarray(layer.data) != 0
        # refuse here, in one line, before any job starts
        check_frame_model(self.model)
        mask_weights(self.model, mask)
        return mask

    def draw_mask(self) -> Labels | None:
        """Add the reference template and an empty Labels layer over it, ready to paint."""
        if self.model is None:
            show_error("spatial-VAE: train or load a model first")
            return None
        try:
            check_frame_model(self.model)
        except DataError as err:
            show_error(f"spatial-VAE: {err}")
            return None
        template = reference_template(self.model)
        pixel_size = self.last_results.pixel_size if self.last_results is not None else None
        placed = {
            "translate": panel_translate(template.shape[:2], pixel_size, 2, COLUMN_REFERENCE),
            "scale": pixel_scale(pixel_size, 2),
        }
        self._put_layer((template, {"name": REFERENCE, **placed}, "image"))
        labels = next((layer for layer in self.viewer.layers if layer.name == HOLD_STILL), None)
        if not isinstance(labels, Labels) or labels.data.shape != template.shape[:2]:
            if labels is not None:
                self.viewer.layers.remove(labels)
            labels = self.viewer.add_labels(
                np.zeros(template.shape[:2], dtype=np.uint8), name=HOLD_STILL
            )
        labels.translate, labels.scale = placed["translate"], placed["scale"]
        labels.brush_size = max(1, template.shape[0] // 6)
        labels.mode = "paint"
        self.viewer.layers.selection.active = labels
        self.viewer.reset_view()  # the template sits left of the particles: show it
        self.hold_still.reset_choices()
        self.hold_still.value = labels
        return labels

    def _on_apply_progress(self, progress: tuple[int, int]) -> None:
        done, total = progress
        self.progress.setValue(round(1000 * done / max(total, 1)))

    def _on_applied(self, results: InferenceResults) -> None:
        took = format_seconds(time.monotonic() - self._apply_started)
        self.progress.setValue(1000)
        self.progress.setFormat(f"applied to {results.source} in {took}")
        if results.frame is not None:
            self.status.setText(results.frame.describe())
        self.show_results(results)

    # ------------------------------------------------------------------ shutdown

    def _stop_all_jobs(self, *_args: Any) -> None:
        for job in (self._train_job, self._apply_job):
            if job is not None:
                job.stop.set()
                if hasattr(job, "abort"):
                    job.abort.set()

    def shutdown(self) -> None:
        """Stop running jobs and wait (bounded) until training has saved its model."""
        job = self._train_job
        self._stop_all_jobs()
        if job is not None:
            job.done.wait(CLOSE_TIMEOUT_S)


# Layer attributes that _put_layer copies onto an existing layer of the same name.
_UPDATABLE = (
    "features",
    "scale",
    "translate",
    "contrast_limits",
    "metadata",
    "face_color",
    "face_colormap",
    "face_contrast_limits",
    "size",
)


def _layer_ndim(layer_data: LayerData) -> int:
    data, kwargs, layer_type = layer_data
    if layer_type == "image":
        return data.ndim - (1 if kwargs.get("rgb") else 0)
    if layer_type == "vectors":
        return data.shape[-1]
    return data.shape[1]


def _below_results(results: InferenceResults) -> int:
    """First panel row under the result layers (the traversal montage has K rows)."""
    traversal = results.traversal
    return TRAVERSAL_ROW + (traversal.shape[0] if traversal is not None else 0)


def preview_translate(results: InferenceResults, row: int) -> tuple[float, float]:
    """Where the preview mosaic goes once result layers exist: below them, left-aligned."""
    y, x = panel_translate(results.image_shape, results.pixel_size, 2, 0, row=row)
    return (y, x)


class _CloseFilter(QObject):
    """Calls ``on_close`` when the watched window receives its Close event."""

    def __init__(self, on_close: Any) -> None:
        super().__init__()
        self._on_close = on_close

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        if event is not None and event.type() == QEvent.Type.Close:
            self._on_close()
        return False


def latent_map_particle(layer: Points, point: int) -> int:
    """Particle index of a point of the latent map layer."""
    return int(layer.features["particle"].iloc[point])
