"""The KL of each z dimension is reported, and a collapsed one is named with what to try."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_spatial_vae.core.checkpoint import read_history
from napari_spatial_vae.core.metrics import (
    COLLAPSED_NATS,
    EpochMetrics,
    collapse_warning,
    describe_latent_use,
)
from napari_spatial_vae.core.train import train


def test_sums_split_the_kl_of_z_by_dimension():
    metrics = EpochMetrics.from_sums([20.0, 14.0, 2.0, 1.0, 3.0, 2.9, 0.1], count=2)
    assert metrics.kl_z == pytest.approx(1.5) and metrics.kl_z_dims == pytest.approx((1.45, 0.05))
    assert metrics.collapsed_dims() == [2]
    row = metrics.as_row(3, "test", 1e-3, 1.0)
    assert row["kl_z1"] == pytest.approx(1.45) and "kl_z_dims" not in row
    assert describe_latent_use(metrics) == "KL per z dim 1.45 0.05"


def test_collapse_warning_names_the_dimension_only_after_the_z_delay():
    metrics = EpochMetrics(-10.0, 9.0, 1.0, 0.5, 0.3, 0.2, (0.15, 0.05))
    assert collapse_warning(metrics, epoch=3, z_delay=2) is None  # z was just released
    warning = collapse_warning(metrics, epoch=4, z_delay=2)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("z1, z2 carry almost nothing (0.15, 0.05 nats per image")
    assert "--z-dim" in warning and str(COLLAPSED_NATS) in warning
    assert "--z-delay 0" in warning  # a delay is one of the causes (docs/defaults.md)
    undelayed = collapse_warning(metrics, epoch=4, z_delay=0)
    assert undelayed is not None and "--z-delay" not in undelayed
    fine = EpochMetrics(-10.0, 9.0, 4.0, 0.5, 0.3, 3.2, (3.2,))
    assert collapse_warning(fine, epoch=40, z_delay=2) is None


def test_history_has_a_kl_column_per_z_dimension(tmp_path, tiny_particles, make_config):
    train(make_config(epochs=2, z_dim=2), tiny_particles.images, tmp_path / "run")
    table = pd.read_csv(tmp_path / "run" / "history.csv")
    assert {"kl_z1", "kl_z2"} <= set(table.columns)
    np.testing.assert_allclose(table["kl_z1"] + table["kl_z2"], table["kl_z"], rtol=1e-6)
    rows = read_history(tmp_path / "run")
    assert rows[-1]["kl_z2"] == pytest.approx(table["kl_z2"].iloc[-1])
