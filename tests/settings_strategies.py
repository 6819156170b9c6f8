"""Hypothesis strategy for valid training configs, drawn from the settings themselves."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from napari_spatial_vae.core.config import SettingField, TrainConfig, setting_fields


def _values(spec: SettingField, devices: Sequence[str]) -> st.SearchStrategy:
    s = spec.setting
    if spec.name == "device":
        return st.sampled_from(list(devices))
    if spec.kind is bool:
        return st.booleans()
    if s.choices is not None:
        return st.sampled_from(s.choices)
    if spec.kind is int:
        low = int(s.low or 0)
        return st.integers(low, min(int(s.high if s.high is not None else 10**6), low + 10**6))
    low = s.low if s.low is not None else -1e6
    high = s.high if s.high is not None else 1e6
    values = st.floats(low, high, exclude_min=s.open_low, allow_nan=False)
    return st.none() | values if spec.optional else values


@st.composite
def valid_configs(draw, devices: Sequence[str] = ("auto", "cpu", "cuda", "cuda:1", "mps")):
    """Any config that validates: every field drawn within its bounds, then the few
    cross-field rules repaired (they are tested on their own)."""
    config = TrainConfig()
    for spec in setting_fields():
        spec.set(config, draw(_values(spec, devices)))
    model = config.model
    if model.likelihood == "bernoulli":
        model.fit_noise = model.softplus_mean = config.normalize = False
        if config.ctf == "on":
            config.ctf = "auto"
    if model.vanilla or not model.rotate:
        model.encoder = "mlp"
    if model.z_dim == 0 and not (model.infers_rotation or model.infers_translation):
        model.z_dim = 1
    config.validate()
    return config
