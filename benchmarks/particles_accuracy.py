"""How well does a configuration recover the simulated motion and rotation? (paper Table 1 style)

Trains on N simulated 40x40 particles (ground truth known), then reports on a held-out
thousand: |Pearson(z, conformation)|, circular correlation of theta with the true rotation
(Fisher-Lee, and Jammalamadaka-SenGupta as the paper reports), the angle alignment, test
ELBO, wall time and throughput. Any TrainConfig/ModelConfig field can be overridden:

    python benchmarks/particles_accuracy.py --minutes 8 model.z_dim=1
    python benchmarks/particles_accuracy.py --epochs 20 model.encoder=mlp lr=1e-4
    python benchmarks/particles_accuracy.py --minutes 8 --figure docs/images/results/t.png

``--figure`` writes the paper's Figure 4 analogue: the true motion (noise-free projections
at conformation quantiles, theta = 0) above what the model generates along each latent
axis at theta = dx = 0, ordered so that the latent increases with the conformation.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.infer import encode_stack, latent_traversal
from napari_spatial_vae.core.simulate import render_particles, simulate_particles
from napari_spatial_vae.core.train import train

TRAVERSAL_STEPS = 9


def apply_overrides(config: TrainConfig, items: list[str]) -> None:
    """Set ``field=value`` items on the config; ``model.field`` or a bare model field name."""
    for item in items:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        name = key.removeprefix("model.")
        on_model = key.startswith("model.") or hasattr(config.model, name)
        setattr(config.model if on_model else config, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="field=value, e.g. model.z_dim=1 lr=1e-3")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, default=None, help="training budget")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tilt", type=float, default=0.0, help="max out-of-plane tilt, degrees")
    parser.add_argument("--figure", type=Path, default=None, help="write the traversal PNG here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sim = simulate_particles(
        args.n_train + args.n_test, 40, snr=args.snr, max_tilt_deg=args.tilt, seed=1000 + args.seed
    )
    train_images, test_images = sim.images[: args.n_train], sim.images[args.n_train :]
    config = TrainConfig(model=ModelConfig(z_dim=1), seed=args.seed)
    apply_overrides(config, args.overrides)
    if args.epochs is not None:
        config.epochs = args.epochs
    config.max_minutes = args.minutes

    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        result = train(config, train_images, run_dir, test_images=test_images)
        wall = time.perf_counter() - started
    poses = encode_stack(result.model, config, test_images)
    truth = sim.theta[args.n_train :]
    correlations = [
        metrics.pearson(poses.z[:, k], sim.conformation[args.n_train :])
        for k in range(poses.z.shape[1])
    ]
    test_elbo = [r["elbo"] for r in result.history if r["split"] == "test"]
    row = {
        "overrides": " ".join(args.overrides) or "(defaults)",
        "snr": args.snr,
        "tilt_deg": args.tilt,
        "epochs": result.epochs_completed,
        "wall_s": round(wall, 1),
        "img_per_s": round(result.images_per_second, 1),
        "pearson_z": round(max((abs(c) for c in correlations), default=0.0), 3),
        "circ_fl": round(abs(metrics.circular_correlation_fl(poses.theta, truth)), 3),
        "circ_js": round(abs(metrics.circular_correlation_js(poses.theta, truth)), 3),
        "angle_align": round(metrics.angle_alignment(poses.theta, truth), 3),
        "test_elbo": round(test_elbo[-1], 1) if test_elbo else None,
    }
    if args.figure is not None and correlations:
        save_traversal(result.model, correlations, args.figure, row["overrides"])
    print(json.dumps(row))


def save_traversal(model, correlations: list[float], path: Path, label: str) -> None:
    """The true motion (top row) above the learned traversal of each latent (paper Fig. 4)."""
    # matplotlib (the bench extra) only when a figure is asked for; particles_trace imports us
    from figures import montage, save_panels

    quantiles = np.linspace(0.05, 0.95, TRAVERSAL_STEPS)
    zeros = np.zeros(TRAVERSAL_STEPS)
    truth = render_particles(quantiles, zeros, np.zeros((TRAVERSAL_STEPS, 2)), zeros, 40)
    rows = [truth / truth.max()]
    for walk, correlation in zip(
        latent_traversal(model, TRAVERSAL_STEPS), correlations, strict=True
    ):
        walk = walk[::-1] if correlation < 0 else walk  # z increasing with the conformation
        rows.append((walk - walk.min()) / max(float(np.ptp(walk)), 1e-8))
    title = f"top: true motion (conformation 5-95 %); below: learned z, {label}"
    save_panels([montage(np.stack(rows))], [title], path)


if __name__ == "__main__":
    main()
