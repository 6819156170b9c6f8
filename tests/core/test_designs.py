"""The family of simulated particle designs used to choose and judge the defaults."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spatial_vae.core.designs import (
    DESIGNS,
    REPORT_DESIGNS,
    REPORT_SEEDS,
    TUNE_DESIGNS,
    TUNE_SEEDS,
    render_design,
    simulate_design,
)
from napari_spatial_vae.core.simulate import render_particles


def test_tuning_and_reporting_never_share_a_design_or_a_seed():
    assert set(TUNE_DESIGNS) | set(REPORT_DESIGNS) <= set(DESIGNS)
    assert not set(TUNE_DESIGNS) & set(REPORT_DESIGNS)
    assert not set(TUNE_SEEDS) & set(REPORT_SEEDS)


def test_the_hinge_design_is_the_projects_own_particle():
    rng = np.random.default_rng(0)
    n = 6
    conformation, theta = rng.uniform(0, 1, n), rng.uniform(-np.pi, np.pi, n)
    shift, tilt = rng.normal(0, 1.5, (n, 2)), rng.uniform(-0.2, 0.2, n)
    ours = render_design(DESIGNS["hinge"], conformation[:, None], theta, shift, tilt)
    theirs = render_particles(conformation, theta, shift, tilt, 40, 2.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_each_motion_changes_the_image_and_the_stack_has_its_snr(name):
    design = DESIGNS[name]
    k = len(design.motions)
    poses = (np.zeros(2), np.zeros((2, 2)), np.zeros(2))
    for motion in range(k):
        ends = np.full((2, k), 0.5)
        ends[:, motion] = [0.0, 1.0]
        first, last = render_design(design, ends, *poses)
        assert np.abs(first - last).max() > 0.2 * first.max()
    sim = simulate_design(design, 64, seed=1, snr=0.5)
    assert sim.images.shape == (64, design.size, design.size) and sim.conformation.shape == (64, k)
    snr = sim.clean.var() / (sim.images - sim.clean).var()
    assert snr == pytest.approx(0.5, rel=0.1)
    again = simulate_design(design, 64, seed=1, snr=0.5)
    np.testing.assert_array_equal(sim.images, again.images)


def test_a_design_scales_to_another_box_size():
    small = simulate_design(DESIGNS["three-domain"], 4, seed=0, size=40)
    large = simulate_design(DESIGNS["three-domain"], 4, seed=0, size=64)
    assert large.images.shape[1:] == (64, 64)
    # the same object fills the same fraction of the box
    assert (small.clean > 0.3).mean() == pytest.approx((large.clean > 0.3).mean(), rel=0.15)
