"""Exploring a trained model's latent space: clusters, pose-aligned averages, FRC.

* :func:`cluster_latents` groups particles by ``z`` (k-means or a Gaussian mixture).
* :func:`aligned_average` averages the *input* particles of a selection after undoing each
  particle's inferred pose, so a state is backed by data, not only by the decoder's picture.
  With a CTF per particle it is a Wiener-filtered average (below); half-set averages give a
  Fourier ring correlation (:func:`fourier_ring_correlation`) and the FRC = 0.143 resolution.

CTF-corrected averages. The CTF acts on each particle in its own image frame, and an
astigmatic CTF does not commute with rotation, so the particles cannot be rotated first and
corrected afterwards. Each particle ``i`` is corrected in its own frame, ``conj(C_i) X_i``,
then that numerator is un-rotated and un-shifted like the image, and ``|C_i|^2`` is rotated
by the same angle (a rotation in real space rotates the spectrum; a shift changes only its
phase). The average is ``sum_i R_i[conj(C_i) X_i] / (sum_i R_i[|C_i|^2] + 1 / SNR)``,
divided once at the end, in the aligned frame.

Pose convention (docs/conventions.md): ``theta`` radians counter-clockwise on screen and
``(dx, dy)`` pixels from the image centre, x right, y down — the POSES.csv columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.coords import align_images, pixels_to_shift, shift_from_centre
from napari_spatial_vae.core.data import gather, stack_image_shape
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.infer import render_templates

__all__ = [
    "FRC_THRESHOLD",
    "AverageResult",
    "align_particles",
    "aligned_average",
    "cluster_latents",
    "fourier_ring_correlation",
    "frc_resolution",
    "render_latents",
]

#: Half-set FRC threshold for the resolution estimate (Rosenthal & Henderson 2003).
FRC_THRESHOLD = 0.143
CLUSTER_METHODS = ("kmeans", "gmm")


# ---------------------------------------------------------------------------- clusters


def cluster_latents(z: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster particles by their latent values.

    Parameters
    ----------
    z
        ``(N, K)`` latent means (``K >= 1``).
    k
        Number of clusters, ``1 <= k <= N``.
    method
        ``"kmeans"`` or ``"gmm"`` (full-covariance Gaussian mixture).
    seed
        Same seed, same clusters.

    Returns
    -------
    np.ndarray
        ``(N,)`` int64 labels ``0 .. k-1``, numbered by their centre's ``z1`` ascending so
        the order follows the first latent (and does not depend on the solver's numbering).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[1] == 0:
        raise DataError(f"clustering needs latent values (N, K) with K >= 1, got {z.shape}")
    if not np.isfinite(z).all():
        raise DataError("the latent values contain NaN or infinite numbers")
    if not 1 <= k <= len(z):
        raise DataError(f"k must be between 1 and the number of particles ({len(z)}), got {k}")
    if method not in CLUSTER_METHODS:
        raise DataError(f"unknown clustering method {method!r}; use kmeans or gmm")
    # scikit-learn is numpy-only; imported here so the core loads fast without using it
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    else:
        labels = GaussianMixture(n_components=k, n_init=3, random_state=seed).fit(z).predict(z)
    present = np.unique(labels)
    centres = np.array([z[labels == c, 0].mean() for c in present])
    renumber = np.empty(labels.max() + 1, dtype=np.int64)
    renumber[present[np.argsort(centres, kind="stable")]] = np.arange(len(present))
    return renumber[labels]


# ---------------------------------------------------------------------------- alignment


def _pose_tensors(
    theta: np.ndarray, dx: np.ndarray, dy: np.ndarray, height: int, width: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """POSES.csv poses -> ``(theta (B,), shift (B, 2))`` as :func:`align_images` takes them."""
    theta_t = torch.as_tensor(np.asarray(theta, dtype=np.float32), device=device)
    centre_px = torch.as_tensor(
        np.stack([np.asarray(dx), np.asarray(dy)], axis=1).astype(np.float32), device=device
    )
    return theta_t, shift_from_centre(theta_t, pixels_to_shift(centre_px, height, width))


def align_particles(
    images: torch.Tensor, theta: np.ndarray, dx: np.ndarray, dy: np.ndarray
) -> torch.Tensor:
    """Rotate and shift particles back by their poses (the template frame).

    Parameters
    ----------
    images
        ``(B, C, H, W)``.
    theta, dx, dy
        ``(B,)`` poses in the POSES.csv convention (radians; pixels, x right, y down).

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)``, the same resampling as ``spatial-vae infer --aligned``.
    """
    _, _, height, width = images.shape
    theta_t, shift = _pose_tensors(theta, dx, dy, height, width, images.device)
    return align_images(images, theta_t, shift)


def _full_spectrum(half: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, H, W//2+1)`` rfft2-grid values of a real, centro-symmetric function -> the
    ``(B, H, W)`` fft2 grid (``value(-k) = value(k)`` fills the missing columns)."""
    height = half.shape[-2]
    rows = (-torch.arange(height, device=half.device)) % height
    cols = (-torch.arange(width, device=half.device)) % width
    full = half.new_empty(*half.shape[:-1], width)
    full[..., : half.shape[-1]] = half
    missing = torch.arange(half.shape[-1], width, device=half.device)
    full[..., missing] = half[..., rows, :][..., cols[missing]]
    return full


def _rotate_spectrum(power: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate ``(B, H, W)`` centred (fftshifted) spectra by each particle's un-rotation.

    Rotating an image by ``theta`` rotates its spectrum by ``theta`` about the zero
    frequency, which sits at pixel ``(H // 2, W // 2)`` after fftshift; :func:`align_images`
    turns about the geometric centre, so a shift makes up the half pixel of even sizes.
    """
    _, height, width = power.shape
    # zero frequency minus the geometric centre, in coordinate units (x, y)
    offset_x = (width // 2 - (width - 1) / 2) * 2 / max(width - 1, 1)
    offset_y = (height // 2 - (height - 1) / 2) * 2 / max(height - 1, 1)
    offset = power.new_tensor([offset_x, offset_y])
    c0 = offset.expand(len(theta), 2)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # shift = c0 - c0 @ R(theta), R = [[cos, sin], [-sin, cos]]
    c0_r = torch.stack([c0[:, 0] * cos - c0[:, 1] * sin, c0[:, 0] * sin + c0[:, 1] * cos], 1)
    return align_images(power[:, None], theta, c0 - c0_r)[:, 0]


# ---------------------------------------------------------------------------- averages


@dataclass
class AverageResult:
    """A pose-aligned average and its half-set resolution estimate.

    Attributes
    ----------
    average
        ``(H, W)`` (or ``(H, W, C)``) float32 average of all selected particles.
    halves
        ``(2, H, W)`` (or ``(2, H, W, C)``) averages of the even and odd positions of the
        selection.
    count
        Number of particles averaged.
    frequencies, frc
        ``(R,)`` ring frequencies (cycles per pixel) and the half-set FRC there.
    resolution_px
        FRC = 0.143 resolution in pixels (``pixel_size * resolution_px`` Å); the Nyquist
        limit 2.0 when the FRC never drops below the threshold; inf with fewer than two
        particles.
    ctf_corrected
        Whether the average is Wiener-filtered with per-particle CTFs.
    """

    average: np.ndarray
    halves: np.ndarray
    count: int
    frequencies: np.ndarray
    frc: np.ndarray
    resolution_px: float
    ctf_corrected: bool

    def resolution(self, pixel_size: float | None) -> str:
        """The resolution as text: ``"7.4 Å"`` (or ``"3.1 px"`` without a pixel size)."""
        if not np.isfinite(self.resolution_px):
            return "n/a"
        if pixel_size:
            return f"{self.resolution_px * pixel_size:.3g} Å"
        return f"{self.resolution_px:.3g} px"


class _HalfSums:
    """Running numerator (and CTF denominator) sums of one half-set, in the aligned frame."""

    def __init__(self) -> None:
        self.numerator: torch.Tensor | None = None  # (C, H, W) real space
        self.denominator: torch.Tensor | None = None  # (H, W) centred |CTF|^2 spectrum
        self.count = 0

    def add(self, numerator: torch.Tensor, denominator: torch.Tensor | None) -> None:
        # float32 per particle (fast), float64 sums (a million particles lose no digits)
        total = numerator.sum(0, dtype=torch.float64)
        self.numerator = total if self.numerator is None else self.numerator + total
        if denominator is not None:
            total_d = denominator.sum(0, dtype=torch.float64)
            self.denominator = total_d if self.denominator is None else self.denominator + total_d
        self.count += len(numerator)

    @classmethod
    def merge(cls, parts: tuple[_HalfSums, ...]) -> _HalfSums:
        """The sums of all parts together."""
        out = cls()
        for part in parts:
            if part.numerator is not None:
                out.numerator = (
                    part.numerator if out.numerator is None else out.numerator + part.numerator
                )
            if part.denominator is not None:
                out.denominator = (
                    part.denominator
                    if out.denominator is None
                    else out.denominator + part.denominator
                )
            out.count += part.count
        return out

    def image(self, wiener_constant: float, shape: tuple[int, int, int]) -> torch.Tensor:
        """``(C, H, W)`` average (zeros when empty)."""
        if self.numerator is None or self.count == 0:
            return torch.zeros(shape, dtype=torch.float64)
        if self.denominator is None:
            return self.numerator / self.count
        return _wiener_divide(self.numerator, self.denominator, wiener_constant)


def _wiener_divide(
    numerator: torch.Tensor, denominator: torch.Tensor, wiener_constant: float
) -> torch.Tensor:
    """``irfft2(rfft2(numerator) / (denominator + constant))`` inside the Nyquist circle.

    Parameters
    ----------
    numerator
        ``(C, H, W)`` summed, aligned ``conj(CTF) * X`` in real space.
    denominator
        ``(H, W)`` summed, aligned ``|CTF|^2`` on the centred (fftshifted) grid.
    """
    _, height, width = numerator.shape
    power = torch.fft.ifftshift(denominator, dim=(-2, -1))[..., : width // 2 + 1]
    ky = torch.fft.fftfreq(height, dtype=numerator.dtype, device=numerator.device)[:, None]
    kx = torch.fft.rfftfreq(width, dtype=numerator.dtype, device=numerator.device)[None, :]
    # rotation carries the measured square's corners outside it: keep the circle only
    inside = (kx**2 + ky**2) <= 0.25
    spectrum = torch.fft.rfft2(numerator) / (power + wiener_constant) * inside
    return torch.fft.irfft2(spectrum, s=(height, width))


def _rows_of(ctf: Any, chosen: np.ndarray) -> torch.Tensor:
    """Rows ``chosen`` of a numpy, memory-mapped or torch CTF array, as a tensor."""
    if isinstance(ctf, torch.Tensor):
        return ctf[torch.as_tensor(chosen, device=ctf.device)]
    return torch.as_tensor(np.asarray(ctf[chosen]))


def _batches(indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


def aligned_average(
    stack: Any,
    theta: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    indices: np.ndarray | None = None,
    ctf: Any = None,
    wiener_constant: float = 1.0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> AverageResult:
    """Average the input particles of a selection in the template frame.

    Parameters
    ----------
    stack
        Array-like ``(N, H, W)`` or ``(N, H, W, C)`` (numpy array or a lazy io stack).
    theta, dx, dy
        ``(N,)`` inferred poses of every particle of the stack (POSES.csv convention).
    indices
        Particles to average (0-based, into the stack); None for all.
    ctf
        Optional CTF of every particle of the stack on the rfft2 grid, ``(N, H, W//2+1)``
        (rows in ``numpy.fft.fftfreq`` order, columns in ``rfftfreq`` order), numpy or torch
        (a memory-mapped array is read batch by batch). Given, the average is
        Wiener-filtered: ``sum R[conj(C) X] / (sum R[|C|^2] + wiener_constant)``.
    wiener_constant
        ``1 / SNR`` added to the summed ``|CTF|^2`` (guards the CTF zeros).
    batch_size
        Particles read and resampled at a time; bounds memory.
    device
        Where the resampling runs.

    Returns
    -------
    AverageResult
    """
    image_shape = stack_image_shape(stack)
    channels, height, width = image_shape
    n = len(stack)
    theta, dx, dy = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (theta, dx, dy))
    if not len(theta) == len(dx) == len(dy) == n:
        raise DataError(f"{len(theta)} poses for {n} particles")
    indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if len(indices) == 0:
        raise DataError("no particles selected")
    if indices.min() < 0 or indices.max() >= n:
        raise DataError(f"particle indices outside 0..{n - 1}")
    if ctf is not None:
        if channels != 1:
            raise DataError("CTF correction needs single-channel images")
        if tuple(ctf.shape) != (n, height, width // 2 + 1):
            raise DataError(
                f"the CTF must be (N, H, W//2+1) = {(n, height, width // 2 + 1)},"
                f" got {tuple(ctf.shape)}"
            )
    device = torch.device(device)
    halves = (_HalfSums(), _HalfSums())
    with torch.no_grad():
        for part in _batches(np.arange(len(indices)), batch_size):
            chosen = indices[part]
            images = torch.from_numpy(gather(stack, chosen)).to(device)
            ctf_batch = None
            if ctf is not None:
                ctf_batch = _rows_of(ctf, chosen).to(device, torch.float32)
                # correct in the particle's own frame, before un-rotating it
                images = torch.fft.irfft2(
                    torch.fft.rfft2(images) * ctf_batch[:, None], s=(height, width)
                )
            theta_t, shift = _pose_tensors(
                theta[chosen], dx[chosen], dy[chosen], height, width, device
            )
            numerator = align_images(images, theta_t, shift)
            denominator = None
            if ctf_batch is not None:
                power = torch.fft.fftshift(_full_spectrum(ctf_batch**2, width), dim=(-2, -1))
                denominator = _rotate_spectrum(power, theta_t)
            # half-sets by position in the selection: even and odd, deterministic
            even = torch.as_tensor(part % 2 == 0, device=device)
            for half, mask in zip(halves, (even, ~even), strict=True):
                if bool(mask.any()):
                    half.add(numerator[mask], None if denominator is None else denominator[mask])
    shape = (channels, height, width)
    average = _HalfSums.merge(halves).image(wiener_constant, shape)
    half_images = [h.image(wiener_constant, shape) for h in halves]
    frequencies, frc = fourier_ring_correlation(
        half_images[0].mean(0).cpu().numpy(), half_images[1].mean(0).cpu().numpy()
    )
    resolution = frc_resolution(frequencies, frc) if len(indices) >= 2 else float("inf")
    return AverageResult(
        average=_image_layout(average),
        halves=np.stack([_image_layout(h) for h in half_images]),
        count=len(indices),
        frequencies=frequencies,
        frc=frc,
        resolution_px=resolution,
        ctf_corrected=ctf is not None,
    )


def _image_layout(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float64 tensor -> ``(H, W)`` or ``(H, W, C)`` float32 numpy."""
    array = image.cpu().numpy().astype(np.float32)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


# ---------------------------------------------------------------------------- FRC


def fourier_ring_correlation(
    first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two images, in rings one frequency pixel wide.

    Parameters
    ----------
    first, second
        ``(H, W)`` images.

    Returns
    -------
    frequencies
        ``(R,)`` ring centres in cycles per pixel, ``1/L .. 0.5`` (``L = max(H, W)``).
    frc
        ``(R,)`` correlation per ring (0 where a ring has no power).
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 2:
        raise DataError(
            f"FRC needs two (H, W) images of one shape, got {first.shape}, {second.shape}"
        )
    height, width = first.shape
    size = max(height, width)
    f1, f2 = np.fft.rfft2(first), np.fft.rfft2(second)
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.rfftfreq(width)[None, :]
    ring = np.rint(np.sqrt(kx**2 + ky**2) * size).astype(np.int64)
    # rfft2 stores half the plane: weight the columns that stand for two (k and -k)
    weight = np.full(f1.shape, 2.0)
    weight[:, 0] = 1.0
    if width % 2 == 0:
        weight[:, -1] = 1.0
    n_rings = size // 2 + 1
    keep = ring < n_rings

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring[keep], (values * weight)[keep], minlength=n_rings)

    cross = ring_sum((f1 * np.conj(f2)).real)
    power = np.sqrt(ring_sum(np.abs(f1) ** 2) * ring_sum(np.abs(f2) ** 2))
    frc = np.divide(cross, power, out=np.zeros(n_rings), where=power > 0)
    return np.arange(1, n_rings) / size, frc[1:]


def frc_resolution(
    frequencies: np.ndarray, frc: np.ndarray, threshold: float = FRC_THRESHOLD
) -> float:
    """Resolution (pixels) where the FRC first falls below ``threshold``.

    Interpolates linearly between the last ring above and the first below; returns the
    Nyquist limit (2 pixels) when it never falls below.
    """
    below = np.flatnonzero(frc < threshold)
    if len(below) == 0:
        return 2.0
    i = int(below[0])
    if i == 0:
        return float(1.0 / frequencies[0])
    f0, f1, c0, c1 = frequencies[i - 1], frequencies[i], frc[i - 1], frc[i]
    crossing = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return float(1.0 / crossing)


# ---------------------------------------------------------------------------- decoder


@torch.no_grad()
def render_latents(model: Any, z: np.ndarray, frame: Any = None) -> np.ndarray:
    """The generator's images for given latent values: at theta = 0, dx = 0, or in ``frame``.

    Parameters
    ----------
    model
        A trained :class:`~napari_spatial_vae.core.model.SpatialVAE`.
    z
        ``(B, K)`` latent values (``K`` = the model's z_dim).
    frame
        A :class:`~napari_spatial_vae.core.frame.PoseFrame`: each image in the frame that
        holds its painted part still (as the poses inferred with it); None: the model's own.

    Returns
    -------
    np.ndarray
        ``(B, H, W)`` (or ``(B, H, W, C)``) expected pixel values (standardised units when
        the model was trained on standardised images).
    """
    z_dim = model.config.z_dim
    values = np.asarray(z, dtype=np.float32).reshape(-1, z_dim)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        latents = torch.as_tensor(values, device=device) if z_dim else None
        return render_templates(model, latents, frame, batch_size=len(values))
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------- movies


def movie_frames(
    images: np.ndarray, min_size: int = 256, bounce: bool = True, gap: int = 2
) -> np.ndarray:
    """Greyscale 8-bit frames of a traversal or a series of averages.

    Parameters
    ----------
    images
        ``(T, H, W)`` one image per frame, or ``(K, T, H, W)`` (a latent traversal: the
        ``K`` latent axes side by side, walking their ``T`` steps together).
    min_size
        Frames are enlarged by a whole factor (nearest neighbour) until their height is at
        least this, so a 40-pixel particle is not a speck in a viewer.
    bounce
        Play forwards then backwards, so a looping movie does not jump.
    gap
        Pixels between panels.

    Returns
    -------
    np.ndarray
        ``(F, h, w)`` uint8, one intensity scale for all frames (0.5 .. 99.5 percentiles).
    """
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] == 0:
        raise DataError(f"movie frames need (T, H, W) or (K, T, H, W) images, got {array.shape}")
    panels, steps, height, width = array.shape
    low, high = np.percentile(array, [0.5, 99.5])
    if not high > low:
        high = low + 1.0
    scaled = np.clip((array - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    frames = np.zeros((steps, height, panels * width + (panels - 1) * gap), dtype=np.uint8)
    for k in range(panels):
        frames[:, :, k * (width + gap) : k * (width + gap) + width] = scaled[k]
    factor = max(1, -(-min_size // height))
    frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    if bounce and steps > 2:
        frames = np.concatenate([frames, frames[-2:0:-1]])
    return frames
