"""The widget's settings form is generated from the config's settings: round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings

from napari_spatial_vae._widget_settings import SettingsForm
from napari_spatial_vae.core.config import TrainConfig, setting_fields
from napari_spatial_vae.core.device import available_devices
from napari_spatial_vae.core.errors import ConfigError
from tests.settings_strategies import valid_configs

DEVICES = [name for name, _ in available_devices()]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=valid_configs(devices=DEVICES))
def test_every_setting_survives_config_to_gui_to_config(qapp, config):
    form = SettingsForm()
    form.set_from_config(config, image_size=48)
    assert form.to_config(image_size=48) == config


def test_every_setting_has_a_widget_with_the_settings_bounds(qapp):
    form = SettingsForm()
    shown = {w.name if hasattr(w, "name") else None for w in form.all_widgets}
    assert len(form.inputs) == len(setting_fields())
    assert set(form.inputs.values()) <= set(form.all_widgets), shown
    assert form.z_dim.max == 1024 and form.z_dim.min == 0  # the config's bounds, not the GUI's
    assert form.encoder_rotations.min == 2


def test_gui_units_degrees_pixels_and_none(qapp):
    form = SettingsForm()
    form.set_image_size(65, 65)
    assert form.dx_prior.value == pytest.approx(0.1 * 64)
    form.theta_prior.value = 90.0
    form.dx_prior.value = 3.2
    form.max_minutes.value = 0.0
    config = form.to_config(image_size=65)
    assert config.model.theta_prior == pytest.approx(math.pi / 2)
    assert config.model.dx_prior == pytest.approx(3.2 / 64)
    assert config.max_minutes is None
    form.max_minutes.value = 12.5
    assert form.to_config(image_size=65).max_minutes == 12.5


def test_a_loaded_run_keeps_every_setting_rotation_search_included(qapp):
    saved = TrainConfig()
    saved.model.rotation_search = False
    saved.model.theta_prior = 0.123456789
    form = SettingsForm()
    form.set_from_config(saved, image_size=40)
    assert not form.rotation_search.value
    config = form.to_config(image_size=40)
    assert not config.model.rotation_search and config.model.theta_prior == 0.123456789
    form.theta_prior.value = 45.0  # the user changed it: the box's value counts now
    assert form.to_config(image_size=40).model.theta_prior == pytest.approx(math.pi / 4)


def test_the_form_reports_invalid_combinations_in_one_line(qapp):
    form = SettingsForm()
    form.likelihood.value = "bernoulli"
    form.normalize.enabled = True
    form.normalize.value = True
    with pytest.raises(ConfigError, match="normalize applies to the gaussian likelihood only"):
        form.to_config(image_size=40)
