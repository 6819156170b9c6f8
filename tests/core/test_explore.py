"""Clusters, pose-aligned (CTF-Wiener) averages and FRC against simulated truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.explore import (
    _full_spectrum,
    align_particles,
    aligned_average,
    cluster_latents,
    fourier_ring_correlation,
    frc_resolution,
    movie_frames,
)
from napari_spatial_vae.core.simulate import render_particles, simulate_particles

SIZE = 40


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def template(conformation: float) -> np.ndarray:
    """The clean, pose-free projection of one conformation."""
    return render_particles(
        np.array([conformation]), np.zeros(1), np.zeros((1, 2)), np.zeros(1), SIZE
    )[0]


@pytest.fixture(scope="module")
def particles():
    return simulate_particles(1500, size=SIZE, snr=0.5, max_shift_px=2.0, seed=11)


def narrow_slice(particles, centre: float = 0.5, half_width: float = 0.03) -> np.ndarray:
    return np.flatnonzero(np.abs(particles.conformation - centre) < half_width)


def isotropic_or_astigmatic_ctf(n: int, seed: int, astigmatism: float) -> np.ndarray:
    """``(n, H, W//2+1)`` CTFs on the rfft2 grid, a simple weak-phase formula.

    ``-(sqrt(1 - w^2) sin(chi) + w cos(chi))``, ``chi = pi * df(phi) * k^2`` (k in cycles per
    pixel, df in pixels^2 units), ``w = 0.1`` amplitude contrast, defocus varying per particle
    and (``astigmatism > 0``) with the direction ``phi`` of ``k``.
    """
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(SIZE)[:, None]
    kx = np.fft.rfftfreq(SIZE)[None, :]
    k2 = kx**2 + ky**2
    phi = np.arctan2(ky, kx)
    mean_df = rng.uniform(500.0, 1100.0, n)[:, None, None]
    axis = rng.uniform(0, np.pi, n)[:, None, None]
    df = mean_df * (1 + astigmatism * np.cos(2 * (phi - axis)))
    chi = np.pi * df * k2
    w = 0.1
    return (-(np.sqrt(1 - w**2) * np.sin(chi) + w * np.cos(chi))).astype(np.float32)


def apply_ctf(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    return np.fft.irfft2(np.fft.rfft2(images) * ctf, s=images.shape[-2:]).astype(np.float32)


def test_aligning_noise_free_particles_by_their_true_pose_gives_the_template():
    sim = simulate_particles(8, size=SIZE, snr=None, max_shift_px=2.0, seed=4)
    aligned = align_particles(
        torch.from_numpy(sim.clean)[:, None], sim.theta, sim.shift_px[:, 0], sim.shift_px[:, 1]
    )[:, 0].numpy()
    for image, conformation in zip(aligned, sim.conformation, strict=True):
        assert correlation(image, template(conformation)) > 0.98


def test_average_of_a_narrow_slice_matches_its_clean_template(particles):
    rows = narrow_slice(particles)
    result = aligned_average(
        particles.images, particles.theta, particles.shift_px[:, 0], particles.shift_px[:, 1],
        rows,
    )  # fmt: skip
    assert result.count == len(rows) > 50
    assert correlation(result.average, template(0.5)) >= 0.97
    assert not result.ctf_corrected
    # a wrong conformation's template fits worse: the average is specific
    assert correlation(result.average, template(0.0)) < correlation(result.average, template(0.5))
    assert 2.0 <= result.resolution_px < SIZE


@pytest.mark.parametrize("astigmatism", [0.0, 0.3])
def test_ctf_wiener_average_recovers_the_template_where_a_plain_mean_cannot(particles, astigmatism):
    ctf = isotropic_or_astigmatic_ctf(len(particles.images), seed=5, astigmatism=astigmatism)
    rng = np.random.default_rng(6)
    observed = apply_ctf(particles.clean, ctf)
    observed += rng.normal(0, np.sqrt(observed.var() / 0.5), observed.shape).astype(np.float32)
    rows = narrow_slice(particles)
    poses = (particles.theta, particles.shift_px[:, 0], particles.shift_px[:, 1])
    plain = aligned_average(observed, *poses, rows)
    wiener = aligned_average(observed, *poses, rows, ctf=ctf)
    wiener_torch = aligned_average(observed, *poses, rows, ctf=torch.from_numpy(ctf))
    truth = template(0.5)
    assert correlation(plain.average, truth) < 0.95
    assert correlation(wiener.average, truth) >= 0.95
    assert wiener.ctf_corrected
    np.testing.assert_allclose(wiener_torch.average, wiener.average, atol=1e-5)


def test_ctf_of_the_wrong_shape_is_refused(particles):
    with pytest.raises(DataError, match="W//2"):
        aligned_average(
            particles.images[:4], np.zeros(4), np.zeros(4), np.zeros(4),
            ctf=np.ones((4, SIZE, SIZE)),
        )  # fmt: skip


def test_bad_selections_are_refused(particles):
    n = len(particles.images)
    zeros = np.zeros(n)
    with pytest.raises(DataError, match="no particles"):
        aligned_average(particles.images, zeros, zeros, zeros, np.array([], dtype=int))
    with pytest.raises(DataError, match="outside"):
        aligned_average(particles.images, zeros, zeros, zeros, np.array([n]))
    with pytest.raises(DataError, match="poses for"):
        aligned_average(particles.images, zeros[:-1], zeros[:-1], zeros[:-1])


def test_full_spectrum_restores_the_fft2_grid_of_a_real_image():
    image = np.random.default_rng(0).normal(size=(3, 12, 10))
    power_half = torch.from_numpy(np.abs(np.fft.rfft2(image)) ** 2)
    full = _full_spectrum(power_half, 10).numpy()
    np.testing.assert_allclose(full, np.abs(np.fft.fft2(image)) ** 2, rtol=1e-10)


def test_frc_is_one_for_identical_images_and_low_for_independent_noise():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(32, 32))
    freqs, frc = fourier_ring_correlation(image, image)
    np.testing.assert_allclose(frc, 1.0, atol=1e-12)
    assert freqs[0] == pytest.approx(1 / 32) and freqs[-1] == pytest.approx(0.5)
    assert frc_resolution(freqs, frc) == 2.0
    _, noise = fourier_ring_correlation(rng.normal(size=(32, 32)), rng.normal(size=(32, 32)))
    assert np.abs(noise[4:]).mean() < 0.2


def test_frc_resolution_interpolates_the_crossing():
    freqs = np.array([0.1, 0.2, 0.3])
    frc = np.array([0.9, 0.5, 0.0])
    # 0.143 lies 0.357 / 0.5 of the way from 0.2 to 0.3
    assert frc_resolution(freqs, frc) == pytest.approx(1 / (0.2 + 0.1 * 0.357 / 0.5))


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_clusters_find_separated_groups_numbered_along_z1(method):
    rng = np.random.default_rng(2)
    z = np.concatenate(
        [rng.normal([3, 0], 0.3, (40, 2)), rng.normal([-3, 0], 0.3, (30, 2)),
         rng.normal([0, 3], 0.3, (20, 2))]
    )  # fmt: skip
    labels = cluster_latents(z, 3, method, seed=0)
    truth = np.repeat([2, 0, 1], [40, 30, 20])  # numbered by centre z1: -3, 0, 3
    np.testing.assert_array_equal(labels, truth)
    np.testing.assert_array_equal(cluster_latents(z, 3, method, seed=0), labels)


def test_bad_cluster_requests_are_refused():
    z = np.zeros((5, 1))
    with pytest.raises(DataError, match="between 1"):
        cluster_latents(z, 6)
    with pytest.raises(DataError, match="unknown"):
        cluster_latents(z, 2, method="hdbscan")
    with pytest.raises(DataError, match="K >= 1"):
        cluster_latents(np.zeros((5, 0)), 2)


def test_movie_frames_put_latent_axes_side_by_side_and_bounce():
    traversal = np.random.default_rng(3).normal(size=(2, 5, 20, 20))
    frames = movie_frames(traversal, min_size=60, gap=2)
    assert frames.dtype == np.uint8
    assert frames.shape == (8, 60, 3 * (2 * 20 + 2))  # 5 forward + 3 back, enlarged 3x
    np.testing.assert_array_equal(frames[5], frames[3])
