"""``spatial-vae extract`` end to end: the boxes, the STAR file, the CTF, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_spatial_vae.io import read_stack
from napari_spatial_vae.micrograph_samples import write_synthetic_micrographs
from tests.cli_run import run_cli

BOX = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("micrographs")
    return write_synthetic_micrographs(
        folder,
        n_micrographs=2,
        shape=(120, 140),
        n_particles=6,
        particle_size=24,
        pixel_size=1.25,
        seed=3,
    )


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def independent_crops(data, picks: pd.DataFrame) -> np.ndarray:
    """Boxes cut by hand with mrcfile and Python's own rounding rule for .5 (up)."""
    out = []
    for _, p in picks.iterrows():
        mic = mrcfile.read(data.micrographs[int(p["micrograph"])])
        col, row = int(np.floor(p["x"] + 0.5)), int(np.floor(p["y"] + 0.5))
        out.append(mic[row - BOX // 2 : row + BOX // 2, col - BOX // 2 : col + BOX // 2])
    return np.stack(out)


def fitting(data) -> pd.DataFrame:
    """True picks whose box lies on the micrograph, in micrograph order."""
    t = data.truth
    r, c = np.floor(t["y"] + 0.5) - BOX // 2, np.floor(t["x"] + 0.5) - BOX // 2
    ok = (r >= 0) & (c >= 0) & (r + BOX <= 120) & (c + BOX <= 140)
    return t[ok].sort_values("micrograph", kind="stable")


def test_extracted_images_equal_plain_crops(capsys, data, in_tmp):
    code, err = run_cli(
        capsys,
        "extract",
        data.micrographs_star,
        "--coords",
        data.coordinates_star,
        "--box",
        BOX,
        "--no-invert",
        "--no-normalise",
        "-o",
        "out/particles.star",
    )
    assert code == 0, err
    expected = fitting(data)
    skipped = len(data.truth) - len(expected)
    assert f"wrote {len(expected)} particles" in err
    assert (f"skipped {skipped} of" in err) == (skipped > 0)
    stack = read_stack(in_tmp / "out" / "particles.star")
    np.testing.assert_array_equal(stack.images[:], independent_crops(data, expected))
    assert stack.pixel_size == 1.25


def test_box_and_star_coordinates_extract_the_same_boxes(capsys, data, in_tmp):
    coords = in_tmp / "boxes"
    coords.mkdir()
    for k, path in enumerate(data.micrographs):
        t = data.truth[data.truth["micrograph"] == k]
        # EMAN: lower-left corner and size; the centre is (x + w/2, y + h/2)
        rows = [f"{x - 50:.6f} {y - 50:.6f} 100 100" for x, y in zip(t["x"], t["y"], strict=True)]
        (coords / f"{path.stem}.box").write_text("\n".join(rows) + "\n")
    for coord, out in ((data.coordinates_star, "a.star"), (coords, "b.star")):
        code, err = run_cli(
            capsys,
            "extract",
            data.micrographs_star,
            "--coords",
            coord,
            "--box",
            BOX,
            "--size",
            16,
            "-o",
            out,
        )
        assert code == 0, err
    a, b = read_stack(in_tmp / "a.star"), read_stack(in_tmp / "b.star")
    np.testing.assert_allclose(a.images[:], b.images[:], atol=1e-5)
    assert a.pixel_size == b.pixel_size == 2.5


def test_every_particle_carries_its_micrographs_ctf(capsys, data, in_tmp):
    code, err = run_cli(
        capsys,
        "extract",
        data.micrographs_star,
        "--coords",
        data.coordinates_star,
        "--box",
        BOX,
        "--size",
        16,
        "-o",
        "p.star",
    )
    assert code == 0, err
    written = starfile.read(in_tmp / "p.star")
    mics = starfile.read(data.micrographs_star)
    particles, optics = written["particles"], written["optics"]
    by_name = mics["micrographs"].set_index("rlnMicrographName")
    for label in (
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnPhaseShift",
        "rlnCtfBfactor",
    ):
        expected = by_name.loc[particles["rlnMicrographName"], label].to_numpy()
        np.testing.assert_allclose(particles[label], expected, rtol=1e-6)
    assert optics.loc[0, "rlnVoltage"] == 300 and optics.loc[0, "rlnSphericalAberration"] == 2.7
    assert optics.loc[0, "rlnAmplitudeContrast"] == 0.1
    assert optics.loc[0, "rlnMicrographOriginalPixelSize"] == 1.25
    assert optics.loc[0, "rlnImagePixelSize"] == 2.5
    assert optics.loc[0, "rlnImageSize"] == 16 and optics.loc[0, "rlnImageDimensionality"] == 2
    # RELION resolves rlnImageName against the folder it runs in
    first = particles["rlnImageName"].iloc[0].split("@", 1)[1]
    assert (in_tmp / first).is_file() and first.startswith("p_mic_")
    assert "RELION" not in err
    text = (in_tmp / "p.star").read_text()
    assert text.count("# version 30001") == 2


def test_normalised_inverted_boxes_have_a_standard_background(capsys, data, in_tmp):
    code, err = run_cli(
        capsys,
        "extract",
        data.micrographs_star,
        "--coords",
        data.coordinates_star,
        "--box",
        BOX,
        "-o",
        "n.star",
    )
    assert code == 0, err
    images = read_stack(in_tmp / "n.star").images[:]
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    background = np.hypot(yy, xx) > 0.75 * BOX / 2
    np.testing.assert_allclose(images[:, background].mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(images[:, background].std(1), 1, atol=1e-4)
    # the synthetic particles are dark; inverted, their centres are brighter than the rim
    assert images[:, yy**2 + xx**2 < 25].mean() > 0.5


def leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in (".star", ".mrcs", ".part") or p.name.startswith(".")
    )


def write_mic(path: Path, shape=(64, 64), pixel_size=1.0):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros(shape, np.float32))
        mrc.voxel_size = pixel_size


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing micrograph", r"picks.txt: row 2: micrograph 'mic_9' is not among"),
        ("outside", r"mic_1.box: row 1: coordinate \(100, 40\) lies outside"),
        ("box too large", r"box 128 px is larger than the micrographs \(64x64 pixels\)"),
        ("pixel sizes", r"mic_2.mrc: micrographs of different pixel sizes"),
        ("box columns", r"mic_1.box: row 2: 3 columns, expected 4 or 5"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_row(capsys, in_tmp, case, message):
    mics = in_tmp / "mics"
    mics.mkdir()
    write_mic(mics / "mic_1.mrc")
    write_mic(mics / "mic_2.mrc", pixel_size=2.0 if case == "pixel sizes" else 1.0)
    coords = in_tmp / "mic_1.box"
    coords.write_text("20 20 16 16\n30 30 16 16\n")
    box = 16
    if case == "missing micrograph":
        coords = in_tmp / "picks.txt"
        coords.write_text("image_name\tx_coord\ty_coord\nmic_1\t30\t30\nmic_9\t30\t30\n")
    elif case == "outside":
        coords.write_text("92 32 16 16\n")
    elif case == "box too large":
        box = 128
    elif case == "box columns":
        coords.write_text("20 20 16 16\n30 30 16\n")
    out = in_tmp / "out"
    out.mkdir()
    code, err = run_cli(
        capsys, "extract", mics, "--coords", coords, "--box", box, "-o", out / "p.star"
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("spatial-vae extract: error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert leftovers(out) == []


def test_a_failure_while_writing_leaves_nothing_that_looks_complete(
    capsys, data, in_tmp, monkeypatch
):
    import napari_spatial_vae.extraction as extraction

    calls = {"n": 0}
    real = extraction.extract_boxes

    def fail_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(extraction, "extract_boxes", fail_on_second)
    code, err = run_cli(
        capsys,
        "extract",
        data.micrographs_star,
        "--coords",
        data.coordinates_star,
        "--box",
        BOX,
        "-o",
        "f.star",
    )
    assert code == 1 and "No space left on device" in err
    assert leftovers(in_tmp) == []


def test_usage_errors(capsys, data, in_tmp):
    code, err = run_cli(
        capsys,
        "extract",
        data.micrographs_star,
        "--coords",
        data.coordinates_star,
        "--box",
        BOX,
        "--size",
        15,
        "-o",
        "x.star",
    )
    assert code == 1 and "size 15 px: must be even" in err
    code, err = run_cli(
        capsys,
        "extract",
        data.micrographs_star,
        "--coords",
        data.coordinates_star,
        "--box",
        BOX,
        "-o",
        "x.mrcs",
    )
    assert code == 2 and "must end in .star" in err
    assert not os.path.exists(in_tmp / "x.star")


def test_simulate_micrographs_then_extract(capsys, in_tmp):
    code, err = run_cli(
        capsys,
        "simulate-micrographs",
        "-o",
        "sim",
        "--n",
        2,
        "--side",
        128,
        "--particles",
        3,
        "--particle-size",
        24,
    )
    assert code == 0, err
    assert (in_tmp / "sim" / "Micrographs" / "mic_002.mrc").is_file()
    code, err = run_cli(
        capsys,
        "extract",
        "sim/micrographs_ctf.star",
        "--coords",
        "sim/picks.star",
        "--box",
        32,
        "-o",
        "p.star",
    )
    assert code == 0, err
    assert read_stack(in_tmp / "p.star").pixel_size == 2.0


def test_a_relion_30_micrographs_table_gives_its_ctf_and_pixel_size(capsys, in_tmp, shared_data):
    """topaz's ctf_params.star (CTFFIND values, RELION 3.0 labels, tab-separated)."""
    source = shared_data / "cryoem" / "topaz" / "ctf_params.star"
    table = starfile.read(source)
    star = in_tmp / "ctf_params.star"
    star.write_bytes(source.read_bytes())
    for name in table["rlnMicrographName"][:3]:  # three micrographs are enough
        write_mic(in_tmp / name, shape=(64, 64), pixel_size=0.0)
    lines = [
        "data_images",
        "loop_",
        "_rlnMicrographName #1",
        "_rlnCoordinateX #2",
        "_rlnCoordinateY #3",
    ]
    lines += [f"{name}\t32\t30" for name in table["rlnMicrographName"][:3]]
    # the other 27 micrographs are absent: keep only the rows whose files exist
    trimmed = table.iloc[:3]
    starfile.write({"images": trimmed}, star, overwrite=True)
    (in_tmp / "picks.star").write_text("\n".join(lines) + "\n")
    code, err = run_cli(
        capsys, "extract", star, "--coords", "picks.star", "--box", 32, "-o", "p.star"
    )
    assert code == 0, err
    written = starfile.read(in_tmp / "p.star")
    np.testing.assert_allclose(written["particles"]["rlnDefocusU"], trimmed["rlnDefocusU"])
    np.testing.assert_allclose(
        written["particles"]["rlnCtfFigureOfMerit"], trimmed["rlnCtfFigureOfMerit"]
    )
    optics = written["optics"]
    assert (optics.loc[0, "rlnVoltage"], optics.loc[0, "rlnSphericalAberration"]) == (300, 2.7)
    # rlnDetectorPixelSize 2.5 µm / rlnMagnification 38023
    np.testing.assert_allclose(optics.loc[0, "rlnImagePixelSize"], 2.5e4 / 38023, rtol=1e-6)
