"""Each accuracy benchmark runs end to end on tiny data, so the scripts keep working.

They are not timed and assert nothing about accuracy: the real runs are in docs/.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["model.hidden_dim=16", "model.encoder_rotations=4", "batch_size=16", "z_delay=0"]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("extra", [[], ["model.vanilla=True", "model.encoder=mlp"]])
def test_particles_accuracy_prints_a_json_row(extra):
    out = run(
        "particles_accuracy.py", "--n-train", "48", "--n-test", "16", "--epochs", "1", *TINY, *extra
    )
    row = json.loads(out.strip().splitlines()[-1])
    assert {"pearson_z", "circ_fl", "circ_js", "angle_align", "test_elbo"} <= set(row)


def test_particles_trace_prints_one_line_per_epoch():
    out = run("particles_trace.py", "--n-train", "48", "--n-test", "16", "--epochs", "2", *TINY)
    assert [line.split()[1] for line in out.strip().splitlines()] == ["1", "2"]
