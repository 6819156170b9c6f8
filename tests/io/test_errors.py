"""Bad input gives one StackError line naming the file and the problem."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_spatial_vae.io import StackError, read_stack


def check(path: Path, pattern: str, datadir: Path | None = None) -> StackError:
    """read_stack(path) fails with a one-line message starting with the path."""
    with pytest.raises(StackError, match=pattern) as info:
        read_stack(path, datadir=datadir)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert isinstance(info.value, ValueError)
    return info.value


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(StackError("a.mrcs", "bad\nthing")))
    assert str(err) == "a.mrcs: bad thing"


def test_missing_file(tmp_path: Path) -> None:
    check(tmp_path / "nope.mrcs", "no such file")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "particles.xyz"
    path.write_text("x")
    check(path, r"unknown file type '\.xyz'; supported: \.mrc")


def test_text_file_named_mrcs(tmp_path: Path) -> None:
    path = tmp_path / "list.mrcs"
    path.write_text("data_particles\nloop_\n_rlnImageName #1\n1@a.mrcs\n" * 40)
    check(path, "is a text file, not an MRC image file")


def test_not_an_mrc_at_all(tmp_path: Path) -> None:
    path = tmp_path / "noise.mrc"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    check(path, r"not an MRC file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mrcs"
    path.touch()
    check(path, r"empty file \(0 bytes\)")


def test_shorter_than_header(tmp_path: Path, small_mrcs) -> None:
    src, _ = small_mrcs
    path = tmp_path / "cut.mrcs"
    path.write_bytes(src.read_bytes()[:600])
    check(path, r"truncated MRC file: 600 bytes, shorter than the 1024-byte MRC header")


def test_truncated_data(tmp_path: Path, small_mrcs) -> None:
    src, _ = small_mrcs
    path = tmp_path / "cut.mrcs"
    path.write_bytes(src.read_bytes()[:-100])
    check(path, r"header announces 6 image\(s\) of 16x16 float32 .* truncated file or wrong header")


def test_header_announces_more_than_file(tmp_path: Path, make_mrcs) -> None:
    path = tmp_path / "liar.mrcs"
    make_mrcs(path, n=3)
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.int32(3000).tobytes()  # nz
    path.write_bytes(bytes(raw))
    check(path, r"header announces 3000 image\(s\) of 16x16 float32 .* holds only")


def test_missing_map_id_with_bad_size(tmp_path: Path, small_mrcs) -> None:
    # a header without the MAP ID is only trusted when it describes the file exactly
    src, _ = small_mrcs
    raw = bytearray(src.read_bytes() + b"\x00" * 64)
    raw[208:212] = b"\x00" * 4
    path = tmp_path / "noid.mrcs"
    path.write_bytes(bytes(raw))
    check(path, r"not an MRC file \(Map ID string not found")


def test_complex_mode(tmp_path: Path) -> None:
    import mrcfile

    path = tmp_path / "complex.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 4, 4), np.complex64))
    check(path, r"complex-valued MRC data \(mode 4\)")


def test_empty_mrc_stack(tmp_path: Path, make_mrcs) -> None:
    path = tmp_path / "none.mrcs"
    make_mrcs(path, n=1)
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.int32(0).tobytes()
    path.write_bytes(bytes(raw[:1024]))
    check(path, r"empty stack \(0 images\)")


def _star(path: Path, names: list[str], extra: str = "") -> Path:
    body = "\n".join(names)
    path.write_text(f"data_particles\n\nloop_\n_rlnImageName #1\n{body}\n{extra}")
    return path


def test_star_without_rows(tmp_path: Path) -> None:
    check(_star(tmp_path / "empty.star", []), r"empty\.star: no particle rows")


def test_star_that_is_not_star(tmp_path: Path) -> None:
    path = tmp_path / "prose.star"
    path.write_text("just some words\n")
    check(path, r"no data blocks found")


def test_star_without_image_name(tmp_path: Path) -> None:
    path = tmp_path / "coords.star"
    path.write_text("data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n3 4\n")
    check(path, r"coords\.star: no rlnImageName column in block data_")


def test_star_bad_image_name(tmp_path: Path, small_mrcs) -> None:
    _star(tmp_path / "bad.star", ["1@small.mrcs", "x@small.mrcs"])
    check(tmp_path / "bad.star", r"row 2: rlnImageName 'x@small\.mrcs' is not of the form N@stack")
    _star(tmp_path / "zero.star", ["0@small.mrcs"])
    check(tmp_path / "zero.star", r"row 1: rlnImageName '0@small\.mrcs'")


def test_star_missing_stack(tmp_path: Path) -> None:
    _star(tmp_path / "p.star", ["1@gone/stack.mrcs"])
    err = check(
        tmp_path / "p.star", r"stack 'gone/stack\.mrcs' \(rlnImageName on row 1\) not found"
    )
    assert "datadir" in str(err)


def test_star_index_past_end(tmp_path: Path, small_mrcs) -> None:
    _star(tmp_path / "p.star", ["1@small.mrcs", "7@small.mrcs"])
    check(tmp_path / "p.star", r"row 2 asks for image 7 of 'small\.mrcs', which holds only 6")


def test_star_mixed_image_sizes(tmp_path: Path, small_mrcs, make_mrcs) -> None:
    make_mrcs(tmp_path / "big.mrcs", n=2, size=24)
    _star(tmp_path / "p.star", ["1@small.mrcs", "1@big.mrcs"])
    check(
        tmp_path / "p.star",
        r"mixed image sizes: 'small\.mrcs' holds 16x16 .* 'big\.mrcs' holds 24x24",
    )


def test_star_pointing_to_broken_stack(tmp_path: Path) -> None:
    (tmp_path / "t.mrcs").write_text("not an image\n")
    _star(tmp_path / "p.star", ["1@t.mrcs"])
    check(tmp_path / "p.star", r"p\.star: stack 't\.mrcs' \(.*\): is a text file")


def test_star_unknown_optics_group(tmp_path: Path, small_mrcs) -> None:
    path = tmp_path / "p.star"
    path.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 1.5\n\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n1@small.mrcs 2\n"
    )
    check(path, r"row 1 refers to optics group 2, which data_optics lacks")


def _cs(path: Path, blob_paths: list[bytes], idx: list[int]) -> Path:
    dtype = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4")]
    array = np.zeros(len(idx), dtype=dtype)
    array["blob/path"] = blob_paths
    array["blob/idx"] = idx
    array["blob/psize_A"] = 1.5
    with open(path, "wb") as f:  # np.save would append .npy to the name
        np.save(f, array)
    return path


def test_cs_missing_stack(tmp_path: Path) -> None:
    _cs(tmp_path / "p.cs", [b">J3/extract/x.mrcs"], [0])
    check(tmp_path / "p.cs", r"stack 'J3/extract/x\.mrcs' \(blob/path on row 1\) not found")


def test_cs_index_past_end_and_mixed_sizes(tmp_path: Path, small_mrcs, make_mrcs) -> None:
    _cs(tmp_path / "p.cs", [b"small.mrcs", b"small.mrcs"], [0, 6])
    check(tmp_path / "p.cs", r"row 2 asks for image 6 of 'small\.mrcs', which holds only 6")
    make_mrcs(tmp_path / "big.mrcs", n=2, size=20)
    _cs(tmp_path / "q.cs", [b"small.mrcs", b"big.mrcs"], [0, 0])
    check(tmp_path / "q.cs", r"mixed image sizes")


def test_cs_ok_and_basename_fallback(tmp_path: Path, small_mrcs) -> None:
    _cs(tmp_path / "p.cs", [b">J9/imported/small.mrcs"] * 2, [5, 0])
    stack = read_stack(tmp_path / "p.cs")
    assert stack.pixel_size == 1.5
    assert stack.image_names == ["000006@J9/imported/small.mrcs", "000001@J9/imported/small.mrcs"]


def test_cs_not_structured(tmp_path: Path) -> None:
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, np.zeros(3))
    check(tmp_path / "p.cs", r"not a cryoSPARC \.cs file \(expected a 1-D structured array")
    (tmp_path / "t.cs").write_text("hello")
    check(tmp_path / "t.cs", r"not a cryoSPARC \.cs file")


def test_cs_without_blob(tmp_path: Path) -> None:
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, np.zeros(3, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    check(tmp_path / "p.cs", r"no blob/path and blob/idx fields")


@pytest.mark.parametrize(("shape", "what"), [((), "0-D"), ((5,), "1-D")])
def test_low_dimensional_arrays(tmp_path: Path, shape, what: str) -> None:
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    check(tmp_path / "a.npy", rf"is a {what} array")


def test_empty_array_stack(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((0, 8, 8), np.float32))
    check(tmp_path / "a.npy", r"empty stack \(0 images\)")


def test_object_and_complex_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    check(tmp_path / "o.npy", r"holds Python objects")
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 4), np.complex64))
    check(tmp_path / "c.npy", r"unsupported pixel type complex64")


def test_npz_several_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", labels=np.zeros(3), particles=np.zeros((3, 4, 4)))
    check(
        tmp_path / "a.npz",
        r"holds several arrays and none is called 'images' \(keys: labels, particles\)",
    )


def test_npz_garbage(tmp_path: Path) -> None:
    (tmp_path / "a.npz").write_bytes(b"PK-not-really")
    check(tmp_path / "a.npz", r"not a valid \.npz file")


def test_truncated_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), np.float32))
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(raw[:-10])
    check(tmp_path / "a.npy", r"truncated \.npy file")


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "b.png")
    check(tmp_path, r"mixed image sizes: a\.png is 8x8 but b\.png is 8x9")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    check(tmp_path, r"folder holds no PNG or JPEG images")


def test_not_a_tiff(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"\x00" * 100)
    check(tmp_path / "a.tif", r"not a readable TIFF file")


def test_nan_pixels_reported_on_read(tmp_path: Path) -> None:
    data = np.zeros((5, 4, 4), np.float32)
    data[3, 1, 1] = np.nan
    data[4, 0, 0] = np.inf
    np.save(tmp_path / "a.npy", data)
    stack = read_stack(tmp_path / "a.npy")  # opening does not look at pixel values
    stack.read_batch([0, 1, 2])
    with pytest.raises(StackError, match=r"a\.npy: image 4 contains NaN or infinite pixel"):
        stack.read_batch([0, 4, 3])
    with pytest.raises(StackError, match=r"image 3 contains NaN"):
        stack.read_batch(range(5))


def test_index_out_of_range(small_mrcs) -> None:
    stack = read_stack(small_mrcs[0])
    with pytest.raises(StackError, match=r"small\.mrcs: image index 6 out of range for 6 images"):
        stack.read_batch([0, 6])
    with pytest.raises(StackError, match="out of range"):
        stack.subset([-7])


def test_datadir_must_exist(tmp_path: Path, small_mrcs) -> None:
    _star(tmp_path / "p.star", ["1@small.mrcs"])
    with pytest.raises(StackError, match="datadir is not a folder"):
        read_stack(tmp_path / "p.star", datadir=tmp_path / "nope")


def test_file_truncated_after_opening(tmp_path: Path, small_mrcs) -> None:
    path, _ = small_mrcs
    stack = read_stack(path)
    with open(path, "r+b") as f:
        f.truncate(1024 + 16 * 16 * 4 * 2)
    stack.read_batch([0, 1])
    with pytest.raises(StackError, match=r"small\.mrcs: file ended while reading image 4"):
        stack.read_batch([4])
