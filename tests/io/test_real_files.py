"""Every real stack (or list pointing to one) in shared/data opens as SOURCES.md says."""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_spatial_vae.io import (
    StackError,
    parse_cs_table,
    parse_star_table,
    read_stack,
)

# file, shape, on-disk dtype, pixel size (Å) or None
OPENABLE = [
    ("cryodrgn/relion31.mrcs", (5, 256, 256), "float32", 1.0),  # no MAP ID; header says 1.0
    ("cryodrgn/relion31.star", (5, 256, 256), "float32", 2.806),
    ("cryodrgn/relion31.v2.star", (5, 256, 256), "float32", 2.806),  # optics after particles
    ("cryodrgn/empiar_10076_7.mrc", (7, 320, 320), "float32", None),  # ispg=1, voxel 0
    ("cryodrgn/empiar_10076_7.star", (7, 320, 320), "float32", 1.31),  # 5 µm / 38168
    ("cryodrgn/empiar_10076_7.cs", (7, 320, 320), "float32", 1.31),
    ("cryodrgn/hand.5.mrcs", (5, 64, 64), "float32", 1.0),  # no MAP ID
    ("aspire/sample.mrcs", (17, 200, 200), "float32", None),  # ispg=1, voxel 0
    ("aspire/sample_particles_relion30.star", (17, 200, 200), "float32", 1.338),
    ("aspire/sample_particles_relion31.star", (17, 200, 200), "float32", 1.4),
    ("mrcfile/EMD-3001.map", (25, 43, 73), "float32", None),  # non-square voxel
    ("mrcfile/float16.mrc", (1, 64, 64), "float16", 3.5953124),  # one 2-D image, mode 12
    ("rosettasciio/HAADFscan.mrc", (1, 16, 16), "uint16", 56.791313),  # FEI2 ext. header
    ("rosettasciio/Custom_movie.mrc", (30, 16, 16), "uint16", None),  # negative voxel
]

# list file -> the stack its rlnImageName / blob/path entries resolve to
LIST_STACKS = {
    "cryodrgn/relion31.star": "cryodrgn/relion31.mrcs",
    "cryodrgn/relion31.v2.star": "cryodrgn/relion31.mrcs",
    "cryodrgn/empiar_10076_7.star": "cryodrgn/empiar_10076_7.mrc",
    "cryodrgn/empiar_10076_7.cs": "cryodrgn/empiar_10076_7.mrc",
    "aspire/sample_particles_relion30.star": "aspire/sample.mrcs",
    "aspire/sample_particles_relion31.star": "aspire/sample.mrcs",
}


def mrcfile_data(path: Path) -> np.ndarray:
    """Reference pixels read eagerly by mrcfile, as (N, H, W)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as mrc:
            data = np.array(mrc.data)
    return data.reshape(-1, *data.shape[-2:])


@pytest.mark.parametrize(("name", "shape", "dtype", "pixel_size"), OPENABLE)
def test_real_file_opens(cryoem: Path, name: str, shape, dtype: str, pixel_size) -> None:
    stack = read_stack(cryoem / name)
    assert stack.shape == shape
    assert len(stack) == shape[0]
    assert stack.images.dtype == np.dtype(dtype)
    if pixel_size is None:
        assert stack.pixel_size is None
    else:
        assert stack.pixel_size == pytest.approx(pixel_size, rel=1e-5)
    batch = stack.read_batch([shape[0] - 1, 0])
    assert batch.dtype == np.float32
    assert batch.shape == (2, *shape[1:])


@pytest.mark.parametrize("name", [n for n, *_ in OPENABLE if not n.endswith((".star", ".cs"))])
def test_mrc_pixels_match_mrcfile(cryoem: Path, name: str) -> None:
    stack = read_stack(cryoem / name)
    expected = mrcfile_data(cryoem / name).astype(np.float32)
    np.testing.assert_array_equal(stack.read_batch(range(len(stack))), expected)


@pytest.mark.parametrize(("list_name", "stack_name"), sorted(LIST_STACKS.items()))
def test_list_gathers_referenced_images(cryoem: Path, list_name: str, stack_name: str) -> None:
    stack = read_stack(cryoem / list_name)
    expected = mrcfile_data(cryoem / stack_name)
    order = np.arange(len(stack))[::-1]
    np.testing.assert_array_equal(stack.read_batch(order), expected[order])
    assert stack.metadata is not None and len(stack.metadata) == len(stack)
    assert stack.image_names is not None and len(stack.image_names) == len(stack)


def test_relion31_metadata_merges_optics(cryoem: Path) -> None:
    stack = read_stack(cryoem / "cryodrgn/relion31.star")
    meta = stack.metadata
    for column in ("rlnDefocusU", "rlnAnglePsi", "rlnClassNumber", "rlnOpticsGroup"):
        assert column in meta.columns
    assert (meta["rlnImagePixelSize"] == 2.806).all()  # from data_optics
    assert (meta["rlnVoltage"] == 300).all()
    assert stack.image_names[0] == "000001@relion31.mrcs"
    assert meta["rlnDefocusU"].iloc[0] == pytest.approx(13108.082418)


def test_relion31_tabs_and_two_optics_groups(cryoem: Path) -> None:
    # no rlnImageSize, tab/space mix, 2 optics groups with equal pixel size
    stack = read_stack(cryoem / "aspire/sample_particles_relion31.star")
    assert set(stack.metadata["rlnVoltage"]) == {300.0, 200.0}
    assert "rlnImageSize" not in stack.metadata.columns


def test_relion30_unnamed_block_unpadded_indices(cryoem: Path) -> None:
    stack = read_stack(cryoem / "cryodrgn/empiar_10076_7.star")
    assert stack.image_names[0] == "1@empiar_10076_7.mrc"
    assert stack.pixel_size == pytest.approx(5 * 1e4 / 38168)


def test_cs_metadata_flattened(cryoem: Path) -> None:
    stack = read_stack(cryoem / "cryodrgn/empiar_10076_7.cs")
    meta = stack.metadata
    assert meta["blob/idx"].tolist() == list(range(7))
    assert "ctf/df1_A" in meta.columns
    assert {"ctf/shift_A_0", "ctf/shift_A_1", "blob/shape_0"} <= set(meta.columns)
    assert meta["ctf/df1_A"].iloc[0] == pytest.approx(15301.1)
    assert stack.image_names[0] == "000001@empiar_10076_7.mrc"


@pytest.mark.parametrize(
    ("name", "rows", "groups", "stack_name"),
    [
        ("cryodrgn/relion31.6opticsgroups.star", 139, 6, "Polish/job520/Micrographs"),
        ("cryodrgn/relion5.star", 17, 1, "toy_images_a.mrcs"),
        ("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star", 5, 0, "Extract/job012/"),
    ],
)
def test_parse_only_star_files(cryoem: Path, name: str, rows: int, groups: int, stack_name):
    table = parse_star_table(cryoem / name)
    assert len(table) == rows
    assert "rlnImageName" in table.columns
    if groups:
        assert table["rlnOpticsGroup"].nunique() == groups
        assert "rlnImagePixelSize" in table.columns  # merged from data_optics
    with pytest.raises(StackError, match=rf"{name.split('/')[-1]}: stack '{stack_name}.*not found"):
        read_stack(cryoem / name)


def test_relion30_pixel_size_from_detector(cryoem: Path) -> None:
    from napari_spatial_vae.io.star import pixel_size_from_table

    table = parse_star_table(cryoem / "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    assert pixel_size_from_table(table) == pytest.approx(1.035 * 1e4 / 10000)


def test_six_optics_groups_keep_per_row_pixel_size(cryoem: Path) -> None:
    table = parse_star_table(cryoem / "cryodrgn/relion31.6opticsgroups.star")
    assert table["rlnImagePixelSize"].notna().all()
    assert {"rlnMagMat00", "rlnBeamTiltX"} <= set(table.columns)


def test_cryosparc_export_parses_and_reports_missing_stack(cryoem: Path) -> None:
    path = cryoem / "cryodrgn/cryosparc_J2_particles_exported.cs"
    table = parse_cs_table(path)
    assert len(table) == 22
    assert {"alignments2D/pose", "alignments2D/shift_0", "alignments2D/shift_1"} <= set(
        table.columns
    )
    assert table["alignments2D/class"].iloc[0] == 4
    # the leading '>' is stripped before looking for the stack
    with pytest.raises(StackError, match=r"stack 'J1/imported/.*_DW\.mrcs' .*not found"):
        read_stack(path)


def test_ctf_table_is_not_a_particle_list(cryoem: Path) -> None:
    with pytest.raises(StackError, match=r"ctf_params\.star: no rlnImageName column"):
        read_stack(cryoem / "topaz/ctf_params.star")


def test_datadir_fallback(cryoem: Path, tmp_path: Path) -> None:
    # a star file moved away from its stacks finds them through datadir
    star = tmp_path / "moved.star"
    star.write_text((cryoem / "cryodrgn/relion31.star").read_text())
    with pytest.raises(StackError, match=r"moved\.star: stack 'relion31\.mrcs'.*pass datadir="):
        read_stack(star)
    stack = read_stack(star, datadir=cryoem / "cryodrgn")
    assert stack.shape == (5, 256, 256)


def test_cs_datadir_fallback(cryoem: Path, tmp_path: Path) -> None:
    cs = tmp_path / "moved.cs"
    cs.write_bytes((cryoem / "cryodrgn/empiar_10076_7.cs").read_bytes())
    assert read_stack(cs, datadir=cryoem / "cryodrgn").shape == (7, 320, 320)
