"""Per-epoch trace of how well training recovers the simulated rotation and motion.

Trains on 2,000 simulated 40x40 particles and, after every epoch, scores the live model on
500 held-out ones: test ELBO, Fisher-Lee correlation of theta, Pearson of z1 with the
conformation, median posterior std of theta, and a 12-bin histogram of the angle error after
removing the best global offset (bins of 30 degrees from -180; a cluster in the outer bins is
particles assigned the half-turned orientation).

    python benchmarks/particles_trace.py --epochs 6 encoder=mlp
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from particles_accuracy import apply_overrides  # same folder: run as a script

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.infer import encode_stack
from napari_spatial_vae.core.simulate import simulate_particles
from napari_spatial_vae.core.train import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="field=value of TrainConfig/ModelConfig")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(2)
    n = args.n_train
    sim = simulate_particles(n + args.n_test, 40, snr=1.0, seed=1000 + args.seed)
    train_images, test_images = sim.images[:n], sim.images[n:]
    true_theta, conformation = sim.theta[n:], sim.conformation[n:]
    config = TrainConfig(model=ModelConfig(z_dim=1), epochs=args.epochs, seed=args.seed)
    apply_overrides(config, args.overrides)

    def report(update) -> None:
        if update.kind != "epoch":
            return
        poses = encode_stack(update.model, config, test_images)
        error = np.angle(np.exp(1j * (poses.theta - true_theta)))
        error = np.angle(np.exp(1j * (error - metrics.circular_mean(error))))
        histogram = np.histogram(error, bins=12, range=(-np.pi, np.pi))[0]
        pearson = metrics.pearson(poses.z[:, 0], conformation) if poses.z.shape[1] else 0.0
        print(
            f"epoch {update.epoch:3d}  {update.seconds:6.0f}s  test ELBO {update.test.elbo:9.1f}"
            f"  FL {metrics.circular_correlation_fl(poses.theta, true_theta):6.3f}"
            f"  pearson {pearson:6.3f}  theta std {np.median(poses.theta_std):.3f}"
            f"  error histogram {histogram.tolist()}",
            flush=True,
        )
        update.model.train()

    with tempfile.TemporaryDirectory() as run_dir:
        train(config, train_images, run_dir, test_images=test_images, on_update=report)


if __name__ == "__main__":
    main()
