"""Synthetic micrographs: the hinged particles of :mod:`.simulate` at known positions.

Each micrograph holds particles rendered by :func:`.simulate.render_particles` (random hinge
conformation and in-plane rotation), pasted with their centres at known sub-pixel
positions, dark on a flat background as in cryo-EM (protein scatters electrons away), plus
Gaussian noise. Each micrograph gets CTF parameters (defocus, astigmatism), recorded in
RELION's labels and units (Å, degrees) so that the extracted particles carry them.

:func:`apply_micrograph_ctf` applies that CTF (``core/ctf.py``) to the noise-free micrograph
before the noise is added, with the optics of :data:`OPTICS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .simulate import render_particles

__all__ = [
    "OPTICS",
    "SimulatedMicrograph",
    "apply_micrograph_ctf",
    "micrograph_ctf_parameters",
    "simulate_micrograph",
]

# Particles rendered per call: render_particles holds (chunk, size**2, blobs, 2) float64.
_RENDER_CHUNK = 4


@dataclass
class SimulatedMicrograph:
    """One synthetic micrograph and its ground truth.

    Attributes
    ----------
    image
        ``(H, W)`` float32.
    x, y
        ``(P,)`` true particle centres in pixels (x = column, y = row, 0-based), the
        convention of RELION's ``rlnCoordinateX``/``rlnCoordinateY``.
    conformation, theta
        ``(P,)`` hinge value (0..1) and in-plane rotation (radians) of each particle.
    ctf
        RELION CTF labels to values for this micrograph (Å, degrees).
    """

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    conformation: np.ndarray
    theta: np.ndarray
    ctf: dict[str, float]


#: The synthetic microscope (written to the micrographs STAR's optics table).
OPTICS = {"voltage": 300.0, "spherical_aberration": 2.7, "amplitude_contrast": 0.1}


def micrograph_ctf_parameters(rng: np.random.Generator) -> dict[str, float]:
    """Plausible CTF parameters for one micrograph (RELION labels, Å and degrees)."""
    defocus = rng.uniform(8000.0, 25000.0)
    astigmatism = rng.uniform(0.0, 600.0)
    return {
        "rlnDefocusU": float(defocus + astigmatism / 2),
        "rlnDefocusV": float(defocus - astigmatism / 2),
        "rlnDefocusAngle": float(rng.uniform(-90.0, 90.0)),
        "rlnPhaseShift": 0.0,
        "rlnCtfBfactor": 0.0,
        "rlnCtfMaxResolution": float(rng.uniform(3.0, 6.0)),
        "rlnCtfFigureOfMerit": float(rng.uniform(0.1, 0.3)),
    }


def apply_micrograph_ctf(clean: np.ndarray, ctf: dict[str, float], pixel_size: float) -> np.ndarray:
    """Modulate a noise-free micrograph by its astigmatic CTF (RELION's sign and units).

    The micrograph holds the negated projection (dark particles); with RELION's sign the
    CTF is positive at low frequency, so the result stays dark there, and the extracted,
    contrast-inverted particles are ``CTF * projection`` as RELION expects.

    Parameters
    ----------
    clean : numpy.ndarray
        ``(H, W)`` noise-free micrograph.
    ctf : dict
        RELION CTF labels (Å, degrees) of :func:`micrograph_ctf_parameters`; the optics are
        :data:`OPTICS` (the values written to the micrographs STAR).
    pixel_size : float
        Å per pixel.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32.
    """
    import torch  # the rest of this module is numpy; the CTF lives with the torch core

    from .ctf import FrequencyGrid, apply_filter, evaluate_ctf

    def value(number: float) -> torch.Tensor:
        return torch.tensor([number], dtype=torch.float64)

    transfer = evaluate_ctf(
        FrequencyGrid(*clean.shape),
        value(ctf["rlnDefocusU"]),
        value(ctf["rlnDefocusV"]),
        value(ctf["rlnDefocusAngle"]),
        value(OPTICS["voltage"]),
        value(OPTICS["spherical_aberration"]),
        value(OPTICS["amplitude_contrast"]),
        value(pixel_size),
        phase_shift=value(ctf.get("rlnPhaseShift", 0.0)),
    )
    filtered = apply_filter(torch.from_numpy(np.ascontiguousarray(clean))[None], transfer)
    return filtered[0].numpy().astype(np.float32)


def _place_centres(
    rng: np.random.Generator, n: int, shape: tuple[int, int], spacing: float, margin: float
) -> np.ndarray:
    """``(n, 2)`` centres (x, y), at least ``spacing`` apart where room allows."""
    height, width = shape
    chosen: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(50):
            p = rng.uniform([margin, margin], [width - 1 - margin, height - 1 - margin])
            if not chosen or np.min(np.hypot(*(np.array(chosen) - p).T)) >= spacing:
                break
        chosen.append(p)
    return np.array(chosen).reshape(n, 2)


def simulate_micrograph(
    shape: tuple[int, int] = (1024, 1024),
    n_particles: int = 50,
    particle_size: int = 64,
    pixel_size: float = 1.0,
    noise_std: float = 1.0,
    margin: float | None = None,
    seed: int = 0,
) -> SimulatedMicrograph:
    """Make one micrograph with particles at known positions.

    Parameters
    ----------
    shape
        ``(H, W)`` pixels.
    n_particles
        Particles on it.
    particle_size
        Side of the square each particle is rendered in (the object spans about half of
        it); particle centres are at least ``particle_size`` apart where room allows.
    pixel_size
        Å per pixel (only used by the CTF).
    noise_std
        Standard deviation of the Gaussian noise; the particles' peak darkness is about 1.
    margin
        Closest distance of a centre to the edge (default: half the particle size, so every
        particle lies fully on the micrograph; boxes larger than that may still leave it).
    seed
        Everything is a deterministic function of the seed.

    Returns
    -------
    SimulatedMicrograph
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    size = int(particle_size)
    margin = size / 2 if margin is None else margin
    centres = _place_centres(rng, n_particles, shape, float(size), margin)
    x, y = centres[:, 0], centres[:, 1]
    conformation = rng.uniform(0.0, 1.0, n_particles)
    theta = rng.uniform(-np.pi, np.pi, n_particles)
    ctf = micrograph_ctf_parameters(rng)

    # the render's origin is pixel (size - 1) / 2; the sub-pixel rest goes into its shift
    corner_x = np.floor(x - (size - 1) / 2).astype(np.int64)
    corner_y = np.floor(y - (size - 1) / 2).astype(np.int64)
    shift = np.stack([x - (size - 1) / 2 - corner_x, y - (size - 1) / 2 - corner_y], axis=1)
    clean = np.zeros(shape, dtype=np.float32)
    zero_tilt = np.zeros(n_particles)
    for start in range(0, n_particles, _RENDER_CHUNK):
        part = slice(start, start + _RENDER_CHUNK)
        rendered = render_particles(
            conformation[part], theta[part], shift[part], zero_tilt[part], size
        )
        for k, image in enumerate(rendered):
            r0, c0 = int(corner_y[start + k]), int(corner_x[start + k])
            rs, cs = max(r0, 0), max(c0, 0)
            re, ce = min(r0 + size, height), min(c0 + size, width)
            # dark particles: protein scatters electrons out of the bright background
            clean[rs:re, cs:ce] -= image[rs - r0 : re - r0, cs - c0 : ce - c0]
    clean = apply_micrograph_ctf(clean, ctf, pixel_size)
    image = rng.standard_normal(shape, dtype=np.float32)
    image *= noise_std
    image += clean
    return SimulatedMicrograph(image, x, y, conformation, theta, ctf)
