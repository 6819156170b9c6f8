"""Writers: MRC stacks and pose tables round-trip, atomically."""

from __future__ import annotations

import io
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_spatial_vae.io import (
    MrcsWriter,
    ParticleStack,
    StackError,
    read_poses,
    read_stack,
    write_mrcs,
    write_poses,
)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files a writer might have left behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# ----------------------------------------------------------------------------- mrcs


@pytest.mark.parametrize("pixel_size", [1.31, None])
def test_write_mrcs_round_trip(tmp_path: Path, pixel_size) -> None:
    data = np.random.default_rng(0).normal(size=(7, 20, 24)).astype(np.float32)
    path = tmp_path / "out.mrcs"
    write_mrcs(path, data, pixel_size)
    stack = read_stack(path)
    assert stack.shape == (7, 20, 24)
    assert stack.pixel_size == (pytest.approx(1.31) if pixel_size else None)
    np.testing.assert_array_equal(stack.read_batch(range(7)), data)
    # a strictly valid MRC2014 image stack that other tools accept
    report = io.StringIO()
    assert mrcfile.validate(path, print_file=report), report.getvalue()
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
        assert mrc.header.dmin == pytest.approx(data.min())
        assert mrc.header.dmax == pytest.approx(data.max())
        assert mrc.header.dmean == pytest.approx(data.mean(), abs=1e-6)
        assert mrc.header.rms == pytest.approx(data.std(), rel=1e-5)
    assert leftovers(tmp_path) == []
    assert (path.stat().st_mode & 0o777) != 0o600  # not mkstemp's private mode


def test_write_mrcs_single_image_and_float64(tmp_path: Path) -> None:
    write_mrcs(tmp_path / "one.mrcs", np.ones((5, 6)), 2.0)
    stack = read_stack(tmp_path / "one.mrcs")
    assert stack.shape == (1, 5, 6) and stack.images.dtype == np.float32


def test_write_mrcs_from_lazy_stack(tmp_path: Path, small_mrcs) -> None:
    path, data = small_mrcs
    source = read_stack(path)
    write_mrcs(tmp_path / "copy.mrcs", source.images, source.pixel_size)
    np.testing.assert_array_equal(read_stack(tmp_path / "copy.mrcs").read_batch(range(6)), data)


def test_write_mrcs_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"cannot write images of shape \(2, 3, 4, 3\)"):
        write_mrcs(tmp_path / "x.mrcs", np.zeros((2, 3, 4, 3)), None)
    with pytest.raises(FileNotFoundError, match=r"output folder .* does not exist"):
        write_mrcs(tmp_path / "no" / "x.mrcs", np.zeros((2, 3, 4)), None)


def test_mrcs_writer_streams_out_of_order(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(10, 8, 8)).astype(np.float32)
    path = tmp_path / "stream.mrcs"
    with MrcsWriter(path, 10, (8, 8), 0.9) as out:
        out.write(6, data[6:])
        out.write(0, data[:3])
        assert not path.exists()  # nothing under the final name until close
        out.write(3, data[3:6])
    np.testing.assert_array_equal(read_stack(path).read_batch(range(10)), data)
    assert leftovers(tmp_path) == []


def test_mrcs_writer_error_leaves_old_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "keep.mrcs"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), MrcsWriter(path, 4, (8, 8), None) as out:
        out.write(0, np.zeros((2, 8, 8)))
        raise RuntimeError("model crashed")
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_mrcs_writer_incomplete_is_not_saved(tmp_path: Path) -> None:
    path = tmp_path / "half.mrcs"
    with (
        pytest.raises(StackError, match=r"half\.mrcs: 2 of 4 images were never written"),
        MrcsWriter(path, 4, (8, 8), None) as out,
    ):
        out.write(0, np.zeros((2, 8, 8)))
    assert not path.exists() and leftovers(tmp_path) == []


def test_mrcs_writer_checks_batches(tmp_path: Path) -> None:
    with MrcsWriter(tmp_path / "a.mrcs", 2, (8, 8), None) as out:
        with pytest.raises(StackError, match=r"batch of shape \(1, 8, 9\)"):
            out.write(0, np.zeros((1, 8, 9)))
        with pytest.raises(StackError, match=r"images 1..2 outside 0..1"):
            out.write(1, np.zeros((2, 8, 8)))
        out.write(0, np.zeros((2, 8, 8)))


# ----------------------------------------------------------------------------- poses


def pose_table(n: int, k: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "theta": rng.uniform(-np.pi, np.pi, n),
            "theta_std": rng.uniform(0, 0.1, n),
            "dx": rng.normal(0, 3, n),
            "dy": rng.normal(0, 3, n),
            "dx_std": rng.uniform(0, 1, n),
            "dy_std": rng.uniform(0, 1, n),
        }
    )
    for j in range(1, k + 1):
        table[f"z{j}"] = rng.normal(size=n)
    for j in range(1, k + 1):
        table[f"z{j}_std"] = rng.uniform(0, 1, n)
    return table


def test_poses_csv_round_trip(tmp_path: Path) -> None:
    table = pose_table(9)
    table["image_index"] = np.arange(9) * 2
    write_poses(tmp_path / "p.csv", table)
    back = read_poses(tmp_path / "p.csv")
    pd.testing.assert_frame_equal(back, table)
    assert leftovers(tmp_path) == []


def test_poses_star_round_trip_with_relion_stack(cryoem: Path, tmp_path: Path) -> None:
    stack = read_stack(cryoem / "cryodrgn/relion31.star")
    table = pose_table(len(stack), k=3)
    path = tmp_path / "poses.star"
    write_poses(path, table, stack)
    back = read_poses(path)
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_frame_equal(back, table, rtol=1e-8, atol=1e-8)

    blocks = starfile.read(path, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    assert list(blocks) == ["optics", "particles"]
    assert optics["rlnImagePixelSize"].tolist() == [2.806]
    assert optics["rlnImageSize"].tolist() == [256]
    assert optics["rlnVoltage"].tolist() == [300]
    # the input's particle columns survive, its pose columns are replaced
    assert particles["rlnImageName"].tolist() == stack.image_names
    assert particles["rlnDefocusU"].tolist() == pytest.approx(stack.metadata["rlnDefocusU"])
    assert "rlnVoltage" not in particles.columns  # lives in data_optics
    assert particles["rlnAnglePsi"].to_numpy() == pytest.approx(np.degrees(table["theta"]))
    expected_x = (0.5 - table["dx"].to_numpy()) * 2.806  # even box: RELION centre is +0.5 px
    assert particles["rlnOriginXAngst"].to_numpy() == pytest.approx(expected_x)
    assert {"rlnSpatialVaeZ3", "rlnSpatialVaeZ3Std", "rlnSpatialVaeAnglePsiStd"} <= set(
        particles.columns
    )
    assert "rlnOriginX" not in particles.columns


def test_poses_star_without_stack_needs_the_box_and_says_what_it_assumed(tmp_path: Path) -> None:
    table = pose_table(4, k=1)
    path = tmp_path / "poses.star"
    with pytest.raises(StackError, match="needs the box size"):
        write_poses(path, table)
    notes = write_poses(path, table, image_size=16)
    blocks = starfile.read(path, always_dict=True)
    particles, optics = blocks["particles"], blocks["optics"]
    assert particles["rlnImageName"].tolist() == [f"00000{i}@poses.mrcs" for i in range(1, 5)]
    # pixel size unknown: 1 Å written and said, so origins in Å are pixels (+0.5: even box)
    assert optics["rlnImagePixelSize"].tolist() == [1.0]
    expected = 0.5 - table["dx"].to_numpy()
    assert particles["rlnOriginXAngst"].to_numpy() == pytest.approx(expected)
    assert any("rlnImagePixelSize 1" in n for n in notes)
    assert any("no stack given" in n for n in notes)
    pd.testing.assert_frame_equal(read_poses(path), table, rtol=1e-8, atol=1e-8)


def test_poses_star_odd_box_no_pixel_size(tmp_path: Path) -> None:
    np.save(tmp_path / "parts.npy", np.zeros((3, 15, 15), np.float32))
    stack = read_stack(tmp_path / "parts.npy")
    table = pose_table(3, k=0)
    write_poses(tmp_path / "p.star", table, stack)
    blocks = starfile.read(tmp_path / "p.star", always_dict=True)
    particles = blocks["particles"]
    # RELION cannot read .npy: the images are written beside the STAR file
    assert particles["rlnImageName"].tolist() == [
        "000001@p_particles.mrcs",
        "000002@p_particles.mrcs",
        "000003@p_particles.mrcs",
    ]
    assert particles["rlnOriginYAngst"].to_numpy() == pytest.approx(-table["dy"].to_numpy())
    assert blocks["optics"]["rlnImagePixelSize"].tolist() == [1.0]
    pd.testing.assert_frame_equal(read_poses(tmp_path / "p.star"), table, rtol=1e-8, atol=1e-8)


def test_poses_star_subset_by_image_index(cryoem: Path, tmp_path: Path) -> None:
    stack = read_stack(cryoem / "aspire/sample_particles_relion30.star")
    table = pose_table(3, k=2)
    table["image_index"] = [16, 0, 5]
    write_poses(tmp_path / "p.star", table, stack)
    blocks = starfile.read(tmp_path / "p.star", always_dict=True)
    names = blocks["particles"]["rlnImageName"].tolist()
    assert names == ["000017@sample.mrcs", "000001@sample.mrcs", "000006@sample.mrcs"]
    # RELION 3.0 input with two voltages becomes two optics groups
    assert sorted(blocks["optics"]["rlnVoltage"]) == [200, 300]
    pd.testing.assert_frame_equal(read_poses(tmp_path / "p.star"), table, rtol=1e-8, atol=1e-8)


def test_poses_star_from_cryosparc(cryoem: Path, tmp_path: Path) -> None:
    stack = read_stack(cryoem / "cryodrgn/empiar_10076_7.cs")
    write_poses(tmp_path / "p.star", pose_table(7), stack)
    blocks = starfile.read(tmp_path / "p.star", always_dict=True)
    particles = blocks["particles"]
    assert particles["rlnDefocusU"].iloc[0] == pytest.approx(15301.1, rel=1e-6)
    assert particles["rlnDefocusAngle"].iloc[0] == pytest.approx(np.degrees(0.09215339), rel=1e-6)
    # a .mrc stack gets an .mrcs link beside the STAR file (RELION reads N@ only from .mrcs)
    assert particles["rlnImageName"].iloc[0] == "000001@empiar_10076_7.mrcs"
    link = tmp_path / "empiar_10076_7.mrcs"
    assert link.is_symlink()
    assert link.resolve() == (cryoem / "cryodrgn/empiar_10076_7.mrc").resolve()
    np.testing.assert_array_equal(
        read_stack(tmp_path / "p.star").read_batch([6, 0]), stack.read_batch([6, 0])
    )
    assert not any("/" in c for c in particles.columns)  # no cryoSPARC field names
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(1.31, rel=1e-5)
    assert blocks["optics"]["rlnVoltage"].iloc[0] == 300


def test_read_poses_of_a_relion_file(cryoem: Path) -> None:
    poses = read_poses(cryoem / "cryodrgn/relion31.star")
    meta = read_stack(cryoem / "cryodrgn/relion31.star").metadata
    assert poses["theta"].to_numpy() == pytest.approx(np.radians(meta["rlnAnglePsi"]))
    expected = 0.5 - meta["rlnOriginXAngst"].to_numpy() / 2.806
    assert poses["dx"].to_numpy() == pytest.approx(expected)


def test_write_poses_errors(tmp_path: Path, small_mrcs) -> None:
    stack = read_stack(small_mrcs[0])
    with pytest.raises(StackError, match=r"p\.txt: unknown pose file type '\.txt'"):
        write_poses(tmp_path / "p.txt", pose_table(6))
    with pytest.raises(StackError, match=r"5 poses for 6 images"):
        write_poses(tmp_path / "p.star", pose_table(5), stack)
    with pytest.raises(StackError, match=r"lacks column\(s\) theta"):
        write_poses(tmp_path / "p.star", pose_table(6).drop(columns="theta"), stack)
    with pytest.raises(StackError, match="no such file"):
        read_poses(tmp_path / "missing.csv")
    assert leftovers(tmp_path) == []


def relion_psi_matrix(psi_deg: float) -> np.ndarray:
    """RELION's Euler_angles2matrix(0, 0, psi), 2-D part (src/euler.cpp)."""
    c, s = np.cos(np.radians(psi_deg)), np.sin(np.radians(psi_deg))
    return np.array([[c, s], [-s, c]])


@pytest.mark.parametrize("size", [64, 65])
def test_star_mapping_matches_relion_geometry(tmp_path: Path, size: int) -> None:
    """A reference feature lands on the same pixel in our model and in RELION's.

    Ours (docs/io.md): in array coordinates (x = column, y = row, y down on screen) the
    feature q of the pose-free particle appears at c_geo + R(theta) q + (dx, dy), with
    R(theta) counter-clockwise on screen, i.e. e_x -> (cos, -sin). RELION: the reference is
    rotated into the image by A(psi) about c_relion = size // 2 and the particle centre
    sits at c_relion - origin.
    """
    stack = ParticleStack.from_array(np.zeros((1, size, size), np.float32), pixel_size=1.7)
    table = pd.DataFrame({"theta": [0.7], "dx": [2.25], "dy": [-4.5]})
    write_poses(tmp_path / "p.star", table, stack)
    row = starfile.read(tmp_path / "p.star", always_dict=True)["particles"].iloc[0]
    q = np.array([5.0, 2.0])
    theta = table["theta"].iloc[0]
    screen_ccw = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    ours = (size - 1) / 2 + screen_ccw @ q + table[["dx", "dy"]].to_numpy()[0]
    origin = np.array([row["rlnOriginXAngst"], row["rlnOriginYAngst"]]) / 1.7
    relion = size // 2 + relion_psi_matrix(row["rlnAnglePsi"]) @ q - origin
    np.testing.assert_allclose(ours, relion, atol=1e-6)
