"""A family of simulated particles: the designs the defaults are tuned on and judged by.

One simulated particle (:mod:`.simulate`'s hinge) is not enough to choose defaults: a
setting that works there can fail on the particle a user brings. Each :class:`Design` here
is a small 3-D object of Gaussian blobs in domains, some of which move: a rigid rotation of a
domain about a hinge axis through a hinge point, by an angle set by that motion's
conformation value (uniform in 0..1 over the stack). Designs vary the number and size of the
domains, how much of the mass moves, the motion (hinge in the image plane, hinge axis tilted
out of it, two independent motions), the out-of-plane tilt, the box size and the SNR.

The designs are split: :data:`TUNE_DESIGNS` (and :data:`TUNE_SEEDS`) are the ones defaults
may be chosen on; :data:`REPORT_DESIGNS` with :data:`REPORT_SEEDS` are held out and only
reported (``benchmarks/design_family.py``). Coordinates are in units of the image
half-width, as in :mod:`.simulate`; poses follow the package convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_spatial_vae.core.simulate import render_blobs

__all__ = [
    "DESIGNS",
    "REPORT_DESIGNS",
    "REPORT_SEEDS",
    "TUNE_DESIGNS",
    "TUNE_SEEDS",
    "Design",
    "DesignParticles",
    "Domain",
    "Motion",
    "simulate_design",
]


@dataclass(frozen=True)
class Domain:
    """Rigid group of blobs.

    Attributes
    ----------
    centres
        ``(M, 3)`` blob centres, image half-widths.
    amplitudes
        ``(M,)`` blob heights.
    """

    centres: np.ndarray
    amplitudes: np.ndarray


@dataclass(frozen=True)
class Motion:
    """One continuous degree of freedom: a domain turning about a hinge.

    Attributes
    ----------
    domain
        Index of the moving domain in :attr:`Design.domains`.
    hinge
        ``(3,)`` a point on the hinge axis.
    axis
        ``(3,)`` direction of the hinge axis; ``(0, 0, 1)`` swings in the image plane, an axis
        tilted towards the image plane makes the motion partly out of plane.
    half_range_deg, centre_deg
        The domain turns by ``centre_deg + (2 c - 1) * half_range_deg`` for conformation
        ``c``.
    """

    domain: int
    hinge: np.ndarray
    axis: np.ndarray
    half_range_deg: float
    centre_deg: float = 0.0


@dataclass(frozen=True)
class Design:
    """A simulated particle and how its stacks are made.

    Attributes
    ----------
    name
        Short identifier (benchmark rows, command line).
    description
        One line for the tables.
    domains, motions
        The object and its continuous motions (one, or two independent ones).
    size
        Box side in pixels.
    blob_sigma_px
        Blob width in pixels at this box size.
    max_tilt_deg
        Out-of-plane tilt about the x axis, uniform in ``+-max_tilt_deg``.
    shift_std_px
        Standard deviation of the particle's shift (clipped at 2 std).
    snr
        Signal-to-noise ratio (signal variance over noise variance over the stack).
    """

    name: str
    description: str
    domains: tuple[Domain, ...]
    motions: tuple[Motion, ...]
    size: int = 40
    blob_sigma_px: float = 2.0
    max_tilt_deg: float = 0.0
    shift_std_px: float = 1.5
    snr: float = 0.5
    moving_fraction: float = field(init=False)

    def __post_init__(self) -> None:
        total = sum(float(d.amplitudes.sum()) for d in self.domains)
        moving = sum(float(self.domains[m.domain].amplitudes.sum()) for m in self.motions)
        object.__setattr__(self, "moving_fraction", moving / total)


@dataclass
class DesignParticles:
    """A stack of one design with its ground truth.

    Attributes
    ----------
    images, clean
        ``(N, H, W)`` float32 noisy particles and their noise-free projections.
    conformation
        ``(N, K)`` each motion's value in 0..1.
    theta
        ``(N,)`` in-plane rotation, radians.
    shift_px
        ``(N, 2)`` centre offset (x, y) in pixels, y down.
    tilt
        ``(N,)`` out-of-plane tilt, radians.
    """

    images: np.ndarray
    clean: np.ndarray
    conformation: np.ndarray
    theta: np.ndarray
    shift_px: np.ndarray
    tilt: np.ndarray


def _axis_rotation(axis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` rotations by ``angles`` about the unit vector ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    s, c = np.sin(angles)[:, None, None], np.cos(angles)[:, None, None]
    return np.eye(3) + s * cross + (1 - c) * (cross @ cross)


def blob_centres(design: Design, conformation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blob centres of every particle before its pose, and their amplitudes.

    Parameters
    ----------
    conformation
        ``(N, K)`` in 0..1, one column per motion.

    Returns
    -------
    centres, amplitudes
        ``(N, M, 3)`` and ``(M,)`` over all domains' blobs.
    """
    n = len(conformation)
    parts = []
    for index, domain in enumerate(design.domains):
        points = np.broadcast_to(domain.centres, (n, *domain.centres.shape)).astype(np.float64)
        for k, motion in enumerate(design.motions):
            if motion.domain == index:
                degrees = (
                    motion.centre_deg + (2.0 * conformation[:, k] - 1.0) * motion.half_range_deg
                )
                angle = np.radians(degrees)
                turned = np.einsum(
                    "nij,nmj->nmi", _axis_rotation(motion.axis, angle), points - motion.hinge
                )
                points = turned + motion.hinge
        parts.append(points)
    amplitudes = np.concatenate([d.amplitudes for d in design.domains])
    return np.concatenate(parts, axis=1), amplitudes


def render_design(
    design: Design,
    conformation: np.ndarray,
    theta: np.ndarray,
    shift_px: np.ndarray,
    tilt: np.ndarray,
    size: int | None = None,
) -> np.ndarray:
    """Noise-free projections ``(N, size, size)`` float32 at the given poses and motions."""
    size = size or design.size
    half_width = (size - 1) / 2.0
    centres, amplitudes = blob_centres(design, conformation)
    c, s = np.cos(tilt)[:, None, None], np.sin(tilt)[:, None, None]
    one, zero = np.ones_like(c), np.zeros_like(c)
    tilt_x = np.concatenate(
        [
            np.concatenate([one, zero, zero], 2),
            np.concatenate([zero, c, -s], 2),
            np.concatenate([zero, s, c], 2),
        ],
        axis=1,
    )
    projected = np.einsum("nij,nmj->nmi", tilt_x, centres)[..., :2]
    # counter-clockwise on screen (y down), as in simulate.blob_positions
    ct, st = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x, y = projected[..., 0], projected[..., 1]
    screen = np.stack([ct * x + st * y, -st * x + ct * y], axis=-1)
    screen = screen + (np.asarray(shift_px) / half_width)[:, None, :]
    sigma = design.blob_sigma_px * size / design.size / half_width
    return render_blobs(screen, amplitudes, size, sigma)


def simulate_design(
    design: Design,
    n_images: int,
    seed: int,
    snr: float | None = None,
    size: int | None = None,
) -> DesignParticles:
    """A stack of ``design`` with random poses and motions (deterministic in ``seed``).

    ``snr`` and ``size`` override the design's (the family is also run at SNR 1 and 0.1
    and at 64 px); the blobs scale with the box so the object fills the same fraction.
    """
    rng = np.random.default_rng(seed)
    size = size or design.size
    conformation = rng.uniform(0.0, 1.0, (n_images, len(design.motions)))
    theta = rng.uniform(-np.pi, np.pi, n_images)
    shift_std = design.shift_std_px * size / design.size
    shift_px = np.clip(rng.normal(0.0, shift_std, (n_images, 2)), -2 * shift_std, 2 * shift_std)
    tilt = np.radians(rng.uniform(-design.max_tilt_deg, design.max_tilt_deg, n_images))
    clean = render_design(design, conformation, theta, shift_px, tilt, size)
    noise_std = np.sqrt(clean.var() / (snr or design.snr))
    images = clean + rng.normal(0.0, noise_std, clean.shape).astype(np.float32)
    return DesignParticles(images.astype(np.float32), clean, conformation, theta, shift_px, tilt)


def _blobs(*rows: tuple[float, float, float, float]) -> Domain:
    array = np.array(rows, dtype=np.float64)
    return Domain(array[:, :3], array[:, 3])


_Z = np.array([0.0, 0.0, 1.0])


def _tilted_axis(degrees_from_z: float) -> np.ndarray:
    """A hinge axis tilted from the viewing direction towards the y axis."""
    a = np.radians(degrees_from_z)
    return np.array([0.0, np.sin(a), np.cos(a)])


# the project's original particle (core/simulate.py): an L-shaped body and a 3-blob arm
_HINGE_BODY = _blobs(
    (-0.45, -0.1, 0.0, 1.0), (-0.25, -0.1, 0.05, 1.0), (-0.05, -0.1, 0.0, 1.0),
    (-0.45, 0.12, 0.0, 0.8), (-0.45, 0.32, -0.05, 0.8),
)  # fmt: skip
_HINGE_ARM = _blobs((0.15, -0.1, 0.0, 0.9), (0.33, -0.1, 0.0, 0.9), (0.5, -0.1, 0.05, 1.2))
# the particle: a five-blob body, a two-blob knob that breaks the symmetry, a four-blob
# arm on a hinge whose axis leans out of the image plane
_BODY5 = _blobs(
    (-0.3, -0.2, 0.0, 1.0), (-0.1, -0.2, 0.05, 1.0), (-0.3, 0.0, 0.0, 1.0),
    (-0.1, 0.0, -0.05, 1.0), (-0.2, 0.2, 0.0, 0.9),
)  # fmt: skip
_KNOB = _blobs((-0.45, -0.35, 0.0, 0.7), (-0.55, -0.2, 0.0, 0.6))
_ARM4 = _blobs(
    (0.1, 0.0, 0.0, 0.9), (0.25, 0.0, 0.0, 0.9), (0.4, 0.0, 0.0, 0.9), (0.55, 0.0, 0.0, 1.0)
)
_SMALL_ARM = _blobs((0.15, 0.0, 0.0, 0.6), (0.3, 0.0, 0.0, 0.6))
_ARM_UP = _blobs((-0.2, 0.35, 0.0, 0.9), (-0.2, 0.5, 0.0, 0.9), (-0.2, 0.65, 0.0, 1.0))
# a second arm hanging below the project's hinge body (the tune split's two-motion particle)
_HINGE_ARM_DOWN = _blobs((-0.25, -0.3, 0.0, 0.9), (-0.25, -0.45, 0.0, 0.9), (-0.25, -0.6, 0.0, 1.0))

DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design(
            "hinge",
            "the project's own hinge (core/simulate.py): 2 domains, in-plane 90° hinge",
            (_HINGE_BODY, _HINGE_ARM),
            (Motion(1, np.array([0.0, -0.1, 0.0]), _Z, 45.0, centre_deg=45.0),),
            snr=1.0,
            shift_std_px=2.0,
        ),
        Design(
            "tilted-hinge",
            "the project's hinge, its arm turning ±45° about an axis 60° out of plane, tilt 15°",
            (_HINGE_BODY, _HINGE_ARM),
            (Motion(1, np.array([0.0, -0.1, 0.0]), _tilted_axis(60.0), 45.0),),
            max_tilt_deg=15.0,
        ),
        Design(
            "two-hinges",
            "the project's hinge with a second arm below it, two independent in-plane hinges",
            (_HINGE_BODY, _HINGE_ARM, _HINGE_ARM_DOWN),
            (
                Motion(1, np.array([0.0, -0.1, 0.0]), _Z, 40.0),
                Motion(2, np.array([-0.25, -0.15, 0.0]), _Z, 35.0),
            ),
        ),
        Design(
            "three-domain",
            "body + knob + 4-blob arm swinging ±50° about an axis 30° out of plane, tilt 10°",
            (_BODY5, _KNOB, _ARM4),
            (Motion(2, np.array([0.0, 0.0, 0.0]), _tilted_axis(30.0), 50.0),),
            max_tilt_deg=10.0,
        ),
        Design(
            "small-arm",
            "a 2-blob arm (12 % of the mass) on a 5+2-blob body, in-plane ±40°",
            (_BODY5, _KNOB, _SMALL_ARM),
            (Motion(2, np.array([0.0, 0.0, 0.0]), _Z, 40.0),),
        ),
        Design(
            "out-of-plane",
            "the 4-blob arm about an axis 60° out of plane (foreshortened motion), tilt 15°",
            (_BODY5, _KNOB, _ARM4),
            (Motion(2, np.array([0.0, 0.0, 0.0]), _tilted_axis(60.0), 45.0),),
            max_tilt_deg=15.0,
        ),
        Design(
            "two-motions",
            "two arms with independent in-plane hinges (for z-dim 2)",
            (_BODY5, _ARM4, _ARM_UP),
            (
                Motion(1, np.array([0.0, 0.0, 0.0]), _Z, 40.0),
                Motion(2, np.array([-0.2, 0.2, 0.0]), _Z, 35.0),
            ),
        ),
        Design(
            "three-domain-64",
            "the three-domain particle in a 64 px box",
            (_BODY5, _KNOB, _ARM4),
            (Motion(2, np.array([0.0, 0.0, 0.0]), _tilted_axis(30.0), 50.0),),
            size=64,
            blob_sigma_px=3.2,
            shift_std_px=2.4,
            max_tilt_deg=10.0,
        ),
    )
}

# defaults may be chosen on these (with these seeds) ...
TUNE_DESIGNS: tuple[str, ...] = ("hinge", "small-arm", "tilted-hinge", "two-hinges")
TUNE_SEEDS: tuple[int, ...] = (0, 1)
# ... and are judged on these, never tuned on
REPORT_DESIGNS: tuple[str, ...] = ("three-domain", "out-of-plane", "two-motions", "three-domain-64")
REPORT_SEEDS: tuple[int, ...] = (2, 3, 4)
