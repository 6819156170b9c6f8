"""The CTF against an independent float64 evaluation of the published formula (RELION)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_spatial_vae.core.ctf import (
    PARAMETER_NAMES,
    CtfBatches,
    CtfParameters,
    FrequencyGrid,
    apply_filter,
    check_parameters,
    crop_filter,
    evaluate_ctf,
)
from napari_spatial_vae.core.errors import DataError


def reference_ctf(sx, sy, du, dv, angle_deg, kv, cs_mm, w, phase_deg=0.0, bfactor=0.0, scale=1.0):
    """RELION's CTF::getCTF, written out from the paper formula (Mindell & Grigorieff 2003).

    RELION: deltaf = -(defocus_average + deviation cos 2(ang - azimuth)) with
    defocus_average = -(U + V) / 2, and CTF = -sin(K1 deltaf u^2 + K2 u^4 - K5 - K3).
    """
    volts = kv * 1000.0
    lam = 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))
    k1 = np.pi / 2.0 * 2.0 * lam
    k2 = np.pi / 2.0 * (cs_mm * 1e7) * lam**3
    k3 = np.arctan(w / np.sqrt(1.0 - w * w))
    k4 = -bfactor / 4.0
    k5 = np.radians(phase_deg)
    defocus_average = -(du + dv) * 0.5
    defocus_deviation = -(du - dv) * 0.5
    u2 = sx * sx + sy * sy
    ellipse = np.arctan2(sy, sx) - np.radians(angle_deg)
    deltaf = defocus_average + defocus_deviation * np.cos(2.0 * ellipse)
    argument = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
    return scale * -np.sin(argument) * np.exp(k4 * u2)


def one(values):
    return torch.tensor([values], dtype=torch.float64)


CASES = [
    # du, dv, angle, kv, cs, w, phase, bfactor, scale, pixel size
    (15301.1, 14916.4, 5.28, 300.0, 2.7, 0.07, 0.0, 0.0, 1.0, 1.31),
    (35000.0, 34700.0, -40.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0, 3.0),
    (5000.0, 4800.0, 120.0, 200.0, 2.0, 0.07, 90.0, 50.0, 0.8, 3.0),
    (20000.0, 21000.0, 75.0, 120.0, 0.01, 0.1, 30.0, 0.0, 1.0, 2.806),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_independent_formula_on_the_rfft_grid(case):
    du, dv, angle, kv, cs, w, phase, bfac, scale, psize = case
    height, width = 64, 48
    grid = FrequencyGrid(height, width)
    ctf = evaluate_ctf(
        grid,
        one(du),
        one(dv),
        one(angle),
        one(kv),
        one(cs),
        one(w),
        one(psize),
        one(phase),
        one(bfac),
        one(scale),
    )
    assert ctf.shape == (1, height, width // 2 + 1)
    assert ctf.dtype == torch.float32
    sy = np.fft.fftfreq(height)[:, None] / psize
    sx = np.fft.rfftfreq(width)[None, :] / psize
    expected = reference_ctf(sx, sy, du, dv, angle, kv, cs, w, phase, bfac, scale)
    assert np.abs(ctf[0].numpy() - expected).max() < 1e-5


def test_at_chosen_frequencies_in_float64():
    # arbitrary (s_x, s_y) pairs in 1/Å: evaluate through a 1x1 "grid" trick
    du, dv, angle, kv, cs, w = 25000.0, 24000.0, 33.0, 300.0, 2.7, 0.1
    for sx, sy in [(0.01, 0.0), (0.0, 0.02), (0.05, -0.03), (-0.1, 0.07), (0.16, 0.1)]:
        grid = FrequencyGrid(1, 1)
        grid.s2 = torch.tensor([[sx * sx + sy * sy]], dtype=torch.float64)
        grid.phi = torch.tensor([[math.atan2(sy, sx)]], dtype=torch.float64)
        ctf = evaluate_ctf(
            grid,
            one(du),
            one(dv),
            one(angle),
            one(kv),
            one(cs),
            one(w),
            one(1.0),
            dtype=torch.float64,
        )
        expected = reference_ctf(sx, sy, du, dv, angle, kv, cs, w)
        assert ctf.item() == pytest.approx(expected, abs=1e-12)


def test_relion_sign_and_amplitude_contrast_at_zero_frequency():
    grid = FrequencyGrid(32, 32)
    ctf = evaluate_ctf(
        grid, one(20000.0), one(20000.0), one(0.0), one(300.0), one(2.7), one(0.1), one(2.0)
    )
    # CTF(0) = sin(atan(w / sqrt(1 - w^2))) = w, positive; positive at low frequency
    assert ctf[0, 0, 0].item() == pytest.approx(0.1, abs=1e-6)
    assert ctf[0, 0, 1].item() > 0.1


def test_first_zero_at_its_analytic_frequency():
    # without Cs and amplitude contrast, sin(pi lambda df s^2) first vanishes at s^2 = 1/(lambda df)
    du = 20000.0
    lam = 12.2643247 / math.sqrt(300e3 * (1 + 300e3 * 0.978466e-6))
    s_zero = 1.0 / math.sqrt(lam * du)
    grid = FrequencyGrid(1, 1)
    for s, sign in [(s_zero * 0.999, 1.0), (s_zero * 1.001, -1.0)]:
        grid.s2 = torch.tensor([[s * s]], dtype=torch.float64)
        grid.phi = torch.zeros(1, 1, dtype=torch.float64)
        ctf = evaluate_ctf(
            grid,
            one(du),
            one(du),
            one(0.0),
            one(300.0),
            one(0.0),
            one(0.0),
            one(1.0),
            dtype=torch.float64,
        )
        assert math.copysign(1.0, ctf.item()) == sign
    grid.s2 = torch.tensor([[s_zero**2]], dtype=torch.float64)
    ctf = evaluate_ctf(
        grid,
        one(du),
        one(du),
        one(0.0),
        one(300.0),
        one(0.0),
        one(0.0),
        one(1.0),
        dtype=torch.float64,
    )
    assert abs(ctf.item()) < 1e-9


def test_astigmatism_direction_defocus_u_along_the_angle():
    # along phi = angle the CTF is that of defocus U; perpendicular, that of defocus V
    du, dv, angle = 30000.0, 10000.0, 30.0
    grid = FrequencyGrid(1, 1)
    s = 0.03
    for phi_deg, defocus in [(angle, du), (angle + 90.0, dv), (angle + 180.0, du)]:
        grid.s2 = torch.tensor([[s * s]], dtype=torch.float64)
        grid.phi = torch.tensor([[math.radians(phi_deg)]], dtype=torch.float64)
        astig = evaluate_ctf(
            grid,
            one(du),
            one(dv),
            one(angle),
            one(300.0),
            one(2.7),
            one(0.1),
            one(1.0),
            dtype=torch.float64,
        )
        stig = evaluate_ctf(
            grid,
            one(defocus),
            one(defocus),
            one(0.0),
            one(300.0),
            one(2.7),
            one(0.1),
            one(1.0),
            dtype=torch.float64,
        )
        assert astig.item() == pytest.approx(stig.item(), abs=1e-12)


def test_grid_layout_x_is_columns_y_is_rows():
    # defocus U along x (angle 0): the first zero comes at a lower frequency along the row
    # (columns, s_x) than along the column (rows, s_y) when U > V
    grid = FrequencyGrid(64, 64)
    ctf = evaluate_ctf(
        grid, one(30000.0), one(10000.0), one(0.0), one(300.0), one(2.7), one(0.1), one(3.0)
    )[0]
    along_x = ctf[0, :].numpy()
    along_y = ctf[:33, 0].numpy()
    first_negative_x = int(np.argmax(along_x < 0))
    first_negative_y = int(np.argmax(along_y < 0))
    assert 0 < first_negative_x < first_negative_y


def test_apply_filter_is_a_batched_fourier_product():
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.normal(size=(3, 2, 16, 12)), dtype=torch.float32)
    transfer = torch.ones(3, 1, 16, 7)
    assert torch.allclose(apply_filter(images, transfer), images, atol=1e-5)
    transfer = torch.tensor(rng.normal(size=(3, 1, 16, 7)), dtype=torch.float32)
    out = apply_filter(images, transfer).numpy()
    expected = np.fft.irfft2(np.fft.rfft2(images.numpy()) * transfer.numpy(), s=(16, 12))
    assert np.abs(out - expected).max() < 1e-4


@pytest.mark.parametrize(("height", "width", "binning"), [(64, 48, 2), (42, 42, 2), (36, 36, 3)])
def test_cropped_filter_is_the_ctf_of_the_binned_image(height, width, binning):
    # coarse-to-fine: a b x b-binned image has b times the pixel size; its CTF evaluated on
    # its own grid must be the low-frequency corner of the full-size CTF (odd binned sizes too)
    def ctf_at(shape, pixel_size):
        args = [torch.tensor([v], dtype=torch.float64) for v in (21000.0, 19500.0, 35.0, 300.0)]
        rest = [torch.tensor([v], dtype=torch.float64) for v in (2.7, 0.1, pixel_size)]
        return evaluate_ctf(FrequencyGrid(*shape), *args, *rest)

    full = ctf_at((height, width), 1.5)
    binned = ctf_at((height // binning, width // binning), 1.5 * binning)
    cropped = crop_filter(full, width, binning)
    assert cropped.shape == binned.shape
    assert torch.abs(cropped - binned).max() < 1e-6
    assert crop_filter(full, width, 1) is full
    with pytest.raises(ValueError, match="cannot be binned"):
        crop_filter(full, width, 5)


def _params(n=4, **overrides):
    base = dict(
        defocus_u=20000.0,
        defocus_v=19000.0,
        defocus_angle=10.0,
        voltage=300.0,
        cs=2.7,
        amplitude_contrast=0.1,
        phase_shift=0.0,
        bfactor=0.0,
        scale=1.0,
        pixel_size=3.0,
    )
    table = {k: np.full(n, v) for k, v in base.items()}
    for key, (row, value) in overrides.items():
        table[key][row] = value
    return table


def test_batches_flip_and_premultiplied_modes():
    table = _params()
    raw = CtfBatches(CtfParameters.from_table(table), (16, 16), torch.device("cpu"))
    flipped = CtfBatches(
        CtfParameters.from_table(table, phase_flipped=True), (16, 16), torch.device("cpu")
    )
    squared = CtfBatches(
        CtfParameters.from_table(table, premultiplied=True), (16, 16), torch.device("cpu")
    )
    positions = torch.tensor([2, 0])
    ctf = raw.filters(positions)
    assert ctf.shape == (2, 16, 9)
    assert torch.allclose(flipped.filters(positions), ctf.abs())
    assert torch.allclose(squared.filters(positions), ctf**2)


def test_summary_line():
    table = _params(3)
    table["defocus_u"] = np.array([5000.0, 20000.0, 35300.0])
    table["defocus_v"] = np.array([5000.0, 19800.0, 35000.0])
    text = CtfParameters.from_table(table, source="particles.star").summary()
    assert text == "3 particles, defocus 0.5-3.5 µm, astigmatic, from particles.star"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"defocus_u": (2, -100.0)}, "particle row 3: negative defocus"),
        ({"amplitude_contrast": (1, 1.0)}, "particle row 2: amplitude contrast outside [0, 1)"),
        ({"pixel_size": (0, np.nan)}, "particle row 1: CTF pixel_size missing"),
        ({"voltage": (3, 0.0)}, "particle row 4: voltage must be positive"),
    ],
)
def test_non_physical_values_name_the_row(override, message):
    parameters = CtfParameters.from_table(_params(**override), source="x.star")
    with pytest.raises(DataError) as caught:
        check_parameters(parameters)
    assert str(caught.value).startswith("x.star: " + message)


def test_parameter_names_are_the_io_layers_columns():
    from napari_spatial_vae.io.ctf_params import CTF_COLUMNS

    assert tuple(CTF_COLUMNS) == PARAMETER_NAMES
