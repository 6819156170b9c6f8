"""Box extraction: crops centred on rounded coordinates, Fourier cropping, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spatial_vae.core.extract import (
    background_mask,
    box_corners,
    boxes_inside,
    extract_boxes,
    fourier_crop,
    normalise_background,
)


@pytest.fixture
def micrograph() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(60, 80)).astype(np.float32)


def test_the_box_is_centred_on_the_rounded_coordinate(micrograph):
    # x = column 20.4 -> 20, y = row 30.6 -> 31; an 16 px box starts 8 before
    boxes = extract_boxes(micrograph, np.array([20.4]), np.array([30.6]), 16, normalise=False)
    np.testing.assert_array_equal(boxes[0], micrograph[23:39, 12:28])
    assert boxes[0][8, 8] == micrograph[31, 20]


def test_halves_round_up_as_relion_does():
    rows, cols = box_corners(np.array([10.5, 11.5, 3.49]), np.array([0.5, 7.5, 2.5]), 4)
    np.testing.assert_array_equal(cols, [9, 10, 1])
    np.testing.assert_array_equal(rows, [-1, 6, 1])


def test_boxes_inside_marks_boxes_that_leave_the_micrograph():
    rows = np.array([0, -1, 44, 45])
    cols = np.array([0, 5, 64, 64])
    np.testing.assert_array_equal(boxes_inside(rows, cols, 16, (60, 80)), [1, 0, 1, 0])


def test_boxes_leaving_the_micrograph_are_refused(micrograph):
    with pytest.raises(ValueError, match="leave"):
        extract_boxes(micrograph, np.array([2.0]), np.array([30.0]), 16)


def test_fourier_crop_keeps_a_band_limited_image_and_its_mean():
    box, size = 32, 16
    grid = np.arange(box)
    # two cycles across the box: well below the new Nyquist frequency
    wave = 3.0 + np.cos(2 * np.pi * 2 * grid / box)[None, :] * np.ones((box, 1))
    small = fourier_crop(wave[None].astype(np.float32), size)[0]
    coarse = 3.0 + np.cos(2 * np.pi * 2 * np.arange(size) / size)[None, :] * np.ones((size, 1))
    np.testing.assert_allclose(small, coarse, atol=1e-5)


def test_fourier_crop_to_the_same_size_changes_nothing(micrograph):
    images = micrograph[None, :32, :32]
    np.testing.assert_array_equal(fourier_crop(images, 32), images)


def test_fourier_crop_refuses_odd_or_larger_sizes(micrograph):
    with pytest.raises(ValueError):
        fourier_crop(micrograph[None, :32, :32], 15)
    with pytest.raises(ValueError):
        fourier_crop(micrograph[None, :32, :32], 64)


def test_background_outside_75_percent_has_mean_0_and_std_1(micrograph):
    images = micrograph[None, :32, :32] * 5 + 2
    out = normalise_background(images)
    yy, xx = np.mgrid[:32, :32] - 16
    background = np.hypot(yy, xx) > 0.75 * 32 / 2
    np.testing.assert_array_equal(background_mask(32), background)
    assert abs(out[0][background].mean()) < 1e-5
    assert abs(out[0][background].std() - 1) < 1e-5


def test_invert_flips_the_sign(micrograph):
    x, y = np.array([40.0, 30.0]), np.array([20.0, 40.0])
    plain = extract_boxes(micrograph, x, y, 16, 8)
    inverted = extract_boxes(micrograph, x, y, 16, 8, invert=True)
    np.testing.assert_array_equal(inverted, -plain)
