"""The command line as a user runs it: end to end, and every bad input in one line."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from napari_spatial_vae.cli.train import _Progress
from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.fold_restart import many_variations_message
from napari_spatial_vae.core.frame import fit_pose_frame
from napari_spatial_vae.core.infer import encode_stack
from napari_spatial_vae.core.metrics import EpochMetrics
from napari_spatial_vae.core.train import TrainUpdate
from napari_spatial_vae.core.unrendered import UnrenderedVariation
from tests.cli_run import run_cli

TINY = [
    "--hidden-dim",
    "32",
    "--encoder-rotations",
    "8",
    "--batch-size",
    "16",
    "--z-delay",
    "0",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture
def trained_run(tmp_path, npy_stack, capsys) -> Path:
    run = tmp_path / "run"
    code, err = run_cli(
        capsys, "train", npy_stack, "-o", run, "--epochs", "2", "--z-dim", "2", *TINY
    )
    assert code == 0, err
    return run


def test_train_writes_the_run_folder(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {
        "config.json",
        "checkpoint.safetensors",
        "history.csv",
    }
    history = pd.read_csv(trained_run / "history.csv")
    assert list(history.columns[:5]) == ["epoch", "split", "elbo", "recon", "kl"]
    assert set(history["split"]) == {"train", "test"} and history["epoch"].max() == 2


def test_infer_writes_poses_aligned_and_reconstructions(
    trained_run, npy_stack, tmp_path, capsys, tiny_particles
):
    out = tmp_path / "out"
    code, err = run_cli(
        capsys,
        "infer",
        trained_run,
        npy_stack,
        "-o",
        out / "poses.csv",
        "--aligned",
        out / "aligned.mrcs",
        "--reconstructions",
        out / "rec.mrcs",
        "--batch-size",
        "10",
        "-q",
    )
    assert code == 0, err
    poses = pd.read_csv(out / "poses.csv")
    assert len(poses) == len(tiny_particles.images)
    assert list(poses.columns) == [
        "theta",
        "dx",
        "dy",
        "z1",
        "z2",
        "theta_std",
        "dx_std",
        "dy_std",
        "z1_std",
        "z2_std",
    ]
    assert np.all(np.abs(poses["theta"]) <= np.pi + 1e-6)
    for name in ("aligned.mrcs", "rec.mrcs"):
        with mrcfile.open(out / name) as handle:
            assert handle.data.shape == tiny_particles.images.shape
            assert np.isfinite(handle.data).all()


def test_infer_writes_relion_star(trained_run, npy_stack, tmp_path, capsys):
    code, err = run_cli(capsys, "infer", trained_run, npy_stack, "-o", tmp_path / "p.star", "-q")
    assert code == 0, err
    text = (tmp_path / "p.star").read_text()
    assert "data_optics" in text and "_rlnAnglePsi" in text and "_rlnImageName" in text
    # a .npy input: RELION gets an .mrcs copy and the optics defaults, each said in one line
    assert (tmp_path / "p_particles.mrcs").is_file()
    assert "rlnVoltage 300" in err and "p_particles.mrcs" in err


def test_traverse_writes_one_image_per_dimension_and_step(trained_run, tmp_path, capsys):
    code, err = run_cli(capsys, "traverse", trained_run, "-o", tmp_path / "t.mrcs", "--steps", "5")
    assert code == 0, err
    with mrcfile.open(tmp_path / "t.mrcs") as handle:
        assert handle.data.shape == (2 * 5, 20, 20)
    code, err = run_cli(
        capsys, "traverse", trained_run, "-o", tmp_path / "g.mrcs", "--grid", "--steps", "3"
    )
    assert code == 0, err
    with mrcfile.open(tmp_path / "g.mrcs") as handle:
        assert handle.data.shape == (9, 20, 20)


def test_resume_continues_to_more_epochs(trained_run, npy_stack, capsys):
    code, err = run_cli(
        capsys, "train", npy_stack, "-o", trained_run, "--resume", "--epochs", "3", "-q"
    )
    assert code == 0, err
    assert pd.read_csv(trained_run / "history.csv")["epoch"].max() == 3
    code, err = run_cli(capsys, "train", npy_stack, "-o", trained_run, "--resume", "--z-dim", "3")
    assert code == 2 and "--z-dim 3 differs from this run's saved z_dim = 2" in err
    assert err.count("\n") == 1


def test_resume_accepts_the_original_command_repeated(trained_run, npy_stack, capsys):
    # the command that made the run (see trained_run), with --resume and a longer budget
    code, err = run_cli(
        capsys, "train", npy_stack, "-o", trained_run, "--z-dim", "2", *TINY,
        "--resume", "--epochs", "3",
    )  # fmt: skip
    assert code == 0, err
    assert pd.read_csv(trained_run / "history.csv")["epoch"].max() == 3
    code, err = run_cli(
        capsys, "train", npy_stack, "-o", trained_run, "--resume", "--no-rotation-search"
    )
    assert code == 2 and "saved rotation_search = true" in err


def test_simulate_writes_a_stack_and_its_truth(tmp_path, capsys):
    code, err = run_cli(
        capsys,
        "simulate",
        "-o",
        tmp_path / "sim.mrcs",
        "--n",
        "12",
        "--size",
        "16",
        "--pixel-size",
        "2.5",
    )
    assert code == 0, err
    with mrcfile.open(tmp_path / "sim.mrcs") as handle:
        assert handle.data.shape == (12, 16, 16)
        assert float(handle.voxel_size.x) == pytest.approx(2.5)
    truth = pd.read_csv(tmp_path / "sim_truth.csv")
    assert list(truth.columns) == ["conformation", "theta", "dx", "dy"] and len(truth) == 12


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    cases["missing"] = (tmp_path / "nope.mrcs", "not found|does not exist|no such")
    text = tmp_path / "text.mrcs"
    text.write_text("this is not an MRC file\n" * 20)
    cases["not an MRC"] = (text, "MRC|text")
    one_d = tmp_path / "line.npy"
    np.save(one_d, np.arange(10, dtype=np.float32))
    cases["1-D array"] = (one_d, "1-D|shape|dimension")
    nan = tmp_path / "nan.npy"
    data = np.ones((8, 16, 16), np.float32)
    data[3, 2, 2] = np.nan
    np.save(nan, data)
    cases["NaN pixels"] = (nan, "NaN")
    inf = tmp_path / "inf.mrcs"
    data = np.ones((8, 16, 16), np.float32)
    data[6, 0, 0] = np.inf
    with warnings.catch_warnings(), mrcfile.new(inf) as handle:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about the inf we want
        handle.set_data(data)
    cases["infinite pixels"] = (inf, "NaN or inf")
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 16, 16), np.float32))
    cases["empty stack"] = (empty, "no images|empty")
    return cases


@pytest.mark.parametrize(
    "case", ["missing", "not an MRC", "1-D array", "NaN pixels", "infinite pixels", "empty stack"]
)
def test_bad_input_fails_with_one_line_naming_the_file(tmp_path, capsys, case):
    path, pattern = _bad_inputs(tmp_path)[case]
    code, err = run_cli(capsys, "train", path, "-o", tmp_path / "run", "--epochs", "1", *TINY)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert path.name in lines[0]
    assert re.search(pattern, lines[0], flags=re.IGNORECASE), lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--epochs", "0"], "epochs must be between"),
        (["--lr", "-1"], "lr must be >"),
        (["--device", "tpu"], "device must be"),
        (["--device", "cuda:3"], "CUDA is not available|only"),
        (["--likelihood", "poisson"], "invalid choice"),
        (["--z-dim", "two"], "invalid int value"),
        (["--vanilla", "--encoder", "equivariant"], "encoder='mlp'"),
    ],
)
def test_bad_flags_fail_with_one_line(tmp_path, npy_stack, capsys, args, pattern):
    code, err = run_cli(capsys, "train", npy_stack, "-o", tmp_path / "run", *args)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err


def test_infer_rejects_a_folder_that_is_not_a_run(tmp_path, npy_stack, capsys):
    code, err = run_cli(capsys, "infer", tmp_path, npy_stack, "-o", tmp_path / "p.csv")
    assert code == 1 and "not a spatial-VAE run folder" in err
    code, err = run_cli(capsys, "infer", tmp_path, npy_stack, "-o", tmp_path / "p.txt")
    assert code == 2 and "POSES must end in .csv or .star" in err


def test_infer_refines_z_unless_told_not_to(trained_run, npy_stack, tmp_path, capsys):
    code, err = run_cli(capsys, "infer", trained_run, npy_stack, "-o", tmp_path / "a.csv", "-q")
    assert code == 0, err
    args = ["infer", trained_run, npy_stack, "-o", tmp_path / "b.csv", "--refine-steps", "0"]
    code, err = run_cli(capsys, *args, "-q")
    assert code == 0, err
    refined, plain = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_array_equal(refined["theta"], plain["theta"])
    assert np.abs(refined["z1"] - plain["z1"]).max() > 1e-3
    code, err = run_cli(capsys, "infer", trained_run, npy_stack, "-o", tmp_path / "c.csv",
                        "--refine-steps", "-2")  # fmt: skip
    assert code == 2 and err.strip().endswith("--refine-steps must be 0 or more, got -2")
    assert not (tmp_path / "c.csv").exists()


def test_infer_searches_the_rotation_of_a_one_latent_run(trained_run, npy_stack, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code, err = run_cli(capsys, "infer", trained_run, npy_stack, "-o", out, "--search-rotation")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "one latent z that infers the rotation; this one has z-dim 2" in err
    assert not out.exists()
    run = tmp_path / "one"
    code, err = run_cli(
        capsys, "train", npy_stack, "-o", run, "--epochs", "2", "--z-dim", "1", *TINY
    )
    assert code == 0, err
    code, err = run_cli(capsys, "infer", run, npy_stack, "-o", out, "--search-rotation", "-q")
    assert code == 0, err
    searched = pd.read_csv(out)
    model, config, _ = load_model(run)
    expected = encode_stack(model, config, np.load(npy_stack), search_rotation=True)
    np.testing.assert_allclose(searched["theta"], expected.theta, atol=1e-5)
    np.testing.assert_allclose(searched["z1"], expected.z[:, 0], atol=1e-4)


def test_infer_rejects_images_of_another_size(trained_run, tmp_path, capsys):
    other = tmp_path / "big.npy"
    np.save(other, np.zeros((4, 24, 24), np.float32))
    code, err = run_cli(capsys, "infer", trained_run, other, "-o", tmp_path / "p.csv", "-q")
    assert code == 1 and "trained on" in err and len(err.strip().splitlines()) == 1


def test_console_script_and_module_entry_point(tmp_path):
    for command in (["spatial-vae"], [sys.executable, "-m", "napari_spatial_vae"]):
        exe = Path(sys.executable).with_name("spatial-vae") if command == ["spatial-vae"] else None
        argv = [str(exe)] if exe else command
        done = subprocess.run(
            [*argv, "train", str(tmp_path / "missing.mrcs"), "-o", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "missing.mrcs" in done.stderr
        assert "Traceback" not in done.stderr


def test_epoch_lines_report_each_latent_and_a_collapse(tmp_path, capsys):
    # identical particles: nothing for z to explain, so z collapses and is named
    image = np.zeros((20, 20), np.float32)
    image[6:14, 8:12] = 1.0
    stack = tmp_path / "same.npy"
    np.save(stack, np.repeat(image[None], 48, axis=0))
    code, err = run_cli(
        capsys, "train", stack, "-o", tmp_path / "run", "--epochs", "3", "--z-dim", "2",
        "--no-augment-rotation", *[a for a in TINY if a != "-q"],
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"epoch 3/3 .* KL per z dim \d+\.\d\d \d+\.\d\d", err)
    # the default coarse-to-fine phase (30 % of 3 epochs): epoch 1 binned, and says so
    assert re.search(r"epoch 1/3  train ELBO \S+ \(recon \S+, KL \S+, 2x2-binned\)", err)
    assert re.search(r"epoch 3/3  train ELBO \S+ \(recon \S+, KL [^,]+\)", err)
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    # which of the two fades first within 3 epochs depends on the initialisation
    assert re.match(r"warning: (z1|z2|z1, z2) carr(y|ies) almost nothing", warning)


@pytest.mark.parametrize("mode", ["off", "auto", "on"])
def test_train_warns_when_held_out_particles_fit_better_turned(capsys, mode):
    # the progress printer the train command feeds, given the events a run sends
    progress = _Progress(quiet=True, z_delay=0, half_turn_check=mode)
    metrics = EpochMetrics(-10.0, 9.0, 4.0, 0.5, 0.3, 3.2, (3.2,))
    progress(TrainUpdate("epoch", 5, 5, train=metrics, test=replace(metrics, half_turn_better=0.2)))
    progress(TrainUpdate("finished", 5, 5, stop_reason="completed"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "fit better turned" in line]
    if mode != "off":  # the run has tried (or would have) each particle turned
        assert lines == []
    else:
        assert len(lines) == 1
        assert lines[0].startswith("warning: 20.0 % of the held-out particles fit better")


@pytest.mark.parametrize(
    ("share", "runner_up", "expected"),
    [
        (1.04, 0.0,
         "warning: the particles share a variation the model does not render, 104% as strong "
         "as the strongest one z renders: z may read two states as one (a folded z) or the "
         "particles need another dimension; train again with another --seed or a larger "
         "--z-dim, and see docs/defaults.md"),
        # spread over several directions (the Hubble galaxies with z-dim 1: 1.10, 1.43)
        (1.10, 1.43 * 1.10,
         "warning: the particles vary in more ways than z renders: what the model does not "
         "render is 110% as strong as what z renders, in several directions; a larger "
         "--z-dim renders more (another --seed would not), see docs/defaults.md"),
        (0.03, 0.0, None),
    ],
)  # fmt: skip
def test_train_warns_when_the_particles_share_a_variation_the_model_does_not_render(
    capsys, share, runner_up, expected
):
    # measured at the end of training (core/unrendered.py), said even when quiet
    progress = _Progress(quiet=True, z_delay=0, half_turn_check="auto")
    metrics = EpochMetrics(-10.0, 9.0, 4.0, 0.5, 0.3, 3.2, (3.2,))
    progress(TrainUpdate("epoch", 5, 5, train=metrics, test=metrics))
    measured = UnrenderedVariation(share, 1.0, 2048, runner_up)
    progress(TrainUpdate("finished", 5, 5, stop_reason="completed", unrendered=measured))
    lines = [line for line in capsys.readouterr().err.splitlines() if "does not render" in line]
    assert lines == ([expected] if expected else [])


def test_train_says_when_it_starts_again_after_a_folded_z_even_when_quiet(capsys):
    # core/fold_restart.py: the line is said, and the discarded attempt's last epoch no
    # longer judges the run (its collapse warning would describe another model)
    progress = _Progress(quiet=True, z_delay=0, half_turn_check="auto")
    collapsed = EpochMetrics(-10.0, 9.0, 1.0, 0.5, 0.3, 0.01, (0.01,))
    line = "z looks folded after epoch 12 (...): starting again from a fresh initialisation"
    progress(TrainUpdate("epoch", 12, 38, train=collapsed, test=collapsed, message=line,
                         restarted=True))  # fmt: skip
    assert progress.last is None
    progress(TrainUpdate("finished", 12, 38, stop_reason="stopped"))
    assert capsys.readouterr().err.splitlines() == [line]


def test_train_says_when_the_fold_check_finds_more_than_a_fold_and_goes_on(capsys):
    # core/fold_restart.py: no restart, so the run's epochs and warnings stay its own
    progress = _Progress(quiet=True, z_delay=0, half_turn_check="auto")
    metrics = EpochMetrics(-10.0, 9.0, 1.0, 0.5, 0.3, 3.2, (3.2,))
    line = many_variations_message(UnrenderedVariation(2.88, 1.0, 2048, 4.84), 19)
    progress(TrainUpdate("epoch", 19, 60, train=metrics, test=metrics, message=line))
    assert progress.last is not None and progress.last[0] == 19
    assert capsys.readouterr().err.splitlines() == [line]
    assert "288% as strong" in line and "training goes on" in line


def test_infer_traverse_and_movie_hold_a_masked_part_still(npy_stack, tmp_path, capsys):
    # one latent: the frame's grid is 1-D (quick to fit)
    run = tmp_path / "one"
    code, err = run_cli(
        capsys, "train", npy_stack, "-o", run, "--epochs", "2", "--z-dim", "1", *TINY
    )
    assert code == 0, err
    mask_path = tmp_path / "mask.mrc"
    rows, columns = np.mgrid[:20, :20]
    mask = ((rows - 8) ** 2 + (columns - 7) ** 2 < 25).astype(np.float32)
    with mrcfile.new(mask_path) as handle:
        handle.set_data(mask)
    plain, held = tmp_path / "plain.csv", tmp_path / "held.csv"
    code, err = run_cli(capsys, "infer", run, npy_stack, "-o", plain, "-q")
    assert code == 0, err
    code, err = run_cli(
        capsys, "infer", run, npy_stack, "-o", held, "--hold-still", mask_path, "-q"
    )
    assert code == 0, err
    assert "holding" in err and "masked pixels still" in err
    # the same particles and z, each angle turned by the frame at its z
    model, _, _ = load_model(run)
    frame = fit_pose_frame(model, mask)
    before, after = pd.read_csv(plain), pd.read_csv(held)
    np.testing.assert_allclose(after[["z1"]], before[["z1"]], atol=1e-6)
    turn, _ = frame.at(torch.tensor(before[["z1"]].to_numpy(), dtype=torch.float32))
    expected = np.angle(np.exp(1j * (before["theta"] - turn.numpy())))
    np.testing.assert_allclose(np.angle(np.exp(1j * (after["theta"] - expected))), 0, atol=1e-4)
    code, err = run_cli(
        capsys, "traverse", run, "-o", tmp_path / "t.mrcs", "--hold-still", mask_path
    )
    assert code == 0 and "masked pixels still" in err, err
    code, err = run_cli(capsys, "movie", run, "-o", tmp_path / "m.gif", "--steps", "3",
                        "--hold-still", mask_path)  # fmt: skip
    assert code == 0 and (tmp_path / "m.gif").is_file(), err
    # one-line refusals, nothing written
    code, err = run_cli(capsys, "movie", npy_stack, "-o", tmp_path / "n.gif",
                        "--hold-still", mask_path)  # fmt: skip
    assert code == 2 and "applies to a RUN_DIR" in err and not (tmp_path / "n.gif").exists()
    small = tmp_path / "small.npy"
    np.save(small, np.ones((12, 12), np.float32))
    code, err = run_cli(capsys, "infer", run, npy_stack, "-o", tmp_path / "x.csv",
                        "--hold-still", small, "-q")  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "must be one 20 x 20 image" in err and not (tmp_path / "x.csv").exists()
    for bad, message in ((np.ones((2, 20, 20)), "holds 2 images"),
                         (np.ones((20, 20)), "paint only the part")):  # fmt: skip
        np.save(tmp_path / "bad.npy", bad.astype(np.float32))
        code, err = run_cli(capsys, "infer", run, npy_stack, "-o", tmp_path / "x.csv",
                            "--hold-still", tmp_path / "bad.npy", "-q")  # fmt: skip
        assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x.csv").exists()


def test_infer_says_how_many_particles_it_read_a_half_turn_away(tmp_path, capsys):
    from napari_spatial_vae.core.checkpoint import Progress, save_checkpoint, save_config
    from napari_spatial_vae.core.config import TrainConfig
    from napari_spatial_vae.core.data import preprocess
    from tests.untrained import sharp_untrained_model, smooth_blobs

    model = sharp_untrained_model(fit_noise=False)  # half_turn_check "auto"
    run = tmp_path / "run"
    run.mkdir()
    save_config(run, TrainConfig(model=model.config), model.image_shape, {})
    save_checkpoint(run, model, None, Progress(epochs_completed=1, finished=True))
    blobs = smooth_blobs(20)
    np.save(tmp_path / "blobs.npy", blobs[:, 0].numpy())
    with torch.no_grad():
        expected = int(model.encode_with_turns(preprocess(blobs, 1.0, normalize=True))[1].sum())
    assert 0 < expected < 20
    code, err = run_cli(
        capsys, "infer", run, tmp_path / "blobs.npy", "-o", tmp_path / "poses.csv",
        "--refine-steps", "0", "--device", "cpu", "-q",
    )  # fmt: skip
    assert code == 0, err
    share = f"{100 * expected / 20:.1f} %"
    assert f"{expected} of the 20 particles ({share}) were read a half turn" in err
