"""The dock widget end to end: train, stop, errors, save/load/apply, responsiveness."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer

from napari_spatial_vae import _layers as L
from napari_spatial_vae import _widget
from napari_spatial_vae._explore_widget import ExploreWidget
from napari_spatial_vae._loss_plot import LossPlot
from napari_spatial_vae._widget import SpatialVAEWidget
from napari_spatial_vae._worker import TrainOutcome
from napari_spatial_vae.core.checkpoint import load_model, read_history, write_history
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.explore import render_latents
from napari_spatial_vae.core.fold_restart import many_variations_message
from napari_spatial_vae.core.frame import fit_pose_frame
from napari_spatial_vae.core.infer import encode_stack
from napari_spatial_vae.core.metrics import EpochMetrics, collapse_warning, half_turn_warning
from napari_spatial_vae.core.train import TrainUpdate
from napari_spatial_vae.core.unrendered import UnrenderedVariation, unrendered_warning
from tests.untrained import sharp_untrained_model

PLUGIN = "napari-spatial-vae"
RESULT_LAYERS = {
    L.ALIGNED, L.RECONSTRUCTIONS, L.TRAVERSAL, L.POSES, L.ORIENTATIONS, L.LATENT_MAP
}  # fmt: skip


class StallMeter:
    """A 10 ms QTimer that records the longest gap between its ticks (event-loop stalls)."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last: float | None = None
        self.longest = 0.0
        self.ticks = 0

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last = now
        self.ticks += 1

    def start(self) -> None:
        self.last = None
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages the widget shows as napari error notifications."""
    shown: list[str] = []
    monkeypatch.setattr(_widget, "show_error", shown.append)
    return shown


@pytest.fixture
def warnings_shown(monkeypatch) -> list[str]:
    """Messages the widget shows as napari warning notifications."""
    shown: list[str] = []
    monkeypatch.setattr(_widget, "show_warning", shown.append)
    return shown


def dock(viewer, images: np.ndarray, tmp_path: Path, name: str = "particles", **settings):
    """Add ``images``, open the widget through the plugin manifest and make it tiny."""
    viewer.add_image(images, name=name)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "spatial-VAE")
    assert isinstance(widget, SpatialVAEWidget)
    form = widget.form
    form.hidden_dim.value = 32
    form.encoder_rotations.value = 8
    form.epochs.value = 2
    form.z_delay.value = 0
    form.batch_size.value = 16
    form.device.value = "cpu"
    form.preview_every.value = 1
    for key, value in settings.items():
        getattr(form, key).value = value
    widget.input_layer.value = viewer.layers[name]
    widget.run_dir.value = tmp_path / "run"
    return widget


def wait_idle(qtbot, widget, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=timeout)


def test_train_two_epochs_adds_every_result_layer(
    make_napari_viewer, qtbot, tmp_path, small_particles, errors, warnings_shown
):
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path)
    inserted: list[str] = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    meter = StallMeter()
    meter.start()
    assert widget.start_training()
    assert widget.train_button.text() == "Stop"
    assert not widget.start_training()  # a second run while one is going is refused
    # measure while training runs, up to its "finished" event (adding the result layers
    # afterwards is napari's own work in the Qt thread, reported separately)
    widget._worker.yielded.connect(
        lambda event: meter.stop() if getattr(event, "kind", "") == "finished" else None
    )
    wait_idle(qtbot, widget)
    meter.stop()
    assert errors == []
    print(
        f"\nlongest event-loop stall during training: {meter.longest * 1000:.0f} ms "
        f"over {meter.ticks} ticks"
    )
    # the timer fired while training ran: the Qt thread kept serving events (the stall's
    # length is printed, not asserted: tests never assert on wall time, and a busy machine
    # stretches it; benchmarks/ measure responsiveness)
    assert meter.ticks >= 3

    assert L.PREVIEW in inserted  # the live preview appeared during training
    assert {layer.name for layer in viewer.layers} >= RESULT_LAYERS
    n, h, w = small_particles.shape
    assert viewer.layers[L.ALIGNED].data.shape == (n, h, w)
    assert viewer.layers[L.RECONSTRUCTIONS].data.shape == (n, h, w)
    assert viewer.layers[L.TRAVERSAL].data.shape == (2 * h + 1, 9 * w + 8)  # a 2-D montage
    poses = viewer.layers[L.POSES]
    assert poses.data.shape == (n, 3)
    features = poses.features
    for column in ("particle", "theta_deg", "theta", "dx", "dy", "z1", "z2", "theta_std",
                   "dx_std", "dy_std", "z1_std", "z2_std"):  # fmt: skip
        assert column in features.columns
        assert np.isfinite(features[column]).all()
    np.testing.assert_allclose(features["theta_deg"], np.degrees(features["theta"]))
    assert viewer.layers[L.ORIENTATIONS].data.shape == (n, 2, 3)
    assert viewer.layers[L.LATENT_MAP].data.shape == (n, 2)

    assert len(widget.loss_plot.train) == 2 and len(widget.loss_plot.test) == 2
    assert widget.train_button.text() == "Train"
    assert widget.model is not None
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert "completed" in widget.progress.format()
    # the last held-out epoch's warnings (collapse, particles better turned), as the CLI's
    epoch, metrics = widget._last_epoch
    assert metrics.half_turn_better is not None
    expected = [collapse_warning(metrics, epoch, 0), half_turn_warning(metrics, "auto")]
    refused = "spatial-VAE: a job is already running; stop it first"  # the second start
    assert warnings_shown == [refused, *(f"spatial-VAE: {w}" for w in expected if w)]


def test_a_finished_training_warns_of_a_variation_the_model_does_not_render(
    make_napari_viewer, tmp_path, small_particles, warnings_shown
):
    # what the end of training measured (core/unrendered.py) reaches the user as the CLI's
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path)
    model = sharp_untrained_model()
    folded = UnrenderedVariation(1.04, 1.0, 2048)
    outcome = TrainOutcome(
        tmp_path / "run", "completed", 5, 1.0, model, TrainConfig(model=model.config), None,
        unrendered=folded,
    )  # fmt: skip
    widget._on_trained(outcome)
    assert warnings_shown == [f"spatial-VAE: {unrendered_warning(folded)}"]
    assert widget.model is model


def test_the_fold_check_says_why_and_only_a_restart_clears_the_loss_plot(
    make_napari_viewer, tmp_path, small_particles, monkeypatch
):
    # core/fold_restart.py: the epochs shown so far belong to a discarded attempt
    infos: list[str] = []
    monkeypatch.setattr(_widget, "show_info", infos.append)
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path)
    metrics = EpochMetrics(-10.0, 9.0, 4.0, 0.5, 0.3, 3.2, (3.2,))
    for epoch in (1, 2):
        widget._on_train_event(TrainUpdate("epoch", epoch, 6, 4, 4, train=metrics, test=metrics))
    assert widget.loss_plot.epochs == [1, 2]
    line = "z looks folded after epoch 2 (...): starting again from a fresh initialisation"
    widget._on_train_event(
        TrainUpdate("epoch", 2, 6, 4, 4, train=metrics, test=metrics, message=line, restarted=True)
    )
    assert infos == [f"spatial-VAE: {line}"]
    assert widget.loss_plot.epochs == [] and widget._last_epoch is None
    widget._on_train_event(TrainUpdate("epoch", 1, 6, 4, 4, train=metrics, test=metrics))
    assert widget.loss_plot.epochs == [1]
    # more than a fold (core/fold_restart.py): said, and the run's epochs are kept
    line = many_variations_message(UnrenderedVariation(2.88, 1.0, 2048, 4.84), 2)
    widget._on_train_event(TrainUpdate("epoch", 2, 6, 4, 4, train=metrics, test=metrics,
                                       message=line))  # fmt: skip
    assert infos[-1] == f"spatial-VAE: {line}" and widget.loss_plot.epochs == [1, 2]


def test_training_searches_the_rotation_of_its_results_when_asked(
    make_napari_viewer, qtbot, tmp_path, small_particles, errors
):
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path, z_dim=2, search_rotation=True)
    # a model that could not search is refused before anything trains, in one line
    assert not widget.start_training()
    assert "rotation search needs a model with one latent z" in errors[-1]
    assert len(errors[-1].splitlines()) == 1
    assert not (tmp_path / "run").exists()

    widget.form.z_dim.value = 1
    assert widget.start_training()
    wait_idle(qtbot, widget)
    assert errors[1:] == []
    model, config, _ = load_model(tmp_path / "run")
    searched = encode_stack(model, config, small_particles, search_rotation=True)
    plain = encode_stack(model, config, small_particles)
    theta = viewer.layers[L.POSES].features["theta"].to_numpy()
    np.testing.assert_allclose(theta, searched.theta, atol=1e-5)
    assert np.abs(theta - plain.theta).max() > 1e-3  # the search moved some (a 2-epoch model)


def test_stop_keeps_a_usable_model(make_napari_viewer, qtbot, tmp_path, small_particles, errors):
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path, epochs=500)
    assert widget.start_training()
    qtbot.waitUntil(lambda: len(widget.loss_plot.train) >= 1, timeout=30_000)
    widget.train_button.click()  # the Train button is the Stop button now
    wait_idle(qtbot, widget)
    assert errors == []
    assert "stopped" in widget.progress.format()
    model, config, progress = load_model(tmp_path / "run")
    assert 1 <= progress.epochs_completed < 500
    poses = encode_stack(model, config, small_particles)
    assert np.isfinite(poses.z).all()
    assert viewer.layers[L.POSES].data.shape == (len(small_particles), 3)


def test_errors_become_notifications(make_napari_viewer, qtbot, tmp_path, small_particles, errors):
    viewer = make_napari_viewer()
    bad = small_particles.copy()
    bad[3, 2, 2] = np.nan
    widget = dock(viewer, bad, tmp_path, name="bad")
    assert widget.start_training()
    wait_idle(qtbot, widget)
    assert len(errors) == 1 and "image 3" in errors[0] and "NaN" in errors[0]
    assert widget.train_button.text() == "Train" and widget.train_button.isEnabled()

    # a setting the config rejects never starts a worker
    widget.form.likelihood.value = "bernoulli"
    widget.form.normalize.enabled = True
    widget.form.normalize.value = True
    assert not widget.start_training()
    assert "normalize" in errors[-1]

    # a run folder that already holds a model (CheckpointError in the worker)
    viewer.add_image(small_particles, name="good")
    widget.form.likelihood.value = "gaussian"
    widget.input_layer.value = viewer.layers["good"]
    widget.run_dir.value = tmp_path / "run2"
    assert widget.start_training()
    wait_idle(qtbot, widget)
    assert widget.start_training()
    wait_idle(qtbot, widget)
    assert "already holds a trained model" in errors[-1]


def test_save_load_apply_round_trip(make_napari_viewer, qtbot, tmp_path, small_particles, errors):
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path, z_dim=1)
    widget.start_training()
    wait_idle(qtbot, widget)
    trained_theta = viewer.layers[L.POSES].features["theta"].to_numpy()

    saved = tmp_path / "saved"
    assert widget.save_model(saved)
    assert {p.name for p in saved.iterdir()} >= {"config.json", "checkpoint.safetensors"}
    assert not widget.save_model(saved)  # never overwrite a folder that holds something
    assert "not empty" in errors[-1]

    viewer2 = make_napari_viewer()
    viewer2.add_image(small_particles[:40], name="more particles")
    fresh = SpatialVAEWidget(viewer2)
    assert fresh.load_model(saved)
    assert fresh.form.z_dim.value == 1 and fresh.form.hidden_dim.value == 32
    assert len(fresh.loss_plot.train) == 2
    assert fresh.apply_to_layer(viewer2.layers["more particles"])
    wait_idle(qtbot, fresh)
    poses = viewer2.layers[L.POSES]
    assert poses.data.shape == (40, 3)
    assert viewer2.layers[L.TRAVERSAL].data.shape == (20, 9 * 20 + 8)
    np.testing.assert_allclose(poses.features["theta"], trained_theta[:40], atol=1e-5)
    # the rotation searched on the whole circle when asked (spatial-vae infer --search-rotation)
    fresh.form.search_rotation.value = True
    assert fresh.apply_to_layer(viewer2.layers["more particles"])
    wait_idle(qtbot, fresh)
    searched = encode_stack(fresh.model, fresh.model_config, small_particles[:40],
                            search_rotation=True)  # fmt: skip
    theta = viewer2.layers[L.POSES].features["theta"].to_numpy()
    np.testing.assert_allclose(theta, searched.theta, atol=1e-5)
    assert np.abs(theta - trained_theta[:40]).max() > 1e-3  # this 2-epoch model's encoder
    # a model that cannot search: one line, no job
    fresh.model.training_z = None
    assert not fresh.apply_to_layer(viewer2.layers["more particles"])
    assert "rotation search needs a model with one latent z" in errors[-1]
    assert len(errors[-1].splitlines()) == 1
    assert not fresh.load_model(tmp_path / "nowhere")
    assert "nowhere" in errors[-1]
    assert errors[:-3] == []


def test_latent_map_selection_moves_to_the_particle(
    make_napari_viewer, qtbot, tmp_path, make_results
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 20, 24), np.float32), name="particles")
    widget = SpatialVAEWidget(viewer)
    widget.show_results(make_results())
    latent = viewer.layers[L.LATENT_MAP]
    latent.selected_data = {3}
    axis = viewer.dims.ndim - 3
    assert viewer.dims.current_step[axis] == 3
    # showing results again replaces the layers in place instead of stacking copies
    widget.show_results(make_results())
    assert [layer.name for layer in viewer.layers].count(L.POSES) == 1


def test_results_stay_visible_whatever_the_particle_slider_says(
    make_napari_viewer, qtbot, make_results
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((500, 20, 24), np.float32), name="particles")
    camera = getattr(viewer, "scene", viewer).camera  # napari 0.9 moved it
    camera.zoom = 40.0  # looking closely at one corner before the results arrive
    camera.center = (0, 5, 5)
    widget = SpatialVAEWidget(viewer)
    widget.show_results(make_results(n=500))
    widget.go_to_particle(499)
    traversal = viewer.layers[L.TRAVERSAL]
    # a 2-D montage is drawn on every particle's slice (a 4-D stack of 7 steps was empty)
    assert traversal.ndim == 2 and traversal._slice.image.raw.size == traversal.data.size
    # the view was fitted to everything added: all layers' extent is inside the canvas
    extent = viewer.layers.extent.world[:, -2:]
    np.testing.assert_allclose(camera.center[-2:], extent.mean(axis=0), atol=1.0)
    assert camera.zoom < 40.0


def test_closing_the_viewer_stops_training(make_napari_viewer, qtbot, tmp_path, small_particles):
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path, epochs=500)
    widget.start_training()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=30_000)
    job = widget._train_job
    viewer.close()
    assert job.done.is_set()  # the close handler waited for the model to be saved
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_sample_data_open(make_napari_viewer):
    viewer = make_napari_viewer()
    (particles,) = viewer.open_sample(PLUGIN, "synthetic_particles")
    assert particles.data.shape == (1000, 40, 40)
    assert particles.metadata["ground_truth"]["theta"].shape == (1000,)
    (galaxies,) = viewer.open_sample(PLUGIN, "galaxies")
    assert galaxies.rgb and galaxies.data.ndim == 4 and galaxies.data.shape[1:] == (64, 64, 3)
    assert len(galaxies.data) >= 50
    (grey,) = viewer.open_sample(PLUGIN, "galaxies_grey")
    assert grey.data.shape == galaxies.data.shape[:3]
    assert grey.data.min() >= 0.0 and grey.data.max() <= 1.0


def test_the_loss_plot_leaves_binned_epochs_train_elbo_out(qtbot, tmp_path):
    # coarse-to-fine epochs score 2x2 bins (a quarter of the pixels): drawn among full-size
    # epochs their train ELBO would make a cliff that hides the real curve
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.add_epoch(1, -250.0, -1500.0, binned=True)
    plot.add_epoch(2, -1450.0, -1440.0)
    drawn_x, drawn_y = plot.train_curve.getData()
    assert list(drawn_x) == [2] and list(drawn_y) == [-1450.0]
    assert list(plot.test_curve.getData()[0]) == [1, 2]
    assert plot.train == [-250.0, -1450.0]  # kept, only not drawn
    # the same from a run folder's history.csv (a loaded model), old files without the column
    rows = [
        {"epoch": 1, "split": "train", "elbo": -250.0, "binned": 1.0},
        {"epoch": 2, "split": "train", "elbo": -1450.0, "binned": 0.0},
    ]
    write_history(tmp_path, rows)
    plot.set_history(read_history(tmp_path))
    assert list(plot.train_curve.getData()[0]) == [2]
    plot.set_history([{"epoch": 1, "split": "train", "elbo": -250.0}])
    assert list(plot.train_curve.getData()[0]) == [1]


def test_applying_in_the_training_viewer_lets_the_viewer_close(
    make_napari_viewer, qtbot, tmp_path, small_particles
):
    # make_napari_viewer fails this test at teardown if the closed viewer's QtViewer is still
    # alive: a worker signal connected to a lambda that captured the widget once kept it so
    viewer = make_napari_viewer()
    widget = dock(viewer, small_particles, tmp_path, z_dim=1)
    assert widget.start_training()
    wait_idle(qtbot, widget)
    assert widget.apply_to_layer(viewer.layers["particles"])
    wait_idle(qtbot, widget)
    assert widget.progress.format().startswith("applied to particles in ")


def test_a_painted_mask_holds_its_part_still_in_the_results(
    make_napari_viewer, qtbot, tmp_path, small_particles, errors
):
    trainer = dock(make_napari_viewer(), small_particles, tmp_path, z_dim=1)
    trainer.start_training()
    wait_idle(qtbot, trainer)
    # applied in a fresh viewer, as a user opens a saved run
    viewer = make_napari_viewer()
    viewer.add_image(small_particles, name="particles")
    widget = SpatialVAEWidget(viewer)
    assert widget.load_model(tmp_path / "run")
    assert widget.apply_to_layer(viewer.layers["particles"])
    wait_idle(qtbot, widget)
    plain = viewer.layers[L.POSES].features
    labels = widget.draw_mask()
    assert labels is not None and labels.mode == "paint"
    assert viewer.layers[L.REFERENCE].data.shape == labels.data.shape == (20, 20)
    assert widget.hold_still.value.name == L.HOLD_STILL
    # nothing painted yet: refused in one line, no job
    assert not widget.apply_to_layer(viewer.layers["particles"])
    assert "covers 0 of the model's pixels" in errors[-1] and len(errors[-1].splitlines()) == 1
    painted = np.zeros((20, 20), np.uint8)
    painted[5:13, 4:11] = 1
    labels.data = painted
    del labels
    assert widget.apply_to_layer(viewer.layers["particles"])
    wait_idle(qtbot, widget)
    assert "masked pixels still" in widget.status.text()
    # every particle turned by the frame at its z, z itself unchanged
    frame = fit_pose_frame(widget.model, painted != 0)
    held = viewer.layers[L.POSES].features
    np.testing.assert_allclose(held["z1"], plain["z1"], atol=1e-5)
    turn, _ = frame.at(torch.tensor(plain[["z1"]].to_numpy(), dtype=torch.float32))
    expected = plain["theta"].to_numpy() - turn.numpy()
    np.testing.assert_allclose(np.angle(np.exp(1j * (held["theta"] - expected))), 0, atol=1e-4)
    # the explore dock renders the decoder and the traversal in the same frame
    explore = ExploreWidget(viewer)
    explore.poses_choice.value = viewer.layers[L.POSES]
    assert explore.model() is not None and explore._pose_frame() is not None
    means = plain[["z1"]].to_numpy()[:3]
    decoded = render_latents(explore.model(), means, frame=explore._pose_frame())
    turn, offset = frame.at(torch.tensor(means, dtype=torch.float32))
    with torch.no_grad():
        model = explore.model()
        expected_images = model.expected_image(model.decode(torch.tensor(means), turn, offset)[0])
    np.testing.assert_allclose(decoded, expected_images[:, 0].numpy(), atol=1e-3)
    # a model loaded again forgets the mask (painted on its template, maybe another's)
    assert widget.load_model(tmp_path / "run")
    assert widget.hold_still.value is None
    assert widget.apply_to_layer(viewer.layers["particles"])
    wait_idle(qtbot, widget)
    np.testing.assert_allclose(viewer.layers[L.POSES].features["theta"], plain["theta"], atol=1e-5)
    assert len(errors) == 1
