"""generator_capacity's reading and its end-to-end run on tiny data."""

import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from generator_capacity import conformation_bank, read_conformation, unposed_particles

from napari_spatial_vae.core.designs import DESIGNS, render_design

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_each_rendering_of_the_bank_reads_back_as_its_own_conformation_at_any_amplitude():
    design = DESIGNS["two-motions"]
    values = conformation_bank(2)
    assert values.shape == (441, 2)
    rng = np.random.default_rng(0)
    n = len(values)
    bank = render_design(design, values, np.zeros(n), np.zeros((n, 2)), np.zeros(n))
    bank = bank.reshape(n, -1)
    picked = rng.choice(n, 20, replace=False)
    scaled = bank[picked] * rng.uniform(0.5, 3.0, (20, 1))  # the amplitude is profiled out
    np.testing.assert_array_equal(read_conformation(scaled, bank, values), values[picked])


def test_unposed_particles_are_centred_and_unturned():
    rng = np.random.default_rng(1)
    images, conformation = unposed_particles(DESIGNS["hinge"], 3, rng)
    n = len(images)
    zeros = np.zeros(n)
    again = render_design(DESIGNS["hinge"], conformation, zeros, np.zeros((n, 2)), zeros)
    np.testing.assert_allclose(images, again.reshape(n, -1), atol=1e-6)


def test_the_benchmark_prints_a_row_per_design():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "generator_capacity.py"), "--designs", "hinge",
         "--n-fit", "64", "--n-test", "32", "--steps", "3", "--threads", "1"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("| design | fit_s | fit_residual | own@0.5 | truth@0.5 |")
    assert lines[2].startswith("| hinge |") and len(lines) == 3
    bad = subprocess.run(
        [sys.executable, str(BENCHMARKS / "generator_capacity.py"), "--designs", "nope"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown design(s) nope" in bad.stderr
