"""``spatial-vae train`` options are generated from the config's settings: round trips."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings

from napari_spatial_vae.cli import build_parser
from napari_spatial_vae.cli._common import UsageError
from napari_spatial_vae.cli.settings import config_from_args, resume_config
from napari_spatial_vae.core.config import TrainConfig, setting_fields
from napari_spatial_vae.core.errors import ConfigError
from tests.settings_strategies import valid_configs


def argv_for(config: TrainConfig) -> list[str]:
    """The ``train`` options that describe ``config`` completely."""
    argv: list[str] = []
    for spec in setting_fields():
        value = spec.get(config)
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(spec.flag if value else spec.flag.replace("--", "--no-", 1))
        else:
            argv += [spec.flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def parse(*options: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "stack.mrcs", "-o", "run", *options])


@settings(max_examples=60, deadline=None)
@given(valid_configs())
def test_every_setting_survives_config_to_cli_to_config(config):
    assert config_from_args(parse(*argv_for(config))) == config


def test_every_setting_has_an_option():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for spec in setting_fields():
        assert spec.flag in help_text


def test_options_are_checked_against_the_settings_bounds():
    with pytest.raises(ConfigError, match="z_dim must be between 0 and 1024"):
        config_from_args(parse("--z-dim", "2000"))
    with pytest.raises(ConfigError, match="theta_prior must be > 0"):
        config_from_args(parse("--theta-prior", "0"))
    with pytest.raises(SystemExit):
        parse("--encoder", "transformer")


def test_bernoulli_and_vanilla_adjust_the_defaults_they_imply():
    config = config_from_args(parse("--likelihood", "bernoulli", "--vanilla"))
    assert not config.model.fit_noise and not config.normalize
    assert config.model.encoder == "mlp" and config.model.vanilla


@settings(max_examples=30, deadline=None)
@given(valid_configs())
def test_resume_accepts_the_saved_settings_repeated(saved):
    argv = argv_for(saved)
    assert resume_config(parse(*argv), TrainConfig.from_dict(saved.to_dict())) == saved


def test_resume_changes_only_resumable_settings():
    saved = TrainConfig()
    resumed = resume_config(parse("--epochs", "80", "--precision", "bf16"), saved)
    assert resumed.epochs == 80 and resumed.precision == "bf16"
    with pytest.raises(UsageError, match=r"--lr 0\.1 differs from this run.s saved lr = 0\.002"):
        resume_config(parse("--lr", "0.1"), TrainConfig())
