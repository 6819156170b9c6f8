"""The independent simulator: its motions, its files, its scoring, its end-to-end run."""

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from independent_particles import KINDS, score, write_stack

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_slide_moves_only_the_domain_and_by_five_pixels():
    (start, _), (end, weights) = KINDS["slide"](-1.0), KINDS["slide"](1.0)
    moved = np.linalg.norm(end - start, axis=1)
    np.testing.assert_allclose(moved[:6], 0.0)  # the body stands still
    np.testing.assert_allclose(moved[6:], 5.0)
    assert len(weights) == len(end)


def test_breathe_moves_the_lobes_apart_symmetrically():
    (closed, _), (opened, _) = KINDS["breathe"](-1.0), KINDS["breathe"](1.0)
    np.testing.assert_allclose(closed[:3], opened[:3])  # the core
    np.testing.assert_allclose((opened - closed)[3:7, 0], 6.0)
    np.testing.assert_allclose((opened - closed)[7:, 0], -6.0)


def test_two_slides_move_each_domain_by_its_own_conformation_only():
    molecule = KINDS["two-slides"]
    rest, _ = molecule(np.array([-1.0, -1.0]))
    first, _ = molecule(np.array([1.0, -1.0]))
    second, weights = molecule(np.array([-1.0, 1.0]))
    body, domain = slice(0, 6), slice(6, 9)
    np.testing.assert_allclose(np.linalg.norm(first - rest, axis=1)[domain], 5.0)
    np.testing.assert_allclose(np.delete(first - rest, domain, axis=0), 0.0)
    np.testing.assert_allclose(np.linalg.norm(second - rest, axis=1)[9:], 5.0)
    np.testing.assert_allclose((second - rest)[:9], 0.0)
    np.testing.assert_allclose(rest[body], molecule(np.array([0.3, 0.7]))[0][body])
    assert len(weights) == 12


def test_two_swings_turn_each_domain_in_the_plane_about_its_hinge():
    molecule = KINDS["two-swings"]
    rest, _ = molecule(np.array([0.0, 0.0]))
    for moved, domain in (
        (np.array([1.0, 0.0]), slice(6, 9)),
        (np.array([0.0, -1.0]), slice(9, 12)),
    ):
        swung, _ = molecule(moved)
        change = swung - rest
        np.testing.assert_allclose(np.delete(change, domain, axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(change[domain, 2], 0.0, atol=1e-12)  # in the plane
        # a rigid turn of 25°: distances within the domain are kept, and it moved
        kept = np.linalg.norm(swung[domain][:, None] - swung[domain][None], axis=-1)
        before = np.linalg.norm(rest[domain][:, None] - rest[domain][None], axis=-1)
        np.testing.assert_allclose(kept, before, atol=1e-12)
        assert np.linalg.norm(change[domain], axis=1).max() > 2.5


def test_a_stack_is_written_with_its_truth_and_its_noise_level(tmp_path):
    stack = write_stack(tmp_path / "slide", "slide", 40, 0.5, seed=3)
    images = mrcfile.read(stack)
    truth = pd.read_csv(tmp_path / "slide_truth.csv")
    assert images.shape == (40, 40, 40) and images.dtype == np.float32
    assert list(truth.columns) == ["conformation", "psi_deg", "shift_x", "shift_y"]
    assert truth["conformation"].between(-1, 1).all() and truth["psi_deg"].between(0, 360).all()
    # dark particles on a bright offset; nearly noise-free at a huge SNR
    clean = mrcfile.read(write_stack(tmp_path / "clean", "slide", 40, 1e6, seed=3))
    signal = (1000.0 - clean.astype(np.float64)) / 40.0
    noise = (clean.astype(np.float64) - images) / 40.0
    snr = signal.reshape(40, -1).var(axis=1).mean() / noise.var()
    assert 0.4 < snr < 0.6
    assert signal.min() > -0.01 and signal.max() > 1.0


def test_scores_are_one_for_the_truth_and_blind_to_z_sign_and_angle_offset():
    rng = np.random.default_rng(0)
    truth = pd.DataFrame(
        {"conformation": rng.uniform(-1, 1, 200), "psi_deg": rng.uniform(0, 360, 200)}
    )
    poses = pd.DataFrame(
        {"z1": -3.0 * truth["conformation"], "theta": np.radians(truth["psi_deg"]) + 1.0}
    )
    row = score(poses, truth)
    assert row["pearson_z"] > 0.999 and row["spearman_z"] > 0.999 and row["circ_fl"] > 0.999
    poses["z1"] = rng.permutation(poses["z1"].to_numpy())
    assert score(poses, truth)["pearson_z"] < 0.3


def test_two_motions_are_scored_per_motion_and_blind_to_how_z_is_turned(tmp_path):
    write_stack(tmp_path / "two", "two-swings", 8, 0.5, seed=1)
    columns = pd.read_csv(tmp_path / "two_truth.csv").columns
    assert list(columns) == ["conformation_1", "conformation_2", "psi_deg", "shift_x", "shift_y"]
    rng = np.random.default_rng(1)
    states = rng.uniform(-1, 1, (500, 2))
    truth = pd.DataFrame(
        {"conformation_1": states[:, 0], "conformation_2": states[:, 1],
         "psi_deg": rng.uniform(0, 360, 500)}
    )  # fmt: skip
    theta = np.radians(truth["psi_deg"])
    matched = pd.DataFrame({"theta": theta, "z1": -states[:, 1], "z2": 2 * states[:, 0]})
    row = score(matched, truth)
    assert row["pearson_z"] > 0.999 and row["linear_z"] > 0.999
    # z's axes turned 45° off the motions: each axis reads both, a linear map still reads each
    mixed = matched.assign(z1=states[:, 0] + states[:, 1], z2=states[:, 0] - states[:, 1])
    row = score(mixed, truth)
    assert row["pearson_z"] < 0.75 and row["linear_z"] > 0.999
    assert row["pearson_z_1"] < 0.75 and row["pearson_z_2"] < 0.75
    # one motion missing from z: the worse motion says so
    row = score(matched.assign(z1=rng.normal(size=500)), truth)
    assert row["pearson_z"] < 0.2 and row["linear_z"] < 0.2 and row["pearson_z_1"] > 0.999
    # the motions' sum taken by the rotation: z reads their difference only, and the angle
    # error follows the sum
    difference = states[:, 0] - states[:, 1]
    turned = np.radians(truth["psi_deg"] + 6.0 * states.sum(axis=1))
    took = pd.DataFrame({"theta": turned, "z1": difference, "z2": rng.normal(size=500)})
    row = score(took, truth)
    assert row["linear_z_difference"] > 0.999 and row["linear_z_sum"] < 0.2
    assert row["angle_error_from_motions"] > 0.999 and row["circ_fl"] > 0.9
    # ... so z and the angle error together read the sum: split, not lost
    assert row["linear_z_sum_with_angle_error"] > 0.999
    assert 0.6 < row["linear_z"] < 0.8  # motion 1 = (sum + difference) / 2, half read
    # a run with a spare latent (z-dim 3) is scored on all three: the sum on z3 counts
    row = score(took.assign(z3=states.sum(axis=1)), truth)
    assert row["linear_z_sum"] > 0.999 and row["linear_z"] > 0.999


def test_the_run_trains_through_the_command_line_and_prints_a_row_per_stack(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "independent_particles.py"), "run", "--kinds", "slide",
         "two-swings", "--seeds", "0", "--n-train", "64", "--n-test", "32", "--epochs", "1",
         "--threads", "1", "--apply-snr", "0.1", "--dir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("| kind | seed | SNR | wall_s | pearson_z | linear_z |")
    assert lines[2].startswith("| slide | 0 | 0.5 |") and lines[3].startswith("| slide | 0 | 0.1 |")
    assert len(pd.read_csv(tmp_path / "run_slide_s0" / "poses_snr0.5.csv")) == 32
    # a two-motion kind trains with z-dim 2 and reports each motion
    assert lines[4].startswith("| two-swings | 0 | 0.5 |") and lines[4].count(" / ") == 2
    assert {"z1", "z2"} <= set(pd.read_csv(tmp_path / "run_two-swings_s0" / "poses_snr0.1.csv"))


def test_scoring_tables_that_do_not_match_fail_in_one_line(tmp_path):
    truth = pd.DataFrame({"conformation": [0.1, 0.5, -0.3], "psi_deg": [10.0, 200.0, 90.0]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    pd.DataFrame({"theta": [0.0, 1.0], "z1": [0.2, 0.4]}).to_csv(
        tmp_path / "short.csv", index=False
    )
    pd.DataFrame({"theta": [0.0, 1.0, 2.0]}).to_csv(tmp_path / "no_z.csv", index=False)
    script = str(BENCHMARKS / "independent_particles.py")
    for poses, message in (
        ("short.csv", "2 poses for 3 particles of the truth table"),
        ("no_z.csv", "the poses table lacks column(s) z1"),
        ("missing.csv", "No such file"),
    ):
        done = subprocess.run(
            [sys.executable, script, "score", str(tmp_path / poses), str(tmp_path / "truth.csv")],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
    # a collapsed z scores 0, not NaN
    constant = pd.DataFrame({"theta": [0.0, 1.0, 2.0], "z1": [0.3, 0.3, 0.3]})
    assert score(constant, truth)["pearson_z"] == 0.0
