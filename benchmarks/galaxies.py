"""Galaxies, qualitative (the paper's galaxy experiment): RGB spatial-VAE on real Hubble cut-outs.

Crops the brightest compact galaxies out of the Hubble Deep Field image that scikit-image
ships (the plugin's sample data), trains spatial-VAE with RGB output, and writes one PNG
(``galaxies_<likelihood>.png``):
the inputs, the inputs aligned by their inferred pose, each galaxy's reconstruction at
theta = 0, dx = 0, and new galaxies sampled from the prior at theta = 0, dx = 0. Prints a
JSON row with the final ELBO, the wall time and training's own checks on this real data
(``restarts`` and ``fold_check``, the fold check a third of the way in; ``unrendered``, the
share the end-of-training warning judges, and ``unrendered_second``, its second direction as
a share of the first).

    python benchmarks/galaxies.py --epochs 150 --count 400
    python benchmarks/galaxies.py --epochs 150 --count 400 --likelihood gaussian
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from figures import montage, save_panels

from napari_spatial_vae._sample_data import galaxy_cutouts
from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.fold_restart import fold_check_share
from napari_spatial_vae.core.infer import iter_inference
from napari_spatial_vae.core.train import train

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "images" / "results"
SHOWN = 16  # images per panel, as a 4x4 grid


@torch.no_grad()
def prior_samples(model, count: int, seed: int) -> np.ndarray:
    """``(count, H, W, C)`` expected images for z ~ N(0, I) at theta = 0, dx = 0."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, model.config.z_dim, generator=generator)
    mean, _ = model.decode(z)
    return model.expected_image(mean).permute(0, 2, 3, 1).numpy()


def stretch(images: np.ndarray) -> np.ndarray:
    """Each image ``(N, H, W, C)`` min-max scaled to 0..1 for display."""
    low = images.min(axis=(1, 2, 3), keepdims=True)
    high = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - low) / np.maximum(high - low, 1e-8)


def grid(images: np.ndarray) -> np.ndarray:
    """The first (up to 16) images ``(N, H, W, C)`` as one square montage."""
    side = int(np.sqrt(min(len(images), SHOWN)))
    return montage(images[: side * side].reshape(side, side, *images.shape[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--z-dim", type=int, default=2)
    parser.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    parser.add_argument("--size", type=int, default=64, help="cut-out size in pixels")
    parser.add_argument("--count", type=int, default=400, help="most galaxies to cut out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figures", type=Path, default=FIGURES, help="folder for the PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cutouts, _ = galaxy_cutouts(size=args.size, max_count=args.count)
    bernoulli = args.likelihood == "bernoulli"
    config = TrainConfig(
        # bernoulli: pixel values in 0..1, one output per colour channel (8-bit input is
        # scaled by 1/255); gaussian: the project's defaults (standardised images, fitted noise)
        model=ModelConfig(z_dim=args.z_dim, likelihood=args.likelihood, fit_noise=not bernoulli),
        epochs=args.epochs,
        normalize=not bernoulli,
        # a few hundred galaxies: every one is needed for training
        test_fraction=0.0,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        result = train(config, cutouts, run_dir)
        wall = time.perf_counter() - started
    batches = list(
        iter_inference(result.model, config, cutouts, aligned=True, reconstructions=True)
    )
    aligned = np.concatenate([b.aligned for b in batches]) / 255.0
    recon = np.concatenate([b.reconstructions for b in batches])
    samples = prior_samples(result.model, SHOWN, args.seed)
    if not bernoulli:  # back from 0..255 (reconstructions) or standardised units (samples)
        recon, samples = recon / 255.0, stretch(samples)
    path = save_panels(
        [
            grid(cutouts / 255.0),
            grid(aligned),
            grid(recon),
            grid(samples),
        ],
        [
            "Hubble cut-outs",
            "aligned by inferred pose",
            "reconstruction, theta = dx = 0",
            "sampled z, theta = dx = 0",
        ],
        args.figures / f"galaxies_{args.likelihood}.png",
        suptitle=f"{len(cutouts)} HDF galaxies, RGB, z-dim {args.z_dim}, {args.likelihood}, "
        f"{args.epochs} epochs",
    )
    row = {
        "galaxies": len(cutouts),
        "size": args.size,
        "z_dim": args.z_dim,
        "likelihood": args.likelihood,
        "epochs": result.epochs_completed,
        "train_elbo": round([r for r in result.history if r["split"] == "train"][-1]["elbo"], 1),
        "wall_s": round(wall, 1),
        # training's own checks on real data the project did not simulate: the fold check a
        # third of the way in (core/fold_restart.py) and the unrendered share at the end
        "restarts": result.restarts,
        "fold_check": fold_check_share(result.history),
        "unrendered": None if result.unrendered is None else round(result.unrendered.share, 3),
        "unrendered_second": None
        if result.unrendered is None
        else round(result.unrendered.runner_up_ratio, 3),
        "figure": str(path),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
