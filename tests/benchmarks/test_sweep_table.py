"""The sweep table: one row per candidate, missing and crashed runs shown, never averaged in."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sweep_table import read_rows, table


def row(design: str, seed: int, snr: float, worse: float, **extra) -> dict:
    """A design_family row with the fields the table reads."""
    return {
        "design": design, "seed": seed, "snr": snr, "epochs": 38, "circ_fl": 0.98,
        "half_turned": 0.0, "pearson_each": [worse + 0.05, worse], **extra,
    }  # fmt: skip


def test_candidates_with_missing_jobs_and_failed_rotations():
    applied = {"applied_snr": 0.1, "applied": {"pearson_each": [0.7, 0.6]}}
    text = table(
        {
            "defaults": [
                row("two-hinges", 0, 0.5, 0.9, **applied),
                row("tilted-hinge", 0, 0.1, 0.6, applied_snr=0.1, applied={"pearson_each": [0.5]}),
            ],
            "deeper": [row("two-hinges", 0, 0.5, 0.4, circ_fl=0.3, half_turned=0.25, epochs=30)],
            "crashed": [],
        }
    ).splitlines()
    # the design's own SNR is not named; another one is
    assert text[0] == "| candidate | two-hinges s0 | tilted-hinge s0, SNR 0.1 | mean |"
    assert text[1] == "|---|---|---|---|"
    # the worse motion, then applied (not where it was applied at its own SNR), the mean
    assert text[2] == "| defaults | 0.900 / 0.600 | 0.600 | 0.750 |"
    # a failed rotation and a short run are named; a missing job leaves the mean out
    assert text[3] == (
        "| deeper | 0.400 (FL 0.30, 25 % half-turned; 30 epochs) | (missing) | (incomplete) |"
    )
    assert text[4] == "| crashed | (missing) | (missing) | (incomplete) |"


def test_the_last_row_of_a_job_counts_once(tmp_path):
    rows = tmp_path / "again.rows"
    runs = [row("hinge", 0, 1.0, 0.2), row("hinge", 0, 1.0, 0.8)]
    rows.write_text("training...\n" + "\n".join(map(json.dumps, runs)) + "\n| design | seed |\n")
    text = table({"again": read_rows(rows)}).splitlines()
    assert text[0] == "| candidate | hinge s0 | mean |"
    assert text[2] == "| again | 0.800 | 0.800 |"


def test_no_rows_at_all():
    assert table({"crashed": []}).splitlines()[2] == "| crashed | (incomplete) |"
