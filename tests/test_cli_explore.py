"""``spatial-vae cluster / average / subset / movie`` end to end, and their bad input."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_spatial_vae.core.simulate import render_particles, simulate_particles
from napari_spatial_vae.io import read_poses, read_stack
from tests.cli_run import run_cli

ASPIRE_STAR = Path("aspire") / "sample_particles_relion31.star"  # 17 particles, 3-D angles
EMPIAR_CS = Path("cryodrgn") / "empiar_10076_7.cs"  # 7 particles


def poses_csv(path: Path, n: int, seed: int = 0, z_dim: int = 2) -> pd.DataFrame:
    """A POSES.csv as a user might compute it elsewhere: poses, z, some std columns."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {"theta": rng.uniform(-np.pi, np.pi, n), "dx": rng.normal(0, 1, n),
         "dy": rng.normal(0, 1, n)}
    )  # fmt: skip
    for k in range(z_dim):
        table[f"z{k + 1}"] = rng.normal(0, 1, n)
    table["theta_std"] = rng.uniform(0, 0.5, n)
    table.to_csv(path, index=False)
    return table


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A 40 px stack, its true poses as POSES.csv (z1 = conformation) and the stack file."""
    folder = tmp_path_factory.mktemp("sim")
    sim = simulate_particles(600, size=40, snr=1.0, seed=21)
    stack = folder / "particles.mrcs"
    with mrcfile.new(stack) as mrc:
        mrc.set_data(sim.images)
        mrc.set_image_stack()
        mrc.voxel_size = 2.0
    poses = folder / "poses.csv"
    pd.DataFrame(
        {"theta": sim.theta, "dx": sim.shift_px[:, 0], "dy": sim.shift_px[:, 1],
         "z1": sim.conformation}
    ).to_csv(poses, index=False)  # fmt: skip
    return sim, stack, poses


def correlation(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_average_of_a_where_selection_matches_the_template(simulated, tmp_path, capsys):
    sim, stack, poses = simulated
    out = tmp_path / "avg.mrcs"
    code, err = run_cli(capsys, "average", stack, poses, "--where", "z1 > 0.47 and z1 < 0.53",
                        "-o", out)  # fmt: skip
    assert code == 0, err
    expected = int(np.sum((sim.conformation > 0.47) & (sim.conformation < 0.53)))
    assert f"selection: {expected} particles" in err and "Å" in err
    with mrcfile.open(out) as mrc:
        average = np.asarray(mrc.data).reshape(-1, 40, 40)[0]
        assert mrc.voxel_size.x == pytest.approx(2.0)
    truth = render_particles(np.array([0.5]), np.zeros(1), np.zeros((1, 2)), np.zeros(1), 40)[0]
    assert correlation(average, truth) >= 0.97


def test_cluster_then_one_average_per_cluster(simulated, tmp_path, capsys):
    _, stack, poses = simulated
    clusters = tmp_path / "clusters.csv"
    code, err = run_cli(capsys, "cluster", poses, "-k", "3", "-o", clusters, "--method", "gmm")
    assert code == 0, err
    table = pd.read_csv(clusters)
    original = pd.read_csv(poses)
    pd.testing.assert_frame_equal(table[original.columns], original)
    assert sorted(set(table["cluster"])) == [0, 1, 2]
    # numbered along z1
    assert table.groupby("cluster")["z1"].mean().is_monotonic_increasing
    again = tmp_path / "again.csv"
    assert run_cli(capsys, "cluster", poses, "-k", "3", "-o", again, "--method", "gmm")[0] == 0
    assert pd.read_csv(again)["cluster"].equals(table["cluster"])
    out = tmp_path / "avgs.mrcs"
    code, err = run_cli(capsys, "average", stack, poses, "--clusters", clusters, "-o", out)
    assert code == 0, err
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (3, 40, 40)
    assert err.count("particles, half-set FRC") == 3


def test_subset_star_keeps_every_input_column_of_the_selected_rows(shared_data, tmp_path, capsys):
    source = shared_data / "cryoem" / ASPIRE_STAR
    poses = tmp_path / "poses.csv"
    table = poses_csv(poses, 17)
    out = tmp_path / "subset.star"
    code, err = run_cli(capsys, "subset", source, poses, "--where", "z1 > 0", "-o", out)
    assert code == 0, err
    rows = np.flatnonzero(table["z1"] > 0)
    before = starfile.read(source, always_dict=True)
    after = starfile.read(out, always_dict=True)
    pd.testing.assert_frame_equal(after["optics"], before["optics"])
    particles_in = before["particles"].iloc[rows].reset_index(drop=True)
    particles_out = after["particles"]
    assert len(particles_out) == len(rows)
    assert "rlnAngleRot" not in particles_out.columns  # no half-replaced 3-D orientation
    for column in particles_in.columns:
        # the input's own orientation and origins move beside the inferred pose
        moved = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                 "rlnOriginYAngst")  # fmt: skip
        kept = f"rlnSpatialVaeInput{column[3:]}" if column in moved else column
        pd.testing.assert_series_equal(particles_out[kept], particles_in[column], check_names=False)
    np.testing.assert_allclose(particles_out["rlnAnglePsi"], np.degrees(table["theta"][rows]))
    # 200 px box, 1.4 Å pixels: origin = (0.5 - dx) * 1.4
    np.testing.assert_allclose(
        particles_out["rlnOriginXAngst"], (0.5 - table["dx"][rows].to_numpy()) * 1.4
    )
    np.testing.assert_allclose(particles_out["rlnSpatialVaeZ2"], table["z2"][rows])
    # and it reads back as a particle stack
    assert read_stack(out, datadir=source.parent).shape[0] == len(rows)


def test_subset_can_leave_the_input_pose_untouched(shared_data, tmp_path, capsys):
    source = shared_data / "cryoem" / ASPIRE_STAR
    poses = tmp_path / "poses.csv"
    table = poses_csv(poses, 17)
    out = tmp_path / "subset.star"
    code, err = run_cli(capsys, "subset", source, poses, "--where", "z1 > 0", "-o", out,
                        "--keep-input-pose")  # fmt: skip
    assert code == 0, err
    rows = np.flatnonzero(table["z1"] > 0)
    particles_in = starfile.read(source, always_dict=True)["particles"].iloc[rows]
    particles_out = starfile.read(out, always_dict=True)["particles"]
    pd.testing.assert_frame_equal(
        particles_out[particles_in.columns], particles_in.reset_index(drop=True)
    )
    np.testing.assert_allclose(
        particles_out["rlnSpatialVaeAnglePsi"], np.degrees(table["theta"][rows])
    )
    assert "rlnSpatialVaeOriginXAngst" in particles_out.columns


def test_subset_cs_keeps_every_field(shared_data, tmp_path, capsys):
    source = shared_data / "cryoem" / EMPIAR_CS
    poses = tmp_path / "poses.csv"
    table = poses_csv(poses, 7, z_dim=1)
    out = tmp_path / "subset.cs"
    code, err = run_cli(capsys, "subset", source, poses, "--where", "index % 2 == 0", "-o", out)
    assert code == 0, err
    before = np.load(source)
    after = np.load(out)
    rows = np.arange(0, 7, 2)
    for field in before.dtype.names:
        np.testing.assert_array_equal(after[field], before[field][rows])
    np.testing.assert_allclose(after["spatial_vae/theta"], table["theta"][rows], rtol=1e-6)
    np.testing.assert_allclose(after["spatial_vae/z1"], table["z1"][rows], rtol=1e-6)
    assert read_stack(out, datadir=source.parent).shape[0] == 4


def test_subset_of_an_mrcs_stack_writes_a_star_naming_the_images(simulated, tmp_path, capsys):
    _, stack, poses = simulated
    out = tmp_path / "subset.star"
    code, err = run_cli(capsys, "subset", stack, poses, "--where", "z1 < 0.1", "-o", out)
    assert code == 0, err
    table = pd.read_csv(poses)
    rows = np.flatnonzero(table["z1"] < 0.1)
    names = starfile.read(out, always_dict=True)["particles"]["rlnImageName"]
    # image names are relative to the STAR's folder (RELION resolves them from there)
    relative = os.path.relpath(stack, out.parent)
    assert list(names) == [f"{i + 1:06d}@{relative}" for i in rows]
    np.testing.assert_array_equal(read_stack(out, datadir=stack.parent).read_batch(slice(None)),
                                  read_stack(stack).read_batch(rows))  # fmt: skip


def test_movie_of_a_trained_run_and_of_averages(tmp_path, capsys):
    import imageio.v3 as iio

    small = tmp_path / "small.npy"
    np.save(small, simulate_particles(64, size=20, seed=1).images)
    run = tmp_path / "run"
    code, err = run_cli(capsys, "train", small, "-o", run, "--epochs", "1", "--z-dim", "2",
                        "--hidden-dim", "16", "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    gif = tmp_path / "traversal.gif"
    code, err = run_cli(capsys, "movie", run, "-o", gif, "--steps", "5")
    assert code == 0, err
    frames = iio.imread(gif)
    assert frames.shape[0] == 8 and frames.shape[1] >= 256  # 5 steps there and 3 back
    averages = tmp_path / "avgs.mrcs"
    with mrcfile.new(averages) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(4, 20, 20)).astype(np.float32))
    gif2 = tmp_path / "averages.gif"
    assert run_cli(capsys, "movie", averages, "-o", gif2)[0] == 0
    assert iio.imread(gif2).shape[0] == 4


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--where", "z1 >"], r"--where 'z1 >': "),
        (["--where", "nope > 1"], r"nope"),
        (["--where", "z1 > 100"], r"selects no particles; nothing written"),
        (["--where", "z1 + 1"], r"not a true/false condition"),
    ],
)
def test_bad_where_fails_in_one_line_and_writes_nothing(simulated, tmp_path, capsys, args,
                                                        pattern):  # fmt: skip
    _, stack, poses = simulated
    for command, out in (("subset", "s.star"), ("average", "a.mrcs")):
        code, err = run_cli(capsys, command, stack, poses, *args, "-o", tmp_path / out)
        assert code != 0
        assert len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(pattern, err), err
    assert list(tmp_path.iterdir()) == []


def test_poses_of_another_length_fail_in_one_line(simulated, tmp_path, capsys):
    _, stack, _ = simulated
    poses = tmp_path / "short.csv"
    poses_csv(poses, 10)
    code, err = run_cli(capsys, "average", stack, poses, "-o", tmp_path / "a.mrcs")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "has 10 rows but the stack has 600 particles" in err
    assert not (tmp_path / "a.mrcs").exists()


def test_other_bad_input_fails_in_one_line(simulated, tmp_path, capsys):
    _, stack, poses = simulated
    no_pose = tmp_path / "nopose.csv"
    pd.DataFrame({"z1": [0.0, 1.0]}).to_csv(no_pose, index=False)
    cases = [
        (["cluster", no_pose, "-k", "2", "-o", tmp_path / "c.csv"], "no theta, dx, dy"),
        (["cluster", poses, "-k", "0", "-o", tmp_path / "c.csv"], "-k must be between"),
        (["subset", stack, poses, "--where", "z1 > 0", "-o", tmp_path / "s.cs"], "needs a cryo"),
        (["movie", tmp_path, "-o", tmp_path / "m.gif"], ""),
        (["movie", stack, "-o", tmp_path / "m.avi"], "must end in .gif or .mp4"),
        (["average", stack, poses, "--clusters", poses, "-o", tmp_path / "a.mrcs"], "no cluster"),
    ]
    for args, pattern in cases:
        code, err = run_cli(capsys, *args)
        assert code != 0, args
        assert len(err.strip().splitlines()) == 1, err
        assert pattern in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["nopose.csv"]


def test_average_of_ctf_particles_is_wiener_filtered_with_their_ctf(tmp_path, capsys):
    # white particles filtered by each one's astigmatic CTF, read from the RELION .star
    star = tmp_path / "ctf.star"
    code, err = run_cli(capsys, "simulate", "--ctf", "-o", star, "--n", "1500", "--snr", "1",
                        "--seed", "4")  # fmt: skip
    assert code == 0, err
    truth = read_poses(star)
    conformation = starfile.read(star, always_dict=True)["particles"]["rlnSpatialVae_conformation"]
    poses = tmp_path / "poses.csv"
    table = truth[["theta", "dx", "dy"]].assign(z1=conformation.to_numpy())
    table.to_csv(poses, index=False)
    template = render_particles(np.array([0.5]), np.zeros(1), np.zeros((1, 2)), np.zeros(1), 40)[0]
    scores = {}
    for mode in ("auto", "off"):
        out = tmp_path / f"{mode}.mrcs"
        code, err = run_cli(capsys, "average", star, poses, "--where", "z1 > 0.4 and z1 < 0.6",
                            "--ctf", mode, "-o", out)  # fmt: skip
        assert code == 0, err
        assert ("Wiener-filtered" in err) == (mode == "auto")
        scores[mode] = correlation(np.asarray(mrcfile.read(out)).reshape(40, 40), template)
    # the target: >= 0.95 with the CTF correction, where a plain mean falls short
    assert scores["auto"] >= 0.95 > scores["off"], scores
