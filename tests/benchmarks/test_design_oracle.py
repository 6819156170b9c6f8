"""The oracle's pose grid: the true pose always scored, the windows as asked."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from design_oracle import pose_offsets


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
