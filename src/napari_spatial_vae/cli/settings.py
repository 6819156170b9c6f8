"""``spatial-vae train`` options generated from the config's settings, and back.

Every :class:`~napari_spatial_vae.core.config.Setting` becomes one option (``z_dim`` ->
``--z-dim``; booleans get ``--name/--no-name``), so bounds, choices, help and defaults are
written once, in :mod:`napari_spatial_vae.core.config`. Options the user did not give are None
and keep the config's defaults.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from napari_spatial_vae.cli._common import UsageError
from napari_spatial_vae.core.config import ModelConfig, SettingField, TrainConfig, setting_fields

_GROUP_TITLES = {
    "model": "model",
    "training": "training",
    "speed": "speed (see docs/performance.md)",
}


def _default_text(spec: SettingField) -> str:
    if spec.default is None:
        return "none"
    if spec.kind is float and spec.setting.shown_as == "degrees":
        return f"{spec.default:.4g} = {math.degrees(spec.default):g}°"
    return f"{spec.default:g}" if spec.kind is float else str(spec.default)


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per training setting, in argument groups (model, training, speed)."""
    groups = {key: parser.add_argument_group(title) for key, title in _GROUP_TITLES.items()}
    for spec in setting_fields():
        s = spec.setting
        text = f"{s.help} (default {_default_text(spec)})".replace("%", "%%")
        group = groups[s.group]
        if spec.kind is bool:
            group.add_argument(
                spec.flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        elif s.choices is not None:
            group.add_argument(spec.flag, choices=s.choices, default=None, help=text)
        else:
            group.add_argument(
                spec.flag, type=spec.kind, default=None, metavar=s.metavar, help=text
            )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``field -> value`` of the setting options the user gave on the command line."""
    return {
        spec.name: getattr(args, spec.name)
        for spec in setting_fields()
        if getattr(args, spec.name, None) is not None
    }


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated :class:`TrainConfig` from parsed ``train`` arguments.

    Options the user did not give keep the config's defaults, except where they follow from
    another choice: the bernoulli likelihood turns off noise fitting and standardising, the
    vanilla model and no rotation use the MLP encoder.
    """
    given = given_settings(args)
    config = TrainConfig(model=ModelConfig())
    if given.get("likelihood") == "bernoulli":
        config.model.fit_noise = False
        config.normalize = False
    if given.get("vanilla") or given.get("rotate") is False:
        config.model.encoder = "mlp"
    by_name = {spec.name: spec for spec in setting_fields()}
    for name, value in given.items():
        by_name[name].set(config, value)
    config.validate()
    return config


def resume_config(args: argparse.Namespace, saved: TrainConfig) -> TrainConfig:
    """The saved config with the resumable options the user gave applied.

    Repeating the original command with ``--resume`` added is fine: options equal to the saved
    values are accepted. A different value of a setting that defines the model or its training
    is refused, naming the saved value.
    """
    for spec in setting_fields():
        value = getattr(args, spec.name, None)
        if value is None:
            continue
        if spec.setting.resumable:
            spec.set(saved, value)
        elif value != spec.get(saved):
            changeable = ", ".join(s.flag for s in setting_fields() if s.setting.resumable)
            raise UsageError(
                f"{spec.flag} {_shown(value)} differs from this run's saved {spec.name} = "
                f"{_shown(spec.get(saved))}; with --resume only {changeable} may change"
            )
    saved.validate()
    return saved


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
