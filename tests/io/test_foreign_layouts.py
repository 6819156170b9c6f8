"""Real-world layouts that the shared test files do not cover, rebuilt small in each test.

cryoSPARC: empty datasets, a ``.cs`` opened from inside its job folder, cryosparc-tools'
compressed CSDAT layout. RELION: subtomogram lists, STAR files used from their project
folder, RELION 3.0 files without ``rlnImageSize``. And the pose STAR files we write: RELION
must be able to read them as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_spatial_vae.io import (
    ParticleStack,
    StackError,
    parse_cs_table,
    read_poses,
    read_stack,
    write_poses,
)

CS_DTYPE = [
    ("uid", "<u8"),
    ("blob/path", "S40"),
    ("blob/idx", "<u4"),
    ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"),
    ("alignments2D/shift", "<f4", (2,)),
]


def numpy_cs(path: Path, blob_paths: list[str], idx: list[int]) -> np.ndarray:
    """Write a cryoSPARC-layout ``.cs`` (np.save of a structured array); return the array."""
    array = np.zeros(len(idx), dtype=CS_DTYPE)
    array["uid"] = np.arange(len(idx)) + 1000
    array["blob/path"] = [p.encode() for p in blob_paths]
    array["blob/idx"] = idx
    array["blob/shape"] = 16
    array["blob/psize_A"] = 1.5
    array["alignments2D/shift"] = np.arange(2 * len(idx)).reshape(-1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.save would append .npy to the name
        np.save(f, array)
    return array


def one_line(err: pytest.ExceptionInfo[StackError]) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def pose_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "theta": rng.uniform(-np.pi, np.pi, n),
            "dx": rng.normal(size=n),
            "dy": rng.normal(size=n),
            "z1": rng.normal(size=n),
        }
    )


# ------------------------------------------------------------------------------- cryoSPARC


def test_empty_cs_is_one_line_and_its_table_is_empty(tmp_path: Path) -> None:
    numpy_cs(tmp_path / "empty.cs", [], [])
    table = parse_cs_table(tmp_path / "empty.cs")
    assert len(table) == 0
    assert {"alignments2D/shift_0", "alignments2D/shift_1"} <= set(table.columns)
    with pytest.raises(StackError, match=r"no particle rows \(an empty cryoSPARC") as err:
        read_stack(tmp_path / "empty.cs")
    assert one_line(err).startswith(str(tmp_path / "empty.cs"))


def test_cs_opened_by_bare_name_inside_its_job_folder(
    tmp_path: Path, make_mrcs, monkeypatch
) -> None:
    project = tmp_path / "P12"
    (project / "J2" / "extract").mkdir(parents=True)
    data = make_mrcs(project / "J2" / "extract" / "small.mrcs")
    numpy_cs(project / "J3" / "particles.cs", [">J2/extract/small.mrcs"] * 2, [4, 1])
    monkeypatch.chdir(project / "J3")
    stack = read_stack("particles.cs")
    np.testing.assert_array_equal(stack.read_batch([0, 1]), data[[4, 1]])


def test_csdat_layout_reads_like_the_numpy_layout(tmp_path: Path, small_mrcs) -> None:
    dataset_module = pytest.importorskip("cryosparc.dataset")
    _, data = small_mrcs
    array = numpy_cs(tmp_path / "numpy.cs", ["small.mrcs"] * 3, [5, 0, 2])
    dataset = dataset_module.Dataset(array)
    dataset.save(tmp_path / "csdat.cs", format=dataset_module.CSDAT_FORMAT)
    assert (tmp_path / "csdat.cs").read_bytes()[:6] == b"\x95CSDAT"

    ours = read_stack(tmp_path / "csdat.cs")
    theirs = read_stack(tmp_path / "numpy.cs")
    np.testing.assert_array_equal(ours.read_batch(range(3)), data[[5, 0, 2]])
    assert ours.image_names == theirs.image_names
    assert ours.pixel_size == 1.5
    pd.testing.assert_frame_equal(ours.metadata, theirs.metadata, check_dtype=False)

    cut = tmp_path / "cut.cs"
    cut.write_bytes((tmp_path / "csdat.cs").read_bytes()[:40])
    with pytest.raises(StackError, match=r"cannot read this CSDAT \(cryosparc-tools\) \.cs file"):
        read_stack(cut)

    empty = dataset_module.Dataset(array[:0])
    empty.save(tmp_path / "empty.cs", format=dataset_module.CSDAT_FORMAT)
    with pytest.raises(StackError, match="no particle rows"):
        read_stack(tmp_path / "empty.cs")


def test_csdat_without_cryosparc_tools_says_what_it_is(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "particles.cs"
    path.write_bytes(b"\x95CSDAT" + (10).to_bytes(4, "little") + b'{"length":')
    monkeypatch.setitem(sys.modules, "cryosparc", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "cryosparc.dataset", None)
    with pytest.raises(StackError, match=r"compressed CSDAT layout.*pip install cryosparc-tools"):
        read_stack(path)


def test_cs_that_is_neither_layout_names_its_magic(tmp_path: Path) -> None:
    path = tmp_path / "p.cs"
    path.write_bytes(b"\x80\x04\x95 pickled bytes")
    with pytest.raises(StackError, match=r"not a cryoSPARC \.cs file \(starts with") as err:
        read_stack(path)
    assert "pickled" not in one_line(err).split("(")[0]


# ------------------------------------------------------------------------------- RELION


def _star(path: Path, names: list[str], optics: str = "") -> Path:
    body = "data_particles\nloop_\n_rlnImageName #1\n" + "".join(f"{n}\n" for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(optics + body)
    return path


def test_subtomogram_star_is_refused(tmp_path: Path) -> None:
    volume = np.zeros((8, 16, 16), np.float32)
    for name in ("sub1.mrc", "sub2.mrc"):
        with mrcfile.new(tmp_path / name) as mrc:
            mrc.set_data(volume)  # a 3-D map: ispg 1, nz 8
    _star(tmp_path / "sub.star", ["sub1.mrc", "sub2.mrc"])
    with pytest.raises(StackError, match=r"row 1: .*'sub1\.mrc' names a whole file .* 8 sections"):
        read_stack(tmp_path / "sub.star")
    optics = (
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImageDimensionality #2\n_rlnImageSize #3\n"
        "1 3 16\n\n"
    )
    _star(tmp_path / "sub3d.star", ["1@sub1.mrc"], optics)
    with pytest.raises(StackError, match=r"a 3-D particle list \(rlnImageDimensionality 3"):
        read_stack(tmp_path / "sub3d.star")


def test_relion5_tomography_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tomo.star"
    path.write_text(
        "data_particles\nloop_\n_rlnTomoName #1\n_rlnCoordinateX #2\n_rlnCoordinateY #3\n"
        "_rlnCoordinateZ #4\nTS_01 10.0 20.0 30.0\n"
    )
    with pytest.raises(StackError, match=r"a tomography particle list \(rlnTomoName"):
        read_stack(path)


def test_single_image_files_without_at_still_read(tmp_path: Path) -> None:
    image = np.arange(256, dtype=np.float32).reshape(16, 16)
    with mrcfile.new(tmp_path / "one.mrc") as mrc:
        mrc.set_data(image)
    stack = read_stack(_star(tmp_path / "p.star", ["one.mrc", "one.mrc"]))
    np.testing.assert_array_equal(stack.read_batch([1])[0], image)


def test_star_used_from_its_project_folder(tmp_path: Path, make_mrcs, monkeypatch) -> None:
    project = tmp_path / "project"
    (project / "Extract" / "job012").mkdir(parents=True)
    data = make_mrcs(project / "Extract" / "job012" / "mic1.mrcs")
    star = _star(project / "Select" / "job020" / "particles.star", ["3@Extract/job012/mic1.mrcs"])
    monkeypatch.chdir(tmp_path)  # elsewhere: not found, and the message says where we looked
    with pytest.raises(StackError, match=r"not found; looked in .*the current folder"):
        read_stack(star)
    monkeypatch.chdir(project)  # as RELION runs: names are relative to the project folder
    stack = read_stack(Path("Select/job020/particles.star"))
    np.testing.assert_array_equal(stack.read_batch([0])[0], data[2])


def test_read_poses_relion30_even_box_takes_the_size_from_the_stack(
    tmp_path: Path, small_mrcs
) -> None:
    path = tmp_path / "p30.star"
    path.write_text(
        "data_\nloop_\n_rlnImageName #1\n_rlnAnglePsi #2\n_rlnOriginX #3\n_rlnOriginY #4\n"
        "1@small.mrcs 30.0 1.0 -2.0\n2@small.mrcs 0.0 0.0 0.0\n"
    )
    poses = read_poses(path)  # small.mrcs is 16x16: RELION's centre is 0.5 px off ours
    assert poses["dx"].tolist() == pytest.approx([0.5 - 1.0, 0.5])
    assert poses["dy"].tolist() == pytest.approx([0.5 + 2.0, 0.5])
    odd = read_poses(path, image_size=15)
    assert odd["dx"].tolist() == pytest.approx([-1.0, 0.0])
    small_mrcs[0].unlink()
    with pytest.raises(StackError, match=r"no rlnImageSize.*not found.*image_size="):
        read_poses(path)


# ------------------------------------------------------------------------------- pose STARs


def test_pose_star_for_mrc_input_is_readable_from_anywhere(
    tmp_path: Path, make_mrcs, monkeypatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    data = make_mrcs(tmp_path / "data" / "parts.mrc", n=5)
    stack = read_stack(tmp_path / "data" / "parts.mrc")
    table = pose_table(5)
    star = tmp_path / "out" / "poses.star"
    notes = write_poses(star, table, stack)

    blocks = starfile.read(star, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    # what relion_refine requires, with the defaults said in one line
    assert optics["rlnVoltage"].tolist() == [300.0]
    assert optics["rlnSphericalAberration"].tolist() == [2.7]
    assert optics["rlnAmplitudeContrast"].tolist() == [0.1]
    assert optics["rlnImageSize"].tolist() == [16]
    assert optics["rlnImagePixelSize"].tolist() == [1.5]
    assert len(notes) == 1 and "\n" not in notes[0] and "rlnVoltage 300" in notes[0]
    # RELION wants N@x.mrcs: a relative link beside the STAR file
    assert particles["rlnImageName"].iloc[0] == "000001@parts.mrcs"
    link = tmp_path / "out" / "parts.mrcs"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()

    monkeypatch.chdir(tmp_path / "elsewhere")
    again = read_stack(Path("../out/poses.star"))
    np.testing.assert_array_equal(again.read_batch(range(5)), data)
    pd.testing.assert_frame_equal(read_poses(Path("../out/poses.star")), table, atol=1e-8)


def test_pose_star_names_mrcs_stacks_relative_to_the_star(tmp_path: Path, make_mrcs) -> None:
    (tmp_path / "data").mkdir()
    data = make_mrcs(tmp_path / "data" / "parts.mrcs")
    stack = read_stack(tmp_path / "data" / "parts.mrcs")
    star = tmp_path / "out" / "sub" / "poses.star"
    star.parent.mkdir(parents=True)
    notes = write_poses(
        star, pose_table(6), stack, optics={"rlnVoltage": 200.0, "rlnAmplitudeContrast": 0.07}
    )
    blocks = starfile.read(star, always_dict=True)
    assert blocks["particles"]["rlnImageName"].iloc[1] == "000002@../../data/parts.mrcs"
    assert blocks["optics"]["rlnVoltage"].tolist() == [200.0]
    assert blocks["optics"]["rlnAmplitudeContrast"].tolist() == [0.07]
    assert len(notes) == 1 and "rlnSphericalAberration 2.7" in notes[0]
    assert "rlnVoltage" not in notes[0]
    np.testing.assert_array_equal(read_stack(star).read_batch(range(6)), data)


def test_pose_star_for_npy_input_writes_an_mrcs_copy(tmp_path: Path, monkeypatch) -> None:
    images = np.random.default_rng(3).normal(size=(4, 12, 12)).astype(np.float32)
    np.save(tmp_path / "parts.npy", images)
    table = pose_table(4)
    table["image_index"] = [3, 1, 1, 0]
    notes = write_poses(tmp_path / "p.star", table, read_stack(tmp_path / "parts.npy"))
    assert any("p_particles.mrcs" in n for n in notes)
    assert any("rlnImagePixelSize 1" in n for n in notes)
    monkeypatch.chdir(tmp_path.parent)
    back = read_stack(tmp_path / "p.star")
    np.testing.assert_array_equal(back.read_batch(range(4)), images[[3, 1, 1, 0]])


def test_pose_star_keeps_the_input_orientation_in_its_own_columns(
    tmp_path: Path, small_mrcs
) -> None:
    path = tmp_path / "refined.star"
    path.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n"
        "_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\n"
        "1 1.5 16 300 2.7 0.1\n\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnAngleRot #3\n"
        "_rlnAngleTilt #4\n_rlnAnglePsi #5\n_rlnOriginXAngst #6\n_rlnOriginYAngst #7\n"
        "1@small.mrcs 1 10.0 20.0 30.0 1.5 -3.0\n2@small.mrcs 1 40.0 50.0 60.0 0.0 0.0\n"
    )
    table = pose_table(2)
    notes = write_poses(tmp_path / "poses.star", table, read_stack(path))
    assert notes == []  # every optics value came from the input
    particles = starfile.read(tmp_path / "poses.star", always_dict=True)["particles"]
    assert "rlnAngleRot" not in particles.columns and "rlnAngleTilt" not in particles.columns
    assert particles["rlnSpatialVaeInputAngleRot"].tolist() == [10.0, 40.0]
    assert particles["rlnSpatialVaeInputAngleTilt"].tolist() == [20.0, 50.0]
    assert particles["rlnSpatialVaeInputAnglePsi"].tolist() == [30.0, 60.0]
    assert particles["rlnSpatialVaeInputOriginXAngst"].tolist() == [1.5, 0.0]
    assert particles["rlnAnglePsi"].to_numpy() == pytest.approx(np.degrees(table["theta"]))
    # the input's columns are not pose columns: reading back gives our table only
    pd.testing.assert_frame_equal(read_poses(tmp_path / "poses.star"), table, atol=1e-8)


def test_pose_star_for_an_in_memory_stack_writes_no_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "parts.npy", np.zeros((2, 8, 8), np.float32))  # a file of that name
    stack = ParticleStack.from_array(np.ones((2, 8, 8), np.float32), 2.0, path="parts.npy")
    notes = write_poses(tmp_path / "p.star", pose_table(2), stack)
    assert not (tmp_path / "p_particles.mrcs").exists()
    assert any("parts.mrcs, which must hold the images" in n for n in notes)


def test_pose_star_refuses_non_square_images(tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((3, 16, 20), np.float32))
    stack = read_stack(tmp_path / "wide.npy")  # viewing non-square images stays possible
    assert stack.shape == (3, 16, 20)
    with pytest.raises(StackError, match=r"images are 16x20 \(HxW\); a RELION STAR file"):
        write_poses(tmp_path / "p.star", pose_table(3), stack)
    assert not (tmp_path / "p.star").exists()
    write_poses(tmp_path / "p.csv", pose_table(3), stack)  # the CSV has no box to claim
