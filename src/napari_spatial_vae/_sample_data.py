"""npe2 sample data: synthetic particles with ground truth, and Hubble Deep Field galaxies.

Both are generated on demand (no downloads): the particles by the same simulator the tests
and benchmarks use, the galaxies by cutting the brightest compact sources out of the Hubble
Deep Field image that scikit-image ships.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_spatial_vae._layers import META_KEY, STACK_AXES, LayerData, contrast_limits
from napari_spatial_vae.core.simulate import CtfSimulation, simulate_particles

GALAXY_SIZE = 64
MAX_GALAXIES = 96


def make_synthetic_particles(
    n_images: int = 1000, size: int = 40, snr: float = 1.0, seed: int = 0
) -> list[LayerData]:
    """A noisy particle stack with a continuous hinge motion and random in-plane poses.

    Returns one Image layer ``(N, size, size)``. Its ``metadata["ground_truth"]`` holds the
    simulated ``conformation`` (0..1), ``theta`` (radians) and ``shift_px`` ``(N, 2)``, so
    what the model infers can be compared with the truth; ``metadata["clean"]`` holds the
    noise-free images.
    """
    sim = simulate_particles(n_images, size=size, snr=snr, seed=seed)
    kwargs: dict[str, Any] = {
        "name": "synthetic particles",
        "colormap": "gray",
        "axis_labels": STACK_AXES,
        "contrast_limits": contrast_limits(sim.images),
        "metadata": {
            META_KEY: {"source": "synthetic particles", "pixel_size": None},
            "ground_truth": {
                "conformation": sim.conformation,
                "theta": sim.theta,
                "shift_px": sim.shift_px,
            },
            "clean": sim.clean,
        },
    }
    return [(sim.images, kwargs, "image")]


def make_synthetic_ctf_particles(
    n_images: int = 1000, size: int = 40, snr: float = 1.0, seed: int = 0
) -> list[LayerData]:
    """The synthetic particles behind a per-particle astigmatic CTF, as a RELION .star.

    White particles at 4.8 Å/px (the 64-px, 3 Å/px benchmark's field of view in 40 px),
    defocus 0.5-3.5 µm, astigmatism up to 300 Å, 300 kV, Cs 2.7 mm. The stack and its
    RELION 3.1 .star (CTF and ground truth columns) are written to a folder under the
    system's temporary directory and opened like any .star file, so training finds the CTF.
    """
    from napari_spatial_vae._reader import stack_layer
    from napari_spatial_vae.io import read_stack
    from napari_spatial_vae.io.ctf_params import write_particles_star

    ctf = CtfSimulation(pixel_size=4.8)
    sim = simulate_particles(n_images, size=size, snr=snr, seed=seed, ctf=ctf)
    folder = Path(tempfile.gettempdir()) / "napari-spatial-vae-samples"
    folder.mkdir(parents=True, exist_ok=True)
    star = folder / f"ctf_particles_{n_images}x{size}_seed{seed}.star"
    truth = pd_truth(sim)
    write_particles_star(star, sim.images, ctf.pixel_size, sim.ctf, truth)
    data, kwargs, kind = stack_layer(read_stack(star), name="synthetic particles (CTF)")
    kwargs["metadata"]["ground_truth"] = {
        "conformation": sim.conformation,
        "theta": sim.theta,
        "shift_px": sim.shift_px,
    }
    return [(data, kwargs, kind)]


def pd_truth(sim: Any) -> Any:
    """The ground-truth pose table of a simulation (write_poses columns)."""
    import pandas as pd

    return pd.DataFrame(
        {
            "conformation": sim.conformation,
            "theta": sim.theta,
            "dx": sim.shift_px[:, 0],
            "dy": sim.shift_px[:, 1],
        }
    )


def galaxy_cutouts(
    size: int = GALAXY_SIZE, max_count: int = MAX_GALAXIES
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``size x size`` RGB windows around the brightest compact sources of the HDF.

    Sources are connected regions above a threshold of the grey image, ranked by integrated
    brightness; regions larger than a quarter of the window (they would not fit) or too
    close to the border are skipped, and windows may overlap.

    Returns
    -------
    images : numpy.ndarray
        ``(N, size, size, 3)`` uint8.
    centres : numpy.ndarray
        ``(N, 2)`` (row, column) of each window's centre in the HDF image.
    """
    from skimage import color, data, filters, measure

    field = data.hubble_deep_field()
    grey = color.rgb2gray(field)
    # Otsu separates sky from sources; the floor keeps only clearly detected galaxies
    mask = grey > max(filters.threshold_otsu(grey), 0.25)
    regions = measure.regionprops(measure.label(mask), intensity_image=grey)
    half = size // 2
    height, width = grey.shape
    candidates = []
    for region in regions:
        row, col = (round(float(c)) for c in region.centroid)
        fits = half <= row <= height - half and half <= col <= width - half
        if fits and 12 <= region.area <= (size * size) // 4:
            candidates.append((region.image_intensity.sum(), row, col))
    candidates.sort(reverse=True)
    chosen = candidates[:max_count]
    images = np.stack(
        [field[r - half : r - half + size, c - half : c - half + size] for _, r, c in chosen]
    )
    centres = np.array([(r, c) for _, r, c in chosen], dtype=np.int64)
    return images, centres


def make_galaxies() -> list[LayerData]:
    """Hubble Deep Field galaxy cut-outs as an RGB stack ``(N, 64, 64, 3)`` (uint8)."""
    images, centres = galaxy_cutouts()
    kwargs = {
        "name": "HDF galaxies",
        "rgb": True,
        "axis_labels": STACK_AXES,
        "metadata": {META_KEY: {"source": "HDF galaxies"}, "centres": centres},
    }
    return [(images, kwargs, "image")]


def make_galaxies_grey() -> list[LayerData]:
    """The same galaxy cut-outs in grey, float32 in 0..1 ``(N, 64, 64)``.

    Values in 0..1 suit the Bernoulli likelihood the paper used for galaxies.
    """
    from skimage import color

    images, centres = galaxy_cutouts()
    grey = color.rgb2gray(images).astype(np.float32)
    kwargs = {
        "name": "HDF galaxies (grey)",
        "colormap": "gray",
        "axis_labels": STACK_AXES,
        "contrast_limits": (0.0, float(grey.max()) or 1.0),
        "metadata": {META_KEY: {"source": "HDF galaxies (grey)"}, "centres": centres},
    }
    return [(grey, kwargs, "image")]
