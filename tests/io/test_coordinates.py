"""Coordinates in: RELION STAR, .box, .cbox, topaz .txt and cryoSPARC .cs, matched by name."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from napari_spatial_vae.io import StackError
from napari_spatial_vae.io.coordinates import match_picks, read_coordinates
from napari_spatial_vae.io.micrographs import read_micrographs
from napari_spatial_vae.io.particles_star import write_star

X = np.array([10.0, 25.5, 40.0])
Y = np.array([12.0, 20.0, 30.25])


@pytest.fixture
def micrographs(tmp_path):
    folder = tmp_path / "mics"
    folder.mkdir()
    for name in ("mic_01", "mic_02"):
        with mrcfile.new(folder / f"{name}.mrc") as mrc:
            mrc.set_data(np.zeros((40, 50), np.float32))
    return read_micrographs(folder)


def write_box(path: Path, x=X, y=Y, size=16, score=None) -> Path:
    lines = []
    for k, (a, b) in enumerate(zip(x, y, strict=True)):
        extra = f"\t{score[k]}" if score is not None else ""
        lines.append(f"{a - size / 2}\t{b - size / 2}\t{size}\t{size}{extra}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_box_and_star_give_the_same_centres(tmp_path, micrographs):
    box = write_box(tmp_path / "mic_01.box")
    star = tmp_path / "picks.star"
    write_star(
        star,
        {
            "particles": pd.DataFrame(
                {"rlnMicrographName": "mic_01.mrc", "rlnCoordinateX": X, "rlnCoordinateY": Y}
            )
        },
    )
    from_box = match_picks(read_coordinates(box), micrographs)
    from_star = match_picks(read_coordinates(star), micrographs)
    np.testing.assert_array_equal(from_box[["x", "y", "index"]], from_star[["x", "y", "index"]])
    np.testing.assert_array_equal(from_box["x"], X)
    assert from_box["score"].isna().all()


def test_a_fifth_box_column_is_the_score(tmp_path):
    picks = read_coordinates(write_box(tmp_path / "m.box", score=[0.5, 0.7, 0.9]))
    np.testing.assert_array_equal(picks["score"], [0.5, 0.7, 0.9])


def test_per_micrograph_files_match_by_base_name(tmp_path, micrographs):
    coords = tmp_path / "coords"
    coords.mkdir()
    write_box(coords / "mic_02.box")
    write_star(
        coords / "mic_01_autopick.star",
        {
            "": pd.DataFrame(
                {
                    "rlnCoordinateX": X[:2],
                    "rlnCoordinateY": Y[:2],
                    "rlnAutopickFigureOfMerit": [1.5, 2.5],
                }
            )
        },
    )
    picks = match_picks(read_coordinates(coords), micrographs)
    assert picks["index"].tolist() == [0, 0, 1, 1, 1]  # files in name order
    np.testing.assert_array_equal(picks["score"].iloc[:2], [1.5, 2.5])


def test_topaz_text(tmp_path, micrographs):
    path = tmp_path / "topaz.txt"
    path.write_text(
        "image_name\tx_coord\ty_coord\tscore\nmic_02\t10\t12\t-1.5\nmic_01\t40\t30\t2\n"
    )
    picks = match_picks(read_coordinates(path), micrographs)
    assert picks["index"].tolist() == [1, 0]
    np.testing.assert_array_equal(picks[["x", "y", "score"]], [[10, 12, -1.5], [40, 30, 2]])


def test_cryolo_cbox_star_and_old_text(tmp_path):
    star = tmp_path / "new.cbox"
    write_star(
        star,
        {
            "cryolo": pd.DataFrame(
                {
                    "CoordinateX": X - 8,
                    "CoordinateY": Y - 8,
                    "Width": 16.0,
                    "Height": 16.0,
                    "Confidence": [0.3, 0.6, 0.9],
                }
            )
        },
    )
    old = tmp_path / "old.cbox"
    old.write_text("".join(f"{a - 8} {b - 8} 16 16 0.5 20 20\n" for a, b in zip(X, Y, strict=True)))
    for path in (star, old):
        picks = read_coordinates(path)
        np.testing.assert_allclose(picks[["x", "y"]], np.stack([X, Y], 1))
    assert read_coordinates(star)["score"].tolist() == [0.3, 0.6, 0.9]


def test_cryosparc_fractions_times_the_micrograph_shape(tmp_path, micrographs):
    dtype = [
        ("uid", "<u8"),
        ("location/micrograph_path", "S64"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
        ("pick_stats/ncc_score", "<f4"),
    ]
    table = np.zeros(2, dtype=dtype)
    table["location/micrograph_path"] = [
        b"J2/motioncorrected/0123456789_mic_02_patch_aligned_doseweighted.mrc",
        b"J2/motioncorrected/0123456789_mic_01_patch_aligned_doseweighted.mrc",
    ]
    table["location/micrograph_shape"] = (40, 50)
    table["location/center_x_frac"] = [0.5, 0.25]
    table["location/center_y_frac"] = [0.25, 0.5]
    table["pick_stats/ncc_score"] = [0.4, 0.8]
    with open(tmp_path / "picked.cs", "wb") as f:
        np.save(f, table)
    picks = match_picks(read_coordinates(tmp_path / "picked.cs"), micrographs)
    assert picks["index"].tolist() == [1, 0]
    np.testing.assert_allclose(picks[["x", "y"]], [[25, 10], [12.5, 20]])
    np.testing.assert_allclose(picks["score"], [0.4, 0.8])


def test_a_box_file_with_the_wrong_number_of_columns_names_its_row(tmp_path):
    path = tmp_path / "mic_01.box"
    path.write_text("1 2 16 16\n3 4 16\n")
    with pytest.raises(StackError, match=r"mic_01.box: row 2: 3 columns, expected 4 or 5"):
        read_coordinates(path)


def test_a_micrograph_that_is_not_there_names_file_and_row(tmp_path, micrographs):
    path = tmp_path / "topaz.txt"
    path.write_text("image_name\tx_coord\ty_coord\nmic_01\t10\t12\nmic_07\t4\t4\n")
    with pytest.raises(StackError, match=r"topaz.txt: row 2: micrograph 'mic_07' is not among"):
        match_picks(read_coordinates(path), micrographs)


def test_a_coordinate_outside_the_micrograph_names_file_and_row(tmp_path, micrographs):
    path = write_box(tmp_path / "mic_01.box", x=np.array([10.0, 80.0]), y=np.array([10.0, 10.0]))
    with pytest.raises(StackError, match=r"mic_01.box: row 2: coordinate \(80, 10\) lies outside"):
        match_picks(read_coordinates(path), micrographs)


def test_unknown_suffixes_and_empty_folders_are_refused(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(StackError, match="unknown coordinate file type"):
        read_coordinates(tmp_path / "a.json")
    with pytest.raises(StackError, match="no coordinate files"):
        read_coordinates(tmp_path)
