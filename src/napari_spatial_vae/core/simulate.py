"""Synthetic particle stacks with ground truth.

A small 3-D object made of Gaussian blobs in two domains; the second domain swings about a
hinge by a continuous *conformation* value (the paper's 5HDB experiment in spirit). Each
particle is a projection after an optional small out-of-plane tilt, a uniform random
in-plane rotation and a small shift, plus Gaussian noise at a chosen SNR. The same generator
makes the napari sample data, the test fixtures and the benchmarks.

The ground-truth pose follows the package's convention (see :mod:`.coords`): the particle is
the un-rotated projection rotated counter-clockwise on screen by ``theta`` and centred at
``shift_px`` (x right, y down), so a perfect model infers exactly ``theta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_spatial_vae.core.ctf import (
    PARAMETER_NAMES,
    CtfParameters,
    FrequencyGrid,
    apply_filter,
    evaluate_ctf_rows,
)

# Blob centres in units of the image half-width. Domain A is an L-shaped body, domain B an arm
# hinged at HINGE that swings in the x-y plane; asymmetric so every rotation is identifiable.
_BODY = np.array(
    [
        [-0.45, -0.1, 0.0],
        [-0.25, -0.1, 0.05],
        [-0.05, -0.1, 0.0],
        [-0.45, 0.12, 0.0],
        [-0.45, 0.32, -0.05],
    ]
)
_ARM = np.array([[0.15, -0.1, 0.0], [0.33, -0.1, 0.0], [0.5, -0.1, 0.05]])
_HINGE = np.array([0.0, -0.1, 0.0])
_BODY_AMPLITUDE = np.array([1.0, 1.0, 1.0, 0.8, 0.8])
_ARM_AMPLITUDE = np.array([0.9, 0.9, 1.2])


@dataclass
class SimulatedParticles:
    """A synthetic stack and its ground truth.

    Attributes
    ----------
    images
        ``(N, H, W)`` float32 noisy particles.
    clean
        ``(N, H, W)`` float32 noise-free projections.
    conformation
        ``(N,)`` the continuous hinge coordinate in 0..1.
    theta
        ``(N,)`` true in-plane rotation (radians, package convention).
    shift_px
        ``(N, 2)`` true particle centre offset (x, y) in pixels, y down.
    tilt
        ``(N,)`` out-of-plane tilt about the x axis, radians.
    ctf
        Each particle's CTF when simulated with one (``clean`` is then CTF-filtered), else None.
    """

    images: np.ndarray
    clean: np.ndarray
    conformation: np.ndarray
    theta: np.ndarray
    shift_px: np.ndarray
    tilt: np.ndarray
    ctf: CtfParameters | None = None


@dataclass
class CtfSimulation:
    """How to draw the simulated microscope's CTF (RELION units).

    Attributes
    ----------
    defocus_um
        ``(low, high)`` range of the mean defocus in µm (uniform).
    astigmatism
        Largest ``|U - V|`` in Å (uniform in ``0..astigmatism``), at a uniform angle.
    voltage, cs, amplitude_contrast
        kV, mm, fraction.
    pixel_size
        Å per pixel.
    dark
        Dark particles (as recorded: the negative of RELION's CTF-filtered projection);
        False gives white ones (contrast inverted, RELION's usual choice).
    """

    defocus_um: tuple[float, float] = (0.5, 3.5)
    astigmatism: float = 300.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    pixel_size: float = 3.0
    dark: bool = False

    def draw(self, n_images: int, rng: np.random.Generator) -> CtfParameters:
        """``n_images`` particles' CTF parameters."""
        mean = rng.uniform(*self.defocus_um, n_images) * 1e4
        difference = rng.uniform(0.0, self.astigmatism, n_images)
        table = {
            "defocus_u": mean + difference / 2,
            "defocus_v": mean - difference / 2,
            "defocus_angle": rng.uniform(-180.0, 180.0, n_images),
            "voltage": np.full(n_images, self.voltage),
            "cs": np.full(n_images, self.cs),
            "amplitude_contrast": np.full(n_images, self.amplitude_contrast),
            "phase_shift": np.zeros(n_images),
            "bfactor": np.zeros(n_images),
            "scale": np.ones(n_images),
            "pixel_size": np.full(n_images, self.pixel_size),
        }
        return CtfParameters.from_table({k: table[k] for k in PARAMETER_NAMES})


def apply_simulated_ctf(clean: np.ndarray, ctf: CtfParameters, chunk: int = 512) -> np.ndarray:
    """Filter ``(N, H, W)`` projections by their CTF, as a microscope would.

    The projections are zero-padded to twice the box before filtering and cropped back, so
    the CTF's fringes are not wrapped around the box (the model, like cryoDRGN's, filters
    within the box: a realistic mismatch).
    """
    n, height, width = clean.shape
    grid = FrequencyGrid(2 * height, 2 * width)
    out = np.empty_like(clean, dtype=np.float32)
    top, left = height // 2, width // 2
    for start in range(0, n, chunk):
        block = torch.from_numpy(np.ascontiguousarray(clean[start : start + chunk]))
        padded = torch.nn.functional.pad(block, (left, width - left, top, height - top))
        rows = torch.from_numpy(ctf.values[start : start + chunk])
        transfer = evaluate_ctf_rows(grid, rows)
        filtered = apply_filter(padded.float(), transfer)
        out[start : start + chunk] = filtered[:, top : top + height, left : left + width].numpy()
    return out


def _rotation_about(axis: str, angles: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` right-handed rotation matrices about a coordinate axis."""
    c, s = np.cos(angles), np.sin(angles)
    one, zero = np.ones_like(angles), np.zeros_like(angles)
    if axis == "z":
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    elif axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    else:
        raise ValueError(axis)
    return np.moveaxis(np.array(rows), (0, 1), (1, 2))


def blob_positions(
    conformation: np.ndarray,
    theta: np.ndarray,
    shift: np.ndarray,
    tilt: np.ndarray,
    hinge_range: float = np.pi / 2,
) -> np.ndarray:
    """Projected 2-D blob centres in the screen frame (coordinate units).

    Parameters
    ----------
    conformation
        ``(N,)`` in 0..1; the arm turns by ``conformation * hinge_range`` about the hinge.
    theta, tilt
        ``(N,)`` radians.
    shift
        ``(N, 2)`` centre offset in coordinate units.

    Returns
    -------
    np.ndarray
        ``(N, M, 2)``.
    """
    arm = _ARM - _HINGE
    # the hinge opens about the z axis (a motion visible in projection)
    arm = np.einsum("nij,mj->nmi", _rotation_about("z", conformation * hinge_range), arm) + _HINGE
    body = np.broadcast_to(_BODY, (len(conformation), *_BODY.shape))
    points = np.concatenate([body, arm], axis=1)
    points = np.einsum("nij,nmj->nmi", _rotation_about("x", tilt), points)[..., :2]
    # counter-clockwise on screen (y down) is p -> p @ R(theta)^T with R = [[c, s], [-s, c]]
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x, y = points[..., 0], points[..., 1]
    rotated = np.stack([c * x + s * y, -s * x + c * y], axis=-1)
    return rotated + shift[:, None, :]


def render_blobs(
    positions: np.ndarray, amplitudes: np.ndarray, size: int, sigma: float, chunk: int = 512
) -> np.ndarray:
    """Sum of isotropic 2-D Gaussians on a ``size x size`` pixel grid.

    Parameters
    ----------
    positions
        ``(N, M, 2)`` centres in coordinate units.
    amplitudes
        ``(M,)``.
    sigma
        Blob width in coordinate units.

    Returns
    -------
    np.ndarray
        ``(N, size, size)`` float32.
    """
    axis = np.linspace(-1.0, 1.0, size)
    gx, gy = np.meshgrid(axis, axis, indexing="xy")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (P, 2), row-major pixels
    out = np.empty((len(positions), size * size), dtype=np.float32)
    for start in range(0, len(positions), chunk):
        block = positions[start : start + chunk]
        d2 = ((grid[None, :, None, :] - block[:, None, :, :]) ** 2).sum(-1)  # (n, P, M)
        out[start : start + chunk] = (np.exp(-d2 / (2 * sigma**2)) * amplitudes).sum(-1)
    return out.reshape(-1, size, size)


def render_particles(
    conformation: np.ndarray,
    theta: np.ndarray,
    shift_px: np.ndarray,
    tilt: np.ndarray,
    size: int,
    blob_sigma_px: float = 2.0,
) -> np.ndarray:
    """Noise-free projections of the two-domain object, one per pose and conformation.

    Parameters
    ----------
    conformation
        ``(N,)`` hinge values in 0..1.
    theta, tilt
        ``(N,)`` in-plane rotations and out-of-plane tilts, radians.
    shift_px
        ``(N, 2)`` shifts in pixels (x, y).
    size, blob_sigma_px
        Image side and blob width in pixels.

    Returns
    -------
    np.ndarray
        ``(N, size, size)`` float32.
    """
    half_width = (size - 1) / 2.0
    positions = blob_positions(conformation, theta, np.asarray(shift_px) / half_width, tilt)
    amplitudes = np.concatenate([_BODY_AMPLITUDE, _ARM_AMPLITUDE])
    return render_blobs(positions, amplitudes, size, blob_sigma_px / half_width)


def simulate_particles(
    n_images: int,
    size: int = 40,
    snr: float | None = 1.0,
    max_shift_px: float = 2.0,
    max_tilt_deg: float = 0.0,
    blob_sigma_px: float = 2.0,
    seed: int = 0,
    ctf: CtfSimulation | None = None,
) -> SimulatedParticles:
    """Make a synthetic particle stack with a continuous motion and random poses.

    Parameters
    ----------
    n_images
        ``N``.
    size
        Image height and width in pixels.
    snr
        Signal-to-noise ratio (signal variance over noise variance across the stack); None
        for noise-free images.
    max_shift_px
        Standard deviation of the Gaussian shift, in pixels (clipped at 2 std).
    max_tilt_deg
        Out-of-plane tilts are uniform in ``+-max_tilt_deg``.
    blob_sigma_px
        Blob width in pixels.
    seed
        Everything is a deterministic function of the seed.
    ctf
        Filter each projection by a CTF drawn from these settings (``snr`` is then measured
        after the CTF); None for none.

    Returns
    -------
    SimulatedParticles
    """
    if n_images < 1 or size < 4:
        raise ValueError("need n_images >= 1 and size >= 4")
    rng = np.random.default_rng(seed)
    conformation = rng.uniform(0.0, 1.0, n_images)
    theta = rng.uniform(-np.pi, np.pi, n_images)
    shift_px = (
        np.clip(rng.normal(0.0, max_shift_px, (n_images, 2)), -2 * max_shift_px, 2 * max_shift_px)
        if max_shift_px > 0
        else np.zeros((n_images, 2))
    )
    tilt = np.radians(rng.uniform(-max_tilt_deg, max_tilt_deg, n_images))
    clean = render_particles(conformation, theta, shift_px, tilt, size, blob_sigma_px)
    parameters = None
    if ctf is not None:
        parameters = ctf.draw(n_images, rng)
        clean = apply_simulated_ctf(clean, parameters)
        if ctf.dark:
            clean = -clean
    images = clean.copy()
    if snr is not None:
        noise_std = np.sqrt(clean.var() / snr)
        images += rng.normal(0.0, noise_std, clean.shape).astype(np.float32)
    return SimulatedParticles(
        images=images.astype(np.float32),
        clean=clean,
        conformation=conformation,
        theta=theta,
        shift_px=shift_px,
        tilt=tilt,
        ctf=parameters,
    )
