"""CTF parameters from RELION STAR (3.0, 3.1) and cryoSPARC .cs files; bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_spatial_vae.io import read_stack
from napari_spatial_vae.io.ctf_params import CTF_COLUMNS, write_particles_star

STAR30 = """
data_images

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnVoltage #5
_rlnSphericalAberration #6
_rlnAmplitudeContrast #7
_rlnDetectorPixelSize #8
_rlnMagnification #9
_rlnPhaseShift #10
1@stack.mrcs 21000.5 20500.0 35.0 300 2.7 0.1 5.0 25000 0.0
2@stack.mrcs 15000.0 14800.0 -20.0 300 2.7 0.1 5.0 25000 10.0
3@stack.mrcs 30000.0 30000.0 0.0 300 2.7 0.1 5.0 25000 0.0
"""

STAR31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
_rlnCtfDataAreCtfPremultiplied #9
1 opticsGroup1 0.07 2.7 300.0 1.5 16 2 0
2 opticsGroup2 0.10 0.01 200.0 1.5 16 2 0

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnCtfBfactor #5
_rlnCtfScalefactor #6
_rlnOpticsGroup #7
1@stack.mrcs 21000.5 20500.0 35.0 10.0 0.9 1
2@stack.mrcs 15000.0 14800.0 -20.0 0.0 1.0 2
3@stack.mrcs 30000.0 30000.0 0.0 0.0 1.0 1
"""


@pytest.fixture
def star_dir(tmp_path, make_mrcs) -> Path:
    make_mrcs(tmp_path / "stack.mrcs", n=3)
    return tmp_path


def test_relion30_ctf_per_row(star_dir):
    path = star_dir / "p30.star"
    path.write_text(STAR30)
    stack = read_stack(path)
    assert stack.ctf_problem is None
    table = stack.ctf.table
    assert list(table.columns) == list(CTF_COLUMNS)
    assert table["defocus_u"].tolist() == [21000.5, 15000.0, 30000.0]
    assert table["defocus_angle"].tolist() == [35.0, -20.0, 0.0]
    assert table["phase_shift"].tolist() == [0.0, 10.0, 0.0]
    assert table["pixel_size"].tolist() == pytest.approx([2.0] * 3)  # 5 µm / 25000
    assert table["bfactor"].tolist() == [0.0] * 3 and table["scale"].tolist() == [1.0] * 3
    assert not stack.ctf.premultiplied and not stack.ctf.phase_flipped
    assert stack.ctf.source == str(path)


def test_relion31_optics_groups_reach_each_particle(star_dir):
    path = star_dir / "p31.star"
    path.write_text(STAR31)
    table = read_stack(path).ctf.table
    assert table["voltage"].tolist() == [300.0, 200.0, 300.0]
    assert table["cs"].tolist() == [2.7, 0.01, 2.7]
    assert table["amplitude_contrast"].tolist() == [0.07, 0.10, 0.07]
    assert table["bfactor"].tolist() == [10.0, 0.0, 0.0]
    assert table["scale"].tolist() == [0.9, 1.0, 1.0]
    assert table["pixel_size"].tolist() == [1.5] * 3
    assert table["phase_shift"].tolist() == [0.0] * 3


def test_premultiplied_and_phase_flipped_flags(star_dir):
    path = star_dir / "pre.star"
    path.write_text(STAR31.replace("16 2 0\n", "16 2 1\n"))
    assert read_stack(path).ctf.premultiplied
    flipped = star_dir / "flip.star"
    header, rows = STAR30.split("_rlnPhaseShift #10\n")
    rows = "".join(line + " 1\n" for line in rows.strip().splitlines())
    flipped.write_text(header + "_rlnPhaseShift #10\n_rlnCtfDataArePhaseFlipped #11\n" + rows)
    ctf = read_stack(flipped).ctf
    assert ctf.phase_flipped and not ctf.premultiplied


def test_a_subset_keeps_its_rows_ctf(star_dir):
    path = star_dir / "p31.star"
    path.write_text(STAR31)
    part = read_stack(path).subset([2, 0])
    assert part.ctf.table["defocus_u"].tolist() == [30000.0, 21000.5]


def test_no_defocus_means_no_ctf(star_dir):
    path = star_dir / "plain.star"
    path.write_text("data_\nloop_\n_rlnImageName #1\n1@stack.mrcs\n2@stack.mrcs\n")
    stack = read_stack(path)
    assert stack.ctf is None and stack.ctf_problem is None


def test_partly_missing_columns_name_the_label_and_file(star_dir):
    path = star_dir / "novolt.star"
    path.write_text(STAR30.replace("_rlnVoltage #5", "_rlnHelicalTubeID #5"))
    stack = read_stack(path)  # the file opens: --ctf off must still train
    assert stack.ctf is None
    assert stack.ctf_problem.startswith(f"{path}: CTF columns partly missing: no rlnVoltage")
    assert "--ctf off" in stack.ctf_problem
    assert "\n" not in stack.ctf_problem


def test_missing_pixel_size_is_named(star_dir):
    path = star_dir / "nopix.star"
    path.write_text(STAR30.replace("_rlnDetectorPixelSize #8", "_rlnCtfFigureOfMerit #8"))
    problem = read_stack(path).ctf_problem
    assert problem.startswith(f"{path}: the CTF needs the pixel size")


def _cs_file(path: Path, fields: dict[str, np.ndarray], n: int = 3) -> None:
    dtype = [("blob/path", "S20"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4")]
    dtype += [(name, "<f4") for name in fields]
    array = np.zeros(n, dtype=dtype)
    array["blob/path"] = b"stack.mrcs"
    array["blob/idx"] = np.arange(n)
    array["blob/psize_A"] = 1.5
    for name, values in fields.items():
        array[name] = values
    with path.open("wb") as handle:
        np.save(handle, array)


CS_FIELDS = {
    "ctf/accel_kv": np.array([300.0, 300.0, 200.0]),
    "ctf/cs_mm": np.array([2.7, 2.7, 2.0]),
    "ctf/amp_contrast": np.array([0.07, 0.07, 0.1]),
    "ctf/df1_A": np.array([20000.0, 15000.0, 9000.0]),
    "ctf/df2_A": np.array([19500.0, 14900.0, 9000.0]),
    "ctf/df_angle_rad": np.array([0.5, -1.0, 0.0]),
    "ctf/phase_shift_rad": np.array([0.0, math.pi / 2, 0.0]),
}


def test_cryosparc_fields_in_relion_units(star_dir):
    path = star_dir / "p.cs"
    _cs_file(path, CS_FIELDS)
    table = read_stack(path).ctf.table
    assert table["defocus_u"].tolist() == [20000.0, 15000.0, 9000.0]
    assert table["defocus_v"].tolist() == [19500.0, 14900.0, 9000.0]
    assert table["defocus_angle"].to_numpy() == pytest.approx(np.degrees([0.5, -1.0, 0.0]))
    assert table["phase_shift"].to_numpy() == pytest.approx([0.0, 90.0, 0.0], abs=1e-4)
    assert table["voltage"].tolist() == [300.0, 300.0, 200.0]
    assert table["pixel_size"].tolist() == [1.5] * 3
    assert table["scale"].tolist() == [1.0] * 3


def test_cryosparc_partly_missing(star_dir):
    path = star_dir / "p.cs"
    _cs_file(path, {k: v for k, v in CS_FIELDS.items() if k != "ctf/cs_mm"})
    stack = read_stack(path)
    assert stack.ctf is None
    assert stack.ctf_problem.startswith(f"{path}: CTF columns partly missing: no ctf/cs_mm")


def test_real_relion31_file(cryoem):
    stack = read_stack(cryoem / "cryodrgn" / "relion31.star")
    table = stack.ctf.table
    assert len(table) == 5
    assert table["voltage"].tolist() == [300.0] * 5
    assert table["cs"].tolist() == [0.01] * 5
    assert table["amplitude_contrast"].tolist() == [0.1] * 5
    assert table["pixel_size"].tolist() == [2.806] * 5
    assert table["defocus_u"].iloc[0] == pytest.approx(13108.082418)
    assert table["defocus_angle"].iloc[0] == pytest.approx(-160.39)


def test_real_relion30_and_cryosparc_files_of_the_same_particles_agree(cryoem):
    star = read_stack(cryoem / "cryodrgn" / "empiar_10076_7.star").ctf.table
    cs = read_stack(cryoem / "cryodrgn" / "empiar_10076_7.cs").ctf.table
    assert len(star) == len(cs) == 7
    for column in CTF_COLUMNS:
        assert cs[column].to_numpy() == pytest.approx(star[column].to_numpy(), rel=1e-4, abs=1e-3)
    assert star["pixel_size"].iloc[0] == pytest.approx(1.31, abs=1e-3)


def test_real_relion5_and_multi_optics_files_parse(cryoem):
    from napari_spatial_vae.io.ctf_params import ctf_from_star_table
    from napari_spatial_vae.io.star import parse_star_table, pixel_sizes_per_row

    for name in ("relion5.star", "relion31.6opticsgroups.star"):
        path = cryoem / "cryodrgn" / name
        table = parse_star_table(path)
        ctf, problem = ctf_from_star_table(path, table, pixel_sizes_per_row(table))
        assert problem is None and ctf is not None, problem
        assert len(ctf) == len(table)
        assert (ctf.table["defocus_u"] > 0).all() and (ctf.table["voltage"] > 0).all()


def test_written_star_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    n = 4
    values = np.column_stack(
        [
            rng.uniform(5000, 30000, n),
            rng.uniform(5000, 30000, n),
            rng.uniform(-180, 180, n),
            np.full(n, 300.0),
            np.full(n, 2.7),
            np.full(n, 0.1),
            np.zeros(n),
            np.zeros(n),
            np.ones(n),
            np.full(n, 3.0),
        ]
    )

    class Parameters:  # the core's CtfParameters has this shape
        pass

    ctf = Parameters()
    ctf.values = values
    truth = pd.DataFrame(
        {"theta": rng.uniform(-3, 3, n), "dx": np.zeros(n), "dy": np.zeros(n), "conf": [0.1] * n}
    )
    images = rng.normal(size=(n, 16, 16)).astype(np.float32)
    write_particles_star(tmp_path / "sim.star", images, 3.0, ctf, truth)
    stack = read_stack(tmp_path / "sim.star")
    assert stack.ctf.table.to_numpy() == pytest.approx(values)
    assert np.array_equal(stack.read_batch(np.arange(n)), images)
