"""A run says when many held-out particles fit better a half turn away (the 180-degree fault)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_spatial_vae.core.checkpoint import load_model, read_history
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.metrics import (
    HALF_TURN_SWITCH_EPOCHS,
    HALF_TURN_SWITCH_FROM,
    HALF_TURN_WARNING_SHARE,
    EpochMetrics,
    evaluate_elbo,
    half_turn_warning,
    switches_half_turn_check,
)
from napari_spatial_vae.core.train import train


def _metrics(share: float | None) -> EpochMetrics:
    return EpochMetrics(-10.0, 9.0, 1.0, 0.5, 0.3, 0.2, (0.2,), half_turn_better=share)


def test_the_warning_needs_a_share_above_the_threshold_and_the_check_off():
    assert half_turn_warning(_metrics(None), "off") is None
    assert half_turn_warning(_metrics(0.5 * HALF_TURN_WARNING_SHARE), "off") is None
    warning = half_turn_warning(_metrics(0.06), "off")
    assert warning is not None and "\n" not in warning
    assert warning.startswith("6.0 % of the held-out particles fit better turned by 180")
    assert "--half-turn-check" in warning
    # most particles better turned is not the fault (one end of the motion upside down)
    assert half_turn_warning(_metrics(0.9), "off") is None
    # a run that checks each particle (or switches the check on itself) has nothing to try
    assert half_turn_warning(_metrics(0.06), "on") is None
    assert half_turn_warning(_metrics(0.06), "auto") is None


def test_auto_switches_on_for_a_lasting_fault_and_only_after_the_first_part_of_the_run():
    assert HALF_TURN_SWITCH_EPOCHS == 2  # the cases below are written for two epochs
    assert switches_half_turn_check([0.0, 0.05, 0.06], HALF_TURN_SWITCH_FROM)
    assert switches_half_turn_check([0.04, 0.2], 1.0)
    # early poses still swing: not before the first part of the schedule
    assert not switches_half_turn_check([0.05, 0.06], 0.9 * HALF_TURN_SWITCH_FROM)
    # one epoch with a few percent turned, taken back the next, is not the fault
    assert not switches_half_turn_check([0.06], 1.0)
    assert not switches_half_turn_check([0.06, 0.01], 1.0)
    assert not switches_half_turn_check([0.0, 0.06], 1.0)
    # most particles better turned is not it either, nor a model that cannot tell
    assert not switches_half_turn_check([0.9, 0.9], 1.0)
    assert not switches_half_turn_check([None, None], 1.0)


def test_held_out_rows_carry_the_share_the_model_fits_better_turned(
    tmp_path, tiny_particles, make_config
):
    train(make_config(epochs=2), tiny_particles.images, tmp_path / "run")
    table = pd.read_csv(tmp_path / "run" / "history.csv")
    test_rows = table[table["split"] == "test"]
    assert test_rows["half_turn_better"].between(0.0, 1.0).all()
    assert table[table["split"] == "train"]["half_turn_better"].isna().all()
    # it is the mean of the model's per-particle answer over the held-out set
    model, _, _ = load_model(tmp_path / "run")
    feeder = ImageFeeder(tiny_particles.images[:40], None, torch.device("cpu"), normalize=True)
    metrics = evaluate_elbo(model, feeder, batch_size=16)
    expected = model.half_turn_fits_better(next(iter(feeder.batches(len(feeder)))))
    assert metrics.half_turn_better == pytest.approx(float(expected.float().mean()))
    assert read_history(tmp_path / "run")[-1]["half_turn_better"] == pytest.approx(
        test_rows["half_turn_better"].iloc[-1]
    )


def test_z_delay_epochs_have_no_share(tmp_path, tiny_particles, make_config):
    train(make_config(epochs=1, z_delay=1), tiny_particles.images, tmp_path / "run")
    rows = read_history(tmp_path / "run")
    assert [row["half_turn_better"] for row in rows] == [None, None]
    assert np.isfinite(rows[-1]["elbo"])
