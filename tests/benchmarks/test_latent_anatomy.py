"""The anatomy of z: known mixes of motion, rotation error and noise come out as built."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from latent_anatomy import anatomy


def saved_latents(z: np.ndarray, motion: np.ndarray, error: np.ndarray, z_std: float) -> dict:
    rng = np.random.default_rng(1)
    true_theta = rng.uniform(-np.pi, np.pi, len(z))
    return {
        "z_mu": z[:, None],
        "z_logstd": np.full((len(z), 4), np.log(z_std)),  # theta, shift x2, z
        "true_conformation": motion[:, None],
        # a global offset of 1 rad and the direction mirrored: neither is an error
        "theta": -(true_theta + error) + 1.0,
        "true_theta": true_theta,
        "true_tilt": rng.uniform(-0.2, 0.2, len(z)),
    }


def test_motion_rotation_error_and_neither_are_told_apart():
    rng = np.random.default_rng(0)
    n = 4000
    motion = rng.uniform(-1, 1, n)
    error = rng.normal(0, 0.2, n)  # independent of the motion
    noise = rng.normal(0, 1, n)
    # z: the motion, then the rotation error, then unrelated noise, in equal parts
    z = motion / motion.std() + np.sin(error) / np.sin(error).std() + noise
    (share,) = anatomy(saved_latents(z, motion, error, z_std=0.5))
    assert share["motion"] == pytest.approx(1 / 3, abs=0.03)
    assert share["error beyond motion"] == pytest.approx(1 / 3, abs=0.03)
    assert share["neither"] == pytest.approx(1 / 3, abs=0.03)
    # the posterior's own view: var(z) = 3, posterior variance 0.25
    assert share["reliability"] == pytest.approx(3 / 3.25, abs=0.02)


def test_a_rotation_error_that_follows_the_motion_is_not_beyond_it():
    motion = np.linspace(-1, 1, 2000)
    error = 0.15 * motion  # the rotation's zero moving with the conformation: a gauge
    (share,) = anatomy(saved_latents(np.sin(error), motion, error, z_std=0.1))
    assert share["motion"] > 0.99 and share["rotation error"] > 0.99
    assert share["error beyond motion"] < 0.01
