"""Test ELBO on transformed real MNIST digits: spatial-VAE vs fixed pose vs vanilla (paper Fig. 2).

The 10,000 real MNIST test digits are rotated (theta ~ N(0, pi^2/16)) and shifted
(N(0, 1.4^2) px on 28x28, or N(0, 14^2) px on a larger canvas), split into train and
held-out test with a seed, and every model is trained with the Bernoulli likelihood for the
same number of epochs. Prints one JSON row per model and a markdown table; writes the test
ELBO chart per variant and, for z-dim 2 on the rotated digits, the learned manifold of each
model decoded at theta = 0, dx = 0 (the paper's Figure 3).

    python benchmarks/mnist_elbo.py --epochs 10
    python benchmarks/mnist_elbo.py --variants rotated --z-dims 2 --models spatial,vanilla
    python benchmarks/mnist_elbo.py --replot rows.jsonl   # chart and table of saved rows

``--replot`` reads JSON rows this script printed (several runs may be concatenated) and
redraws the ELBO charts and the table without training.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from figures import montage, save_lines, save_panels
from mnist_data import VARIANTS, load_mnist, train_test_split, transform_digits

from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.infer import latent_grid
from napari_spatial_vae.core.train import train

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "images" / "results"

#: model name -> (label, ModelConfig fields)
MODELS: dict[str, tuple[str, dict]] = {
    "spatial": ("spatial-VAE (defaults)", {}),
    "spatial-mlp": (
        "spatial-VAE (paper's MLP encoder)",
        {
            "encoder": "mlp",
            "rotation_search": False,
            "theta_kl": "standard",
            "theta_prior": float(np.pi / 4),
        },
    ),
    "fixed": (
        "fixed pose (theta = dx = 0)",
        {"encoder": "mlp", "rotate": False, "translate": False},
    ),
    "vanilla": ("vanilla VAE", {"encoder": "mlp", "vanilla": True}),
}


def model_config(name: str, z_dim: int, shift_prior: float) -> ModelConfig:
    """The project's defaults with the Bernoulli likelihood, changed only where the model needs."""
    return ModelConfig(
        z_dim=z_dim,
        likelihood="bernoulli",
        fit_noise=False,
        # every model must explain every pixel, or the ELBOs would not be comparable
        circular_mask=False,
        dx_prior=shift_prior,
        **MODELS[name][1],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--z-dims", default="2,5,10")
    parser.add_argument("--models", default="spatial,spatial-mlp,fixed,vanilla")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-digits", type=int, default=10000, help="use the first N digits")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--z-delay", type=int, default=2,
        help="epochs with z frozen (2: how docs/results.md was measured; the default is now 0)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figures", type=Path, default=FIGURES, help="folder for the PNGs")
    parser.add_argument("--replot", type=Path, default=None, help="JSON rows to chart, no training")
    args = parser.parse_args()
    if args.replot is not None:
        lines = args.replot.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            save_chart(rows, variant, args.figures)
        print_table(rows)
        return
    torch.set_num_threads(args.threads)
    z_dims = [int(z) for z in args.z_dims.split(",")]
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS)) + sorted(
        set(args.variants.split(",")) - set(VARIANTS)
    )
    if unknown:
        parser.error(f"unknown model or variant: {', '.join(unknown)}")

    digits = load_mnist()[: args.n_digits]
    rows = []
    for variant in args.variants.split(","):
        images, _, _ = transform_digits(digits, variant, seed=args.seed)
        train_images, test_images = train_test_split(images, args.n_test, seed=args.seed)
        shift_prior = VARIANTS[variant][1] / (images.shape[-1] - 1)
        manifolds: list[tuple[str, np.ndarray]] = []
        for z_dim in z_dims:
            for name in names:
                config = TrainConfig(
                    model=model_config(name, z_dim, shift_prior),
                    epochs=args.epochs,
                    normalize=False,
                    # the data's own pose distribution, identical for every model
                    augment_rotation=False,
                    seed=args.seed,
                    z_delay=args.z_delay,
                )
                with tempfile.TemporaryDirectory() as run_dir:
                    started = time.perf_counter()
                    result = train(config, train_images, run_dir, test_images=test_images)
                    wall = time.perf_counter() - started
                test = [r for r in result.history if r["split"] == "test"][-1]
                row = {
                    "variant": variant,
                    "canvas": images.shape[-1],
                    "model": name,
                    "z_dim": z_dim,
                    "epochs": result.epochs_completed,
                    "test_elbo": round(test["elbo"], 2),
                    "train_elbo": round(
                        [r for r in result.history if r["split"] == "train"][-1]["elbo"], 2
                    ),
                    "wall_s": round(wall, 1),
                    # what the particles share that the model does not render, as a share of
                    # what z renders (core/unrendered.py; training warns above 0.25)
                    "unrendered": None
                    if result.unrendered is None
                    else round(result.unrendered.share, 3),
                    # 1: z looked folded a third of the way in and training started again
                    "restarts": result.restarts,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                if z_dim == 2 and variant == "rotated":
                    manifolds.append((name, latent_grid(result.model, steps=11)))
        if manifolds:
            save_panels(
                [montage(grid) for _, grid in manifolds],
                [MODELS[name][0] for name, _ in manifolds],
                args.figures / "mnist_manifolds_z2.png",
                suptitle="Rotated MNIST, z-dim 2: decoded on an 11x11 grid of z (theta = dx = 0)",
            )
        save_chart(rows, variant, args.figures)
    print_table(rows)


def save_chart(rows: list[dict], variant: str, folder: Path) -> None:
    """Test ELBO against z-dim, one line per model, for one data variant."""
    rows = [r for r in rows if r["variant"] == variant]
    chart = {
        MODELS[name][0]: (
            [r["z_dim"] for r in rows if r["model"] == name],
            [r["test_elbo"] for r in rows if r["model"] == name],
        )
        for name in MODELS
        if any(r["model"] == name for r in rows)
    }
    epochs = sorted({r["epochs"] for r in rows})
    title = f"{variant}, {'/'.join(map(str, epochs))} epochs"
    save_lines(chart, folder / f"mnist_elbo_{variant}.png", "z-dim", "test ELBO (nats)", title)


def print_table(rows: list[dict]) -> None:
    """Markdown: one line per variant and model, test ELBO per z-dim."""
    z_dims = sorted({r["z_dim"] for r in rows})
    print("\n| data | model | " + " | ".join(f"z={z}" for z in z_dims) + " |")
    print("|---|---|" + "---|" * len(z_dims))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        present = {r["model"] for r in rows if r["variant"] == variant}
        for name in (n for n in MODELS if n in present):
            cells = {
                r["z_dim"]: r["test_elbo"]
                for r in rows
                if (r["variant"], r["model"]) == (variant, name)
            }
            line = " | ".join(f"{cells[z]:.1f}" if z in cells else "" for z in z_dims)
            print(f"| {variant} | {MODELS[name][0]} | {line} |")


if __name__ == "__main__":
    main()
