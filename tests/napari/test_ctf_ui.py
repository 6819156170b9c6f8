"""The CTF sample data and the widget's CTF choice."""

from __future__ import annotations

from napari_spatial_vae._layers import META_KEY
from napari_spatial_vae._reader import layer_stack
from napari_spatial_vae._sample_data import make_synthetic_ctf_particles
from napari_spatial_vae._widget_settings import SettingsForm


def test_ctf_sample_opens_as_a_star_file_that_carries_the_ctf():
    [(data, kwargs, kind)] = make_synthetic_ctf_particles(n_images=12, size=16, seed=7)
    assert kind == "image" and data.shape == (12, 16, 16)
    assert kwargs["metadata"][META_KEY]["path"].endswith(".star")
    stack = layer_stack(data, kwargs["metadata"])  # what the widget trains on
    assert stack.ctf is not None and len(stack.ctf) == 12
    assert stack.pixel_size == 4.8
    assert len(kwargs["metadata"]["ground_truth"]["conformation"]) == 12


def test_settings_form_carries_the_ctf_choice(qtbot):
    form = SettingsForm()
    assert form.to_config(40).ctf == "auto"
    form.ctf.value = "off"
    config = form.to_config(40)
    assert config.ctf == "off"
    other = SettingsForm()
    other.set_from_config(config, 40)
    assert other.ctf.value == "off"
