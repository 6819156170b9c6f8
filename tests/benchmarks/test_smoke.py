"""Each accuracy benchmark runs end to end on tiny data, so the scripts keep working.

They are not timed and assert nothing about accuracy: the real runs are in docs/.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["model.hidden_dim=16", "model.encoder_rotations=4", "batch_size=16", "z_delay=0"]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def run(script: str, *args: str) -> str:
    done = run_script(script, *args)
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


def test_particles_accuracy_writes_the_traversal_figure(tmp_path):
    figure = tmp_path / "traversal.png"
    args = ["--n-train", "48", "--n-test", "16", "--epochs", "1", "--tilt", "10"]
    out = run("particles_accuracy.py", *args, "--figure", str(figure), *TINY)
    row = json.loads(out.strip().splitlines()[-1])
    assert row["tilt_deg"] == 10.0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the shared MNIST data is absent ({MNIST})")
def test_mnist_elbo_prints_a_row_per_model_and_writes_figures(tmp_path):
    out = run(
        "mnist_elbo.py",
        *["--epochs", "1", "--n-digits", "120", "--n-test", "40", "--z-dims", "2"],
        *["--figures", str(tmp_path)],
    )
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {(r["variant"], r["model"]) for r in rows} == {
        (variant, model)
        for variant in ("rotated", "rotated_translated")
        for model in ("spatial", "spatial-mlp", "fixed", "vanilla")
    }
    assert {r["canvas"] for r in rows} == {28, 56}
    assert all(r["test_elbo"] < 0 for r in rows)
    pngs = {p.name for p in tmp_path.iterdir()}
    assert pngs == {
        "mnist_manifolds_z2.png",
        "mnist_elbo_rotated.png",
        "mnist_elbo_rotated_translated.png",
    }
    # the saved rows redraw the charts and the table without training
    saved = tmp_path / "rows.jsonl"
    saved.write_text(out)
    replotted = tmp_path / "replot"
    table = run("mnist_elbo.py", "--replot", str(saved), "--figures", str(replotted))
    assert "| rotated | vanilla VAE |" in table
    assert {p.name for p in replotted.iterdir()} == pngs - {"mnist_manifolds_z2.png"}


def test_galaxies_writes_the_figure(tmp_path):
    pytest.importorskip("skimage", reason="the galaxies come from scikit-image's sample data")
    out = run(
        "galaxies.py",
        *["--epochs", "1", "--count", "8", "--size", "32", "--figures", str(tmp_path)],
    )
    row = json.loads(out.strip().splitlines()[-1])
    assert row["galaxies"] == 8
    assert (tmp_path / "galaxies_bernoulli.png").read_bytes()[:4] == b"\x89PNG"


def test_training_memory_compares_measured_and_estimated_steps():
    out = run("training_memory.py", "--case", "24:4:hidden_dim=16,encoder_rotations=4")
    row = json.loads(out.strip().splitlines()[-1])
    (case,) = row["cases"]
    assert case["measured_mb"] > 0 and case["estimate_mb"] > 0


def test_extract_micrographs_prints_time_and_peak_memory():
    out = run(
        "extract_micrographs.py",
        *["--micrographs", "2", "--side", "256", "--particles", "6", "--box", "48"],
        *["--size", "24", "--particle-size", "32"],
    )
    row = json.loads(out.strip().splitlines()[-1])
    assert row["picks"] == 12 and row["peak_rss_mb"] > 0 and row["seconds"] > 0


def test_design_family_prints_a_row_per_design_and_a_table(tmp_path):
    out = run(
        "design_family.py", "--designs", "two-motions", "--seeds", "0", "--n-train", "48",
        "--n-test", "16", "--epochs", "1", "--apply-snr", "0.1", "--trace", "8",
        "--save-latents", str(tmp_path / "latents"), "--keep-runs", str(tmp_path / "runs"),
        *TINY,
    )  # fmt: skip
    lines = out.strip().splitlines()
    # --trace: one line per epoch with the train KL of each z dim and the live scores
    assert lines[0].lstrip().startswith("two-motions seed 0 epoch   1") and "KL z" in lines[0]
    row = json.loads(lines[1])
    assert row["design"] == "two-motions" and len(row["pearson_each"]) == 2
    # the multiple correlation of both latents is at least the best single latent's
    assert all(r >= p - 1e-9 for r, p in zip(row["linear_each"], row["pearson_each"], strict=True))
    assert {"circ_fl", "circ_fl_state", "recon_corr", "test_elbo", "applied"} <= set(row)
    assert 0 <= row["spearman_z"] <= 1 and row["fold_check"] is None  # one epoch: not due
    # two motions: z along their sum and difference, and the angle error along both
    assert len(row["linear_sum_difference"]) == 2 and 0 <= row["angle_error_from_motions"] <= 1
    assert 0 <= row["sum_with_angle_error"] <= 1
    assert lines[-1].startswith("| two-motions | 0 |")
    # --save-latents: the held-out posterior means next to the ground truth (folder made)
    saved = np.load(tmp_path / "latents" / "two-motions_s0.npz")
    assert saved["z_mu"].shape == (16, 2) and saved["true_conformation"].shape == (16, 2)
    anatomy = run("latent_anatomy.py", str(tmp_path / "latents" / "two-motions_s0.npz"))
    assert [line.split(" | ")[1] for line in anatomy.splitlines()[2:]] == ["1", "2"]  # z axes
    for script, wrong in (
        ("latent_anatomy.py", tmp_path / "no.npz"),
        ("sweep_table.py", tmp_path / "no.rows"),
    ):
        done = run_script(script, str(wrong))
        assert done.returncode == 2 and "Traceback" not in done.stderr and "no." in done.stderr
    # --keep-runs: a run folder the CLI can load
    assert (tmp_path / "runs" / "two-motions_s0" / "checkpoint.safetensors").is_file()
    assert 0.0 <= row["half_turned"] <= 0.5
    # the half-turn warning's signal on the kept run, against the truth
    kept = str(tmp_path / "runs" / "two-motions_s0")
    args = ["--design", "two-motions", "--seed", "0", "--n-train", "48", "--n-test", "16"]
    signal = json.loads(run("half_turn_signal.py", kept, *args))
    assert signal["signal_reported"] == pytest.approx(row["half_turn_better"])
    assert 0.0 <= signal["flipped"] <= 0.5  # of the encoder's own poses (the check off)
    assert 0.0 <= signal["signal_all"] <= 1.0
    # the rotation with a disk of the reference template held still (a 2-D frame)
    reference, figure = tmp_path / "reference.png", tmp_path / "held.png"
    held = json.loads(run("hold_still.py", kept, *args, "--disk", "20,20,8",
                          "--reference-png", str(reference), "--figure", str(figure),
                          ).splitlines()[-1])  # fmt: skip
    # the same poses design_family scored (up to rounding)
    assert held["circ_fl"] == pytest.approx(row["circ_fl"], abs=0.002)
    assert held["circ_fl_state"] == pytest.approx(row["circ_fl_state"], abs=0.002)
    assert 0.0 <= held["circ_fl_held"] <= 1.0 and "masked pixels still" in held["frame"]
    assert reference.read_bytes()[:4] == figure.read_bytes()[:4] == b"\x89PNG"
    # the kept run's z1 traversal as a figure
    figure = tmp_path / "traversal.png"
    run("traversal_figure.py", str(tmp_path / "runs" / "two-motions_s0"), "-o", str(figure))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # wrong input: exit status 2 and a message, no traceback
    for bad in ([kept, "--steps", "1"], [kept, "--labels", "a", "b"], [str(tmp_path / "no")]):
        done = run_script("traversal_figure.py", *bad, "-o", str(figure))
        assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "run folder not found" in done.stderr
    # where z loses the motion: on the particles --apply-snr scored, the encoder's and the
    # inferred z agree with design_family's own scores of them
    gap = json.loads(run("z_gap.py", kept, "--snr", "0.1", "--n", "16").splitlines()[0])
    assert gap["encoder"] == row["applied"]["linear_z_encoder"]
    assert gap["inferred"] == row["applied"]["linear_z"]
    columns = ("refined", "generator", "generator + pose", "clean: generator", "own renderings")
    columns = (*columns, "truth")
    assert all(0.0 <= gap[c] <= 1.0 for c in columns)
    assert 0.0 <= gap["frame turn share"] <= 1.0 and gap["frame turn (deg)"] >= 0.0
    done = run_script("z_gap.py", str(tmp_path / "runs"))
    assert done.returncode == 2 and "not a design_family run folder" in done.stderr
    assert "Traceback" not in done.stderr
    # a sweep's table from the same output saved as one candidate's rows
    (tmp_path / "candidate.rows").write_text(out)
    table = run("sweep_table.py", str(tmp_path / "candidate.rows")).splitlines()
    assert table[0] == "| candidate | two-motions s0 | mean |"
    worse, applied = min(row["pearson_each"]), min(row["applied"]["pearson_each"])
    assert table[2].startswith(f"| candidate | {worse:.3f} / {applied:.3f}")
    assert table[2].endswith(f"| {worse:.3f} |")


def test_design_oracle_bounds_what_z_can_reach():
    out = run("design_oracle.py", "--designs", "hinge", "--snr", "1", "--n", "24", "--steps", "11")
    row = json.loads(out.strip().splitlines()[-1])
    # the project's hinge at SNR 1: the motion is plain to an oracle that knows the pose
    assert row["design"] == "hinge" and row["oracle_pearson"][0] > 0.95
    assert row["rotation_window_deg"] == 0


def test_design_oracle_with_the_rotation_unknown():
    args = ["--designs", "hinge", "--snr", "1", "--n", "16", "--steps", "9"]
    out = run("design_oracle.py", *args, "--rotation-window", "4")
    row = json.loads(out.strip().splitlines()[-1])
    # an in-plane hinge does not look like a turn of the whole particle: still plain
    assert row["rotation_window_deg"] == 4 and row["oracle_pearson"][0] > 0.9
    done = run_script("design_oracle.py", *args, "--rotation-window", "-1")
    assert done.returncode == 2 and "--rotation-window must be" in done.stderr


def test_design_oracle_with_the_pose_unknown():
    args = ["--designs", "hinge", "--snr", "1", "--n", "12", "--steps", "7"]
    windows = ["--rotation-window", "10", "--rotation-step", "2", "--shift-window", "1.5"]
    out = run("design_oracle.py", *args, *windows)
    assert "rotation within +-10 deg (2-deg steps) and shift within +-1.5 px" in out
    row = json.loads(out.strip().splitlines()[-1])
    assert row["shift_window_px"] == 1.5 and row["shift_step_px"] == 0.5
    assert row["oracle_pearson"][0] > 0.9
    # at SNR 1 the hinge's pose is known to a few degrees and a pixel: the windows hold it
    assert 0 <= row["pose_mass_on_window_edge"] < 0.1
    done = run_script("design_oracle.py", *args, "--shift-window", "1", "--shift-step", "0")
    assert done.returncode == 2 and "--shift-step must be positive" in done.stderr
    done = run_script("design_oracle.py", *args, "--rotation-window", "1", "--rotation-step", "2")
    assert done.returncode == 2 and "smaller than its step" in done.stderr


def test_design_oracle_with_the_tilt_unknown():
    args = ["--designs", "tilted-hinge", "--snr", "0.5", "--n", "12", "--steps", "9"]
    out = run("design_oracle.py", *args, "--tilt-step", "3")
    assert "tilt (3-deg steps over each design's prior) unknown" in out
    row = json.loads(out.strip().splitlines()[-1])
    assert row["tilt_step_deg"] == 3 and row["oracle_pearson"][0] > 0.8
    done = run_script("design_oracle.py", *args, "--tilt-step", "-1")
    assert done.returncode == 2 and "--tilt-step must be" in done.stderr


def test_explore_speed_prints_a_json_row():
    out = run("explore_speed.py", "--n", "32", "--size", "16", "--rows", "100")
    row = json.loads(out.strip().splitlines()[-1])
    assert {"average_s", "average_ctf_s", "star_write_s", "subset_s"} <= set(row)
    assert row["n"] == 32 and row["rows"] == 100


def test_particles_accuracy_with_ctf_reads_star_files_and_writes_the_figure(tmp_path):
    figure = tmp_path / "ctf.png"
    args = ["--ctf", "--size", "24", "--n-train", "48", "--n-test", "16", "--epochs", "1"]
    out = run("particles_accuracy.py", *args, "--figure", str(figure), *TINY)
    row = json.loads(out.strip().splitlines()[-1])
    assert row["ctf_data"] is True and row["snr"] == 0.3 and "pearson_z_defocus" in row
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctf_throughput_reports_the_slowdown():
    out = run("ctf_throughput.py", "--size", "16", "--batch", "8", "--steps", "1", "--repeats", "1")
    row = json.loads(out.strip().splitlines()[-1])
    assert row["img_per_s_with_ctf"] > 0 and row["slowdown"] > 0


def test_process_throughput_times_whole_training_processes():
    out = run(
        "process_throughput.py",
        *["--images", "40", "--epochs", "1", "--threads", "1", "--contenders", "defaults"],
    )
    assert "startup (spatial-vae --version)" in out
    row = next(line for line in out.splitlines() if line.startswith("defaults "))
    assert float(row.split()[-1]) > 0  # images/s of a process that trained and exited
