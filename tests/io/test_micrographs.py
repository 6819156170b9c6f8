"""Micrographs in: MRC files, folders and RELION micrographs STAR files, lazily."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_spatial_vae.io import StackError
from napari_spatial_vae.io.micrographs import read_micrographs
from napari_spatial_vae.io.particles_star import micrographs_star_tables, write_star


def write_micrograph(path: Path, shape=(40, 50), pixel_size=1.5, seed=0) -> np.ndarray:
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = pixel_size
    return data


@pytest.fixture
def folder(tmp_path) -> Path:
    for k in range(3):
        write_micrograph(tmp_path / f"mic_{k}.mrc", seed=k)
    return tmp_path


def test_a_single_file_opens_as_a_stack_of_one(folder):
    mics = read_micrographs(folder / "mic_1.mrc")
    assert len(mics) == 1 and mics.shape == (40, 50) and mics.pixel_size == 1.5
    np.testing.assert_array_equal(mics.read(0), mrcfile.read(folder / "mic_1.mrc"))


def test_a_folder_opens_in_name_order_and_reads_one_micrograph_at_a_time(folder):
    mics = read_micrographs(folder)
    assert mics.keys == ["mic_0", "mic_1", "mic_2"]
    assert mics.images.shape == (3, 40, 50)
    np.testing.assert_array_equal(mics.images[2], mrcfile.read(folder / "mic_2.mrc"))


def test_a_star_file_resolves_names_against_its_folder_and_the_current_folder(
    folder, tmp_path, monkeypatch
):
    ctf = {"rlnDefocusU": [1e4, 2e4], "rlnDefocusV": [1e4, 2e4]}
    import pandas as pd

    (tmp_path / "job").mkdir()
    star = tmp_path / "job" / "micrographs_ctf.star"
    # the first name is relative to the project folder (the current folder), as in RELION;
    # the second sits beside the STAR file
    write_micrograph(tmp_path / "job" / "beside.mrc", seed=5)
    names = ["mic_0.mrc", "beside.mrc"]
    write_star(star, micrographs_star_tables(names, 1.2, pd.DataFrame(ctf)))
    monkeypatch.chdir(folder)
    mics = read_micrographs(star)
    assert mics.names == names and mics.pixel_size == 1.2  # the STAR's optics win
    assert list(mics.table["rlnDefocusU"]) == [1e4, 2e4]
    assert list(mics.table["rlnVoltage"]) == [300.0, 300.0]
    np.testing.assert_array_equal(mics.read(1), mrcfile.read(tmp_path / "job" / "beside.mrc"))


def test_a_missing_micrograph_in_a_star_names_its_row(cryoem):
    with pytest.raises(
        StackError, match=r"ctf_params.star: row 1: micrograph '14sep05c.*not found"
    ):
        read_micrographs(cryoem / "topaz" / "ctf_params.star")


def test_micrographs_of_different_pixel_sizes_are_refused(folder):
    write_micrograph(folder / "mic_9.mrc", pixel_size=2.0)
    with pytest.raises(StackError, match=r"mic_9.mrc: micrographs of different pixel sizes"):
        read_micrographs(folder)


def test_micrographs_of_different_sizes_are_refused(folder):
    write_micrograph(folder / "mic_9.mrc", shape=(40, 52))
    with pytest.raises(StackError, match=r"mic_9.mrc: is 52x40 pixels but mic_0.mrc is 50x40"):
        read_micrographs(folder)


def test_a_movie_is_not_a_micrograph(tmp_path):
    with mrcfile.new(tmp_path / "movie.mrc") as mrc:
        mrc.set_data(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(StackError, match=r"movie\.mrc: holds 3 images"):
        read_micrographs(tmp_path / "movie.mrc")


def test_other_files_are_not_micrographs(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(StackError, match=r"a\.txt: not a micrograph"):
        read_micrographs([tmp_path / "a.txt"])
    with pytest.raises(StackError, match=r"no \.mrc micrographs"):
        read_micrographs(tmp_path)


def test_several_files_keep_the_given_order(folder):
    mics = read_micrographs([folder / "mic_2.mrc", folder / "mic_0.mrc"])
    assert mics.keys == ["mic_2", "mic_0"]
    np.testing.assert_array_equal(mics.read(1), mrcfile.read(folder / "mic_0.mrc"))
