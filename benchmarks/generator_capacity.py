"""Can the generator render the motion at all? The default generator fitted with z known.

``z_gap.py`` found that trained models render the conformations closer together than the
particles have them (``own renderings`` well below ``truth``). This asks whether the
generator's *shape* (a coordinate MLP, ``core.generators.SpatialGenerator`` with the defaults'
width, depth, activation and z in every layer) is what limits, by taking everything else
away: no encoder, no pose, no KL. The generator is fitted by least squares to noise-free
particles of a design at a known pose (no rotation, no shift; the out-of-plane tilt random,
as in the design, and not given), with z set to the true conformation (2 c - 1 per motion).

Then both are read the same way at SNR 0.5 and 0.1: a bank of the fitted generator's
renderings on a grid of conformations (41 values for one motion, 21 x 21 for two), each
particle given the conformation of the rendering that fits it best once its amplitude is
profiled out, scored by |Pearson| with the truth per motion:

* ``own``: the fitted generator's renderings of new particles' conformations with white
  noise added: how far apart it renders the conformations;
* ``truth``: the design's own noise-free particles (random tilt) with the same noise: what
  this reading allows on the particles, against the fitted generator's bank.

``own`` near ``truth`` means the generator's shape can hold the motion, so a trained model
that renders it with less contrast loses it in training (what z learns), not in capacity.

    python benchmarks/generator_capacity.py --designs out-of-plane two-motions --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.coords import pixel_grid
from napari_spatial_vae.core.designs import DESIGNS, Design, render_design
from napari_spatial_vae.core.generators import SpatialGenerator

SNRS = (0.5, 0.1)


def unposed_particles(
    design: Design, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, H * W)`` noise-free particles at rotation 0 and shift 0, random tilt, and ``(n, K)``
    conformations in 0..1."""
    conformation = rng.uniform(0.0, 1.0, (n, len(design.motions)))
    tilt = np.radians(rng.uniform(-design.max_tilt_deg, design.max_tilt_deg, n))
    images = render_design(design, conformation, np.zeros(n), np.zeros((n, 2)), tilt)
    return images.reshape(n, -1), conformation


def conformation_bank(motions: int) -> np.ndarray:
    """``(G, K)`` conformations in 0..1: 41 values for one motion, 21 x 21 for two."""
    axis = np.linspace(0.0, 1.0, 41 if motions == 1 else 21)
    return np.stack(np.meshgrid(*[axis] * motions, indexing="ij"), -1).reshape(-1, motions)


def fit_generator(
    images: np.ndarray, conformation: np.ndarray, size: int, steps: int, seed: int
) -> SpatialGenerator:
    """The defaults' generator fitted by least squares to ``(N, H * W)`` images with z known."""
    config = ModelConfig()
    torch.manual_seed(seed)
    generator = SpatialGenerator(
        conformation.shape[1],
        1,
        config.hidden_dim,
        config.num_layers,
        config.activation,
        config.z_every_layer,
    )
    coords = pixel_grid(size, size)
    targets = torch.from_numpy(images)
    z = torch.from_numpy(2.0 * conformation - 1.0).float()
    optimiser = torch.optim.Adam(generator.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    batches = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(targets), (64,), generator=batches)
        loss = (generator(coords, z[index])[..., 0] - targets[index]).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return generator


@torch.no_grad()
def render(generator: SpatialGenerator, conformation: np.ndarray, size: int) -> np.ndarray:
    """``(N, H * W)`` the generator's renderings of ``(N, K)`` conformations in 0..1."""
    z = torch.from_numpy(2.0 * conformation - 1.0).float()
    return generator(pixel_grid(size, size), z)[..., 0].numpy()


def read_conformation(noisy: np.ndarray, bank: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The value of the bank's rendering that fits each ``(N, P)`` particle best, its amplitude
    profiled out (least squares): ``(N, K)``."""
    products = noisy @ bank.T  # (N, G)
    residual = -(products**2) / (bank * bank).sum(1)  # |y|^2 - (y.t)^2 / |t|^2, less |y|^2
    return values[residual.argmin(1)]


def score_design(design: Design, n_fit: int, n_test: int, steps: int, seed: int) -> dict:
    """Fit the generator on ``design`` and read its renderings and the particles back."""
    rng = np.random.default_rng(seed)
    images, conformation = unposed_particles(design, n_fit, rng)
    centre, scale = images.mean(), images.std()
    images = (images - centre) / scale
    start = time.perf_counter()
    generator = fit_generator(images.astype(np.float32), conformation, design.size, steps, seed)
    row: dict = {"design": design.name, "fit_s": round(time.perf_counter() - start, 1)}
    fitted = render(generator, conformation[:1000], design.size)
    row["fit_residual"] = round(float(((fitted - images[:1000]) ** 2).mean()), 5)
    values = conformation_bank(len(design.motions))
    bank = render(generator, values, design.size)
    truth_images, truth_conformation = unposed_particles(design, n_test, rng)
    sources = {
        "own": render(generator, truth_conformation, design.size),
        "truth": (truth_images - centre) / scale,
    }
    for snr in SNRS:
        for label, clean in sources.items():
            # the particles' SNR: signal variance over noise variance, over the box
            noisy = clean + rng.normal(0.0, np.sqrt(1.0 / snr), clean.shape)
            read = read_conformation(noisy, bank, values)
            scores = [
                abs(np.corrcoef(read[:, k], truth_conformation[:, k])[0, 1])
                for k in range(len(design.motions))
            ]
            row[f"{label}@{snr}"] = " / ".join(f"{s:.3f}" for s in scores)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="+", default=["out-of-plane", "two-motions"])
    parser.add_argument("--n-fit", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unknown = sorted(set(args.designs) - set(DESIGNS))
    if unknown:
        parser.error(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(DESIGNS)}")
    rows = [
        score_design(DESIGNS[name], args.n_fit, args.n_test, args.steps, args.seed)
        for name in args.designs
    ]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
