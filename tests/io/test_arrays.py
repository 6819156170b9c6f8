"""npy / npz / TIFF / PNG-JPEG inputs and can_read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_spatial_vae.io import SUPPORTED_SUFFIXES, can_read, read_stack
from napari_spatial_vae.io.sources import FileSource, LazyArraySource, TiffPageSource

DATA = np.random.default_rng(0).normal(size=(5, 12, 10)).astype(np.float32)


def test_npy_lazy_in_place(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", DATA)
    stack = read_stack(tmp_path / "a.npy")
    assert isinstance(stack.images, FileSource)
    assert stack.shape == (5, 12, 10) and stack.pixel_size is None and stack.metadata is None
    np.testing.assert_array_equal(stack.read_batch([3, 1]), DATA[[3, 1]])


def test_npy_single_image_and_rgb(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", DATA[0].astype(np.uint8))
    assert read_stack(tmp_path / "one.npy").shape == (1, 12, 10)
    rgb = np.random.default_rng(1).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    stack = read_stack(tmp_path / "rgb.npy")
    assert stack.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(stack.read_batch([2]), rgb[[2]].astype(np.float32))


def test_npy_fortran_order_and_big_endian(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.asfortranarray(DATA))
    np.testing.assert_array_equal(read_stack(tmp_path / "f.npy").read_batch([4, 0]), DATA[[4, 0]])
    np.save(tmp_path / "be.npy", DATA.astype(">f4"))
    np.testing.assert_array_equal(read_stack(tmp_path / "be.npy").read_batch([2]), DATA[[2]])


def test_npz_images_key_stored_in_place(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", labels=np.arange(5), images=DATA)
    stack = read_stack(tmp_path / "a.npz")
    assert isinstance(stack.images, FileSource)
    np.testing.assert_array_equal(stack.read_batch([4, 0]), DATA[[4, 0]])


def test_npz_single_array_compressed(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "a.npz", particles=DATA)
    stack = read_stack(tmp_path / "a.npz")
    assert isinstance(stack.images, LazyArraySource)
    assert stack.shape == DATA.shape
    np.testing.assert_array_equal(stack.read_batch([1, 2]), DATA[[1, 2]])


def test_tiff_contiguous_and_compressed(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", DATA)
    stack = read_stack(tmp_path / "plain.tif")
    assert isinstance(stack.images, FileSource)
    np.testing.assert_array_equal(stack.read_batch([4, 2]), DATA[[4, 2]])

    tifffile.imwrite(tmp_path / "zip.tiff", DATA, compression="zlib")
    stack = read_stack(tmp_path / "zip.tiff")
    assert isinstance(stack.images, TiffPageSource)
    np.testing.assert_array_equal(stack.read_batch([4, 2]), DATA[[4, 2]])


def test_tiff_single_rgb_image(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    stack = read_stack(tmp_path / "rgb.tif")
    assert stack.shape == (1, 8, 9, 3)
    np.testing.assert_array_equal(stack.read_batch([0])[0], rgb)


def test_png_folder_natural_order_grey(tmp_path: Path) -> None:
    images = (DATA * 40 + 128).clip(0, 255).astype(np.uint8)
    for i, name in enumerate(["p1.png", "p2.png", "p10.png", "p3.png", "p4.png"]):
        Image.fromarray(images[i]).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("ignored")
    stack = read_stack(tmp_path)
    assert stack.shape == (5, 12, 10)
    assert stack.metadata["file_name"].tolist() == [
        "p1.png",
        "p2.png",
        "p3.png",
        "p4.png",
        "p10.png",
    ]
    np.testing.assert_array_equal(stack.read_batch([0, 4]), images[[0, 2]].astype(np.float32))


def test_folder_with_colour_keeps_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "b.png")  # grey is promoted
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    stack = read_stack(tmp_path)
    assert stack.shape == (3, 6, 7, 3)
    batch = stack.read_batch([0, 1])
    np.testing.assert_array_equal(batch[0], rgb)
    np.testing.assert_array_equal(batch[1][..., 2], rgb[..., 0])


def test_single_png_and_16_bit(tmp_path: Path) -> None:
    im16 = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
    Image.fromarray(im16).save(tmp_path / "deep.png")
    stack = read_stack(tmp_path / "deep.png")
    assert stack.shape == (1, 12, 10)
    np.testing.assert_array_equal(stack.read_batch([0])[0], im16.astype(np.float32))


def test_can_read(tmp_path: Path) -> None:
    for suffix in SUPPORTED_SUFFIXES:
        assert can_read(f"x{suffix}")
        assert can_read(f"X{suffix.upper()}")
    assert not can_read("x.txt")
    assert not can_read(tmp_path)  # empty folder
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "a.png")
    assert can_read(tmp_path)
    assert can_read(["a.mrcs", "b.star"])
    assert not can_read(["a.mrcs", "b.doc"])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16, np.float64])
def test_dtypes_become_float32(tmp_path: Path, dtype) -> None:
    np.save(tmp_path / "a.npy", (DATA * 10).astype(dtype))
    batch = read_stack(tmp_path / "a.npy").read_batch([0])
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, (DATA[[0]] * 10).astype(dtype).astype(np.float32))
