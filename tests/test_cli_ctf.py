"""``spatial-vae simulate --ctf`` and ``train --ctf``: end to end, and bad CTF input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_spatial_vae.io import read_poses, read_stack
from tests.cli_run import run_cli

TINY = [
    "--hidden-dim", "32", "--encoder-rotations", "8", "--batch-size", "16", "--z-delay", "0",
    "--device", "cpu", "-q", "--epochs", "1",
]  # fmt: skip


@pytest.fixture
def ctf_star(tmp_path, capsys) -> Path:
    star = tmp_path / "particles.star"
    code, err = run_cli(
        capsys, "simulate", "--ctf", "-o", star, "--n", "40", "--size", "20", "--snr", "1"
    )
    assert code == 0, err
    assert "CTF: 40 particles, defocus 0." in err
    return star


def test_simulate_ctf_writes_a_relion_star_with_ctf_and_truth(ctf_star):
    stack = read_stack(ctf_star)
    assert stack.shape == (40, 20, 20) and stack.pixel_size == 3.0
    table = stack.ctf.table
    mean = (table["defocus_u"] + table["defocus_v"]) / 2
    assert mean.between(5000, 35000).all()
    assert ((table["defocus_u"] - table["defocus_v"]).abs() <= 300).all()
    assert (table["voltage"] == 300).all() and (table["cs"] == 2.7).all()
    truth = read_poses(ctf_star)
    assert {"theta", "dx", "dy", "conformation"} <= set(truth.columns)


def test_train_uses_the_ctf_of_a_star_file_by_default(ctf_star, tmp_path, capsys):
    code, err = run_cli(capsys, "train", ctf_star, "-o", tmp_path / "run", *TINY)
    assert code == 0, err
    assert "CTF: 40 particles, defocus 0." in err and f"from {ctf_star}" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["ctf"].startswith("CTF: 40 particles") and saved["config"]["ctf"] == "auto"
    code, err = run_cli(capsys, "train", ctf_star, "-o", tmp_path / "off", "--ctf", "off", *TINY)
    assert code == 0, err
    assert "CTF: off" in err


def test_ctf_on_without_ctf_fails_in_one_line(tmp_path, npy_stack, capsys):
    code, err = run_cli(capsys, "train", npy_stack, "-o", tmp_path / "r", "--ctf", "on", *TINY)
    assert code != 0
    assert err.strip().count("\n") == 0
    assert "--ctf on, but the particles carry no CTF parameters" in err


def test_partly_missing_ctf_columns_fail_unless_ctf_is_off(ctf_star, tmp_path, capsys):
    broken = tmp_path / "broken.star"
    broken.write_text(ctf_star.read_text().replace("_rlnVoltage", "_rlnHelicalTubeID"))
    code, err = run_cli(capsys, "train", broken, "-o", tmp_path / "r", *TINY)
    assert code != 0
    assert err.strip() == (
        f"spatial-vae train: error: {broken}: CTF columns partly missing: no rlnVoltage "
        "although rlnDefocusU is present; fix the file or train with --ctf off"
    )
    code, err = run_cli(capsys, "train", broken, "-o", tmp_path / "r", "--ctf", "off", *TINY)
    assert code == 0, err


def test_negative_defocus_names_the_particle_row(ctf_star, tmp_path, capsys):
    lines = ctf_star.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("000003@"))
    fields = lines[first].split()
    fields[1] = "-" + fields[1]
    lines[first] = "\t".join(fields)
    bad = tmp_path / "bad.star"
    bad.write_text("\n".join(lines) + "\n")
    code, err = run_cli(capsys, "train", bad, "-o", tmp_path / "r", *TINY)
    assert code != 0
    assert f"{bad}: particle row 3: negative defocus" in err
    assert err.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--ctf", "-o", "x.mrcs"], "--ctf writes a RELION .star file"),
        (["--ctf", "-o", "x.star", "--defocus", "2", "1"], "--defocus needs 0 < MIN <= MAX"),
        (["--ctf", "-o", "x.star", "--amplitude-contrast", "1"], "--amplitude-contrast in"),
    ],
)
def test_simulate_ctf_bad_flags(tmp_path, capsys, args, pattern):
    args = [a if not a.startswith("x.") else tmp_path / a for a in args]
    code, err = run_cli(capsys, "simulate", *args, "--n", "4", "--size", "16")
    assert code != 0 and pattern in err
    assert err.strip().count("\n") == 0


def test_infer_reconstructions_with_and_without_the_ctf(ctf_star, tmp_path, capsys):
    import mrcfile
    import numpy as np

    run = tmp_path / "run"
    code, err = run_cli(capsys, "train", ctf_star, "-o", run, *TINY)
    assert code == 0, err
    outputs = {}
    for flag in ([], ["--with-ctf"]):
        recon = tmp_path / f"recon{len(flag)}.mrcs"
        args = ["infer", run, ctf_star, "-o", tmp_path / "p.csv", "--reconstructions", recon, "-q"]
        code, err = run_cli(capsys, *args, *flag)
        assert code == 0, err
        with mrcfile.open(recon) as mrc:
            outputs[len(flag)] = np.array(mrc.data)
    assert outputs[0].shape == outputs[1].shape == (40, 20, 20)
    assert not np.allclose(outputs[0], outputs[1])
    npy = tmp_path / "plain.npy"
    np.save(npy, outputs[0])
    args = ["infer", run, npy, "-o", tmp_path / "q.csv", "--reconstructions", tmp_path / "r.mrcs"]
    code, err = run_cli(capsys, *args, "--with-ctf", "-q")
    assert code != 0 and "with CTF, but these particles carry no CTF parameters" in err
