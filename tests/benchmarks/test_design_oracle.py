"""The oracle's pose grid: the true pose always scored, the windows as asked, their edge."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from design_oracle import oracle_pearson, pose_offsets, tilt_grid, window_edge

from napari_spatial_vae.core.designs import DESIGNS


def test_only_the_true_pose_when_it_is_known():
    turns, shifts = pose_offsets(0, 1.0, 0.0, 0.5)
    assert turns.tolist() == [0.0] and shifts.tolist() == [[0.0, 0.0]]


def test_every_rotation_with_every_shift_the_truth_among_them():
    turns, shifts = pose_offsets(10, 2.0, 1.5, 0.5)
    # 11 rotations (-10..10 deg) x 7 x 7 shifts (-1.5..1.5 px)
    assert len(turns) == len(shifts) == 11 * 7 * 7
    assert np.allclose(np.degrees(np.unique(turns.round(12))), np.arange(-10, 11, 2))
    assert np.allclose(np.unique(shifts[:, 0]), np.arange(-1.5, 1.6, 0.5))
    assert np.allclose(np.unique(shifts[:, 1]), np.arange(-1.5, 1.6, 0.5))
    truth = (turns == 0) & (shifts == 0).all(axis=1)
    assert truth.sum() == 1


def test_a_window_that_is_not_a_whole_number_of_steps_stays_inside_it():
    turns, shifts = pose_offsets(5, 2.0, 1.2, 0.5)
    assert np.degrees(np.abs(turns)).max() == 4.0
    assert np.abs(shifts).max() == 1.0


def test_the_edge_of_the_windows():
    turns, shifts = pose_offsets(4, 2.0, 1.0, 0.5)
    edge = window_edge(turns, shifts)
    # inside: |turn| < 4 deg and both |shift| < 1 px: 3 x 3 x 3 of the 5 x 5 x 5 poses
    assert edge.sum() == 5 * 5 * 5 - 3 * 3 * 3
    inner = (np.degrees(np.abs(turns)) < 3.9) & (np.abs(shifts) < 0.9).all(axis=1)
    assert np.array_equal(edge, ~inner)
    # one window only: the other coordinate never puts a pose on the edge
    turns, shifts = pose_offsets(0, 1.0, 1.0, 0.5)
    assert window_edge(turns, shifts).sum() == 5 * 5 - 3 * 3
    turns, shifts = pose_offsets(0, 1.0, 0.0, 0.5)
    assert not window_edge(turns, shifts).any()


def test_chunks_of_renderings_give_the_same_oracle():
    args = (DESIGNS["hinge"], 1.0, 6, 7, 5, 2, 1.0, 1.0, 0.5)
    assert oracle_pearson(*args, chunk=37) == oracle_pearson(*args)


def test_a_window_narrower_than_the_pose_posterior_puts_its_mass_on_the_edge():
    # the project's hinge at SNR 1: its pose is known to a few degrees and about a pixel,
    # so +-2 deg leaves a fifth of the posterior on its edge and +-10 deg next to none
    design = DESIGNS["hinge"]
    narrow = oracle_pearson(design, 1.0, 8, 7, 11, 2, 1.0, 0.0, 0.5).edge_mass
    wide = oracle_pearson(design, 1.0, 8, 7, 11, 10, 2.0, 0.0, 0.5).edge_mass
    assert narrow > 0.15 and wide < 0.05


def test_the_tilt_grid_spans_the_prior_symmetrically():
    assert np.degrees(tilt_grid(15.0, 1.0)).round(9).tolist() == list(range(-15, 16))
    # a step that does not divide the prior: still both ends, steps no wider than asked
    tilts = np.degrees(tilt_grid(10.0, 3.0))
    assert tilts[0] == -10.0 and tilts[-1] == 10.0 and np.diff(tilts).max() <= 3.0
    assert tilt_grid(0.0, 1.0).tolist() == [0.0]


def test_an_unknown_tilt_changes_nothing_on_an_untilted_design():
    args = (DESIGNS["hinge"], 1.0, 6, 7, 5, 2, 1.0)
    assert oracle_pearson(*args, tilt_step_deg=1.0) == oracle_pearson(*args)


def test_an_unknown_tilt_is_marginalised_on_a_tilted_design():
    # tilted-hinge leans its arm's hinge 60 degrees out of plane and tilts up to 15: with the
    # tilt unknown the oracle scores 31 tilts per conformation, and its estimate moves
    design = DESIGNS["tilted-hinge"]
    known = oracle_pearson(design, 0.5, 12, 7, 9).pearson
    unknown = oracle_pearson(design, 0.5, 12, 7, 9, tilt_step_deg=1.0, chunk=50)
    assert unknown.edge_mass == 0.0 and unknown.pearson != known
    assert 0.5 < unknown.pearson[0] <= 1.0


def test_one_template_per_conformation_averages_the_tilts():
    # scored against the tilt-averaged rendering the estimate moves again, and a chunk that
    # does not hold a whole number of tilt groups is rounded to one that does
    design = DESIGNS["tilted-hinge"]
    marginalised = oracle_pearson(design, 0.5, 12, 7, 9, tilt_step_deg=3.0)
    averaged = oracle_pearson(design, 0.5, 12, 7, 9, tilt_step_deg=3.0, tilt_average=True)
    assert averaged.pearson != marginalised.pearson and 0.5 < averaged.pearson[0] <= 1.0
    assert (
        oracle_pearson(design, 0.5, 12, 7, 9, tilt_step_deg=3.0, tilt_average=True, chunk=16)
        == averaged
    )
    # an untilted design has one tilt to average: nothing changes
    args = (DESIGNS["hinge"], 1.0, 6, 7, 5, 2, 1.0)
    assert oracle_pearson(*args, tilt_step_deg=1.0, tilt_average=True) == oracle_pearson(*args)
    with pytest.raises(ValueError, match="tilt_step_deg"):
        oracle_pearson(design, 0.5, 4, 7, 5, tilt_average=True)


def test_the_order_and_the_prior_shaped_reading():
    # Spearman reads the estimate's order; the prior-shaped reading spreads that order as
    # an N(0, 1) latent, which a uniformly drawn motion caps at sqrt(3 / pi)
    reading = oracle_pearson(DESIGNS["hinge"], 1.0, 40, 7, 41)
    assert 0.9 < reading.spearman[0] <= 1.0
    assert reading.prior_shaped[0] < min(reading.pearson[0], np.sqrt(3 / np.pi) + 0.02)
    assert reading.prior_shaped[0] > 0.85


def test_two_motions_get_bounds_on_their_sum_and_difference():
    # one motion: nothing to sum; two motions at SNR 1 with the pose known: the oracle
    # reads each motion, so their sum and difference too, and both far above chance
    assert oracle_pearson(DESIGNS["hinge"], 1.0, 6, 7, 5).sum_difference is None
    reading = oracle_pearson(DESIGNS["two-motions"], 1.0, 12, 7, 7)
    assert reading.sum_difference is not None
    on_sum, on_difference = reading.sum_difference
    assert min(reading.pearson) > 0.8 and on_sum > 0.8 and on_difference > 0.8
