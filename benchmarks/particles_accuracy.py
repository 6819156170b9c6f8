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

``--ctf`` (issue 11): 64-px particles at 3 Å/px filtered by a per-particle astigmatic CTF
(defocus 0.5-3.5 µm, astigmatism up to 300 Å, SNR 0.3 after the CTF), written to RELION 3.1
.star files and read back, as a user would train; the CTF is then modelled (default) or
ignored (``ctf=off``). It also reports |Pearson(z, defocus)|, and ``--figure`` shows raw
particles, the CTF-free reconstructions and the traversal.

    python benchmarks/particles_accuracy.py --ctf --minutes 10
    python benchmarks/particles_accuracy.py --ctf --minutes 10 ctf=off

``pearson_z`` scores z as ``spatial-vae infer`` reports it, ``pearson_z_encoder`` the
encoder's mean; ``circ_fl_state`` is Fisher-Lee once the part of the angle error that
follows z is taken out (``metrics.circular_correlation_fl_within_state``: the frame a
flexible particle is measured in); ``--search-rotation`` adds the same model's scores with
each rotation searched on the whole circle (``searched``).
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
from napari_spatial_vae.core.infer import encode_stack, iter_inference, latent_traversal
from napari_spatial_vae.core.simulate import CtfSimulation, render_particles, simulate_particles
from napari_spatial_vae.core.train import train

TRAVERSAL_STEPS = 9


def apply_overrides(config: TrainConfig, items: list[str]) -> None:
    """Set ``field=value`` items on the config; ``model.field`` or a bare model field name."""
    for item in items:
        key, _, text = item.partition("=")
        try:
            # "false"/"true" as the CLI writes them, else a Python literal, else a string
            value = {"false": False, "true": True}.get(text.lower())
            value = ast.literal_eval(text) if value is None else value
        except (ValueError, SyntaxError):
            value = text
        name = key.removeprefix("model.")
        on_model = key.startswith("model.") or hasattr(config.model, name)
        if not hasattr(config.model if on_model else config, name):
            raise SystemExit(f"unknown setting {key!r} in {item!r}")
        setattr(config.model if on_model else config, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="field=value, e.g. model.z_dim=1 lr=1e-3")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--snr", type=float, default=None, help="default 1, with --ctf 0.3")
    parser.add_argument("--size", type=int, default=None, help="box, default 40, with --ctf 64")
    parser.add_argument(
        "--ctf", action="store_true", help="CTF-affected particles read from RELION .star files"
    )
    parser.add_argument("--dark", action="store_true", help="with --ctf: dark particles")
    parser.add_argument("--pixel-size", type=float, default=3.0, help="with --ctf: Å per pixel")
    parser.add_argument("--minutes", type=float, default=None, help="training budget")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tilt", type=float, default=0.0, help="max out-of-plane tilt, degrees")
    parser.add_argument("--figure", type=Path, default=None, help="write the traversal PNG here")
    parser.add_argument(
        "--run-dir", type=Path, default=None,
        help="train into this folder and keep it (the checkpoint, to look at the model after); "
        "default a temporary folder",
    )  # fmt: skip
    parser.add_argument(
        "--search-rotation", action="store_true",
        help="also score the same model with each rotation searched on the whole circle "
        "(spatial-vae infer --search-rotation; z-dim 1)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.snr = args.snr if args.snr is not None else (0.3 if args.ctf else 1.0)
    args.size = args.size if args.size is not None else (64 if args.ctf else 40)

    data_dir = tempfile.TemporaryDirectory()
    sim, train_images, test_images = benchmark_particles(args, Path(data_dir.name))
    config = TrainConfig(model=ModelConfig(z_dim=1), seed=args.seed)
    apply_overrides(config, args.overrides)
    if args.epochs is not None:
        config.epochs = args.epochs
    config.max_minutes = args.minutes

    with tempfile.TemporaryDirectory() as scratch_run:
        started = time.perf_counter()
        run_dir = args.run_dir if args.run_dir is not None else scratch_run
        result = train(config, train_images, run_dir, test_images=test_images)
        wall = time.perf_counter() - started
    poses = encode_stack(result.model, config, test_images)
    # z as the encoder gives it, next to z read against the generator (spatial-vae infer's)
    encoders = encode_stack(result.model, config, test_images, refine_steps=0)
    truth = sim.theta[args.n_train :]
    correlations = [
        metrics.pearson(poses.z[:, k], sim.conformation[args.n_train :])
        for k in range(poses.z.shape[1])
    ]
    encoder_correlations = [
        metrics.pearson(encoders.z[:, k], sim.conformation[args.n_train :])
        for k in range(encoders.z.shape[1])
    ]
    test_elbo = [r["elbo"] for r in result.history if r["split"] == "test"]
    row = {
        "overrides": " ".join(args.overrides) or "(defaults)",
        "ctf_data": bool(args.ctf),
        "size": args.size,
        "snr": args.snr,
        "n_train": args.n_train,
        "tilt_deg": args.tilt,
        "epochs": result.epochs_completed,
        "wall_s": round(wall, 1),
        "img_per_s": round(result.images_per_second, 1),
        "pearson_z": round(max((abs(c) for c in correlations), default=0.0), 3),
        "pearson_z_encoder": round(max((abs(c) for c in encoder_correlations), default=0.0), 3),
        "circ_fl": round(abs(metrics.circular_correlation_fl(poses.theta, truth)), 3),
        # without the angle's drift along z (docs/results.md "Which frame the angle is
        # measured in")
        "circ_fl_state": round(
            abs(metrics.circular_correlation_fl_within_state(poses.theta, truth, poses.z)), 3
        )
        if poses.z.shape[1]
        else None,
        "circ_js": round(abs(metrics.circular_correlation_js(poses.theta, truth)), 3),
        "angle_align": round(metrics.angle_alignment(poses.theta, truth), 3),
        # particles aligned upside down (docs/defaults.md, "Known limitation: 180-degree flips")
        "half_turned": round(metrics.half_turn_fraction(poses.theta, truth), 3),
        "test_elbo": round(test_elbo[-1], 1) if test_elbo else None,
    }
    if args.search_rotation:
        searched = encode_stack(result.model, config, test_images, search_rotation=True)
        row["searched"] = {
            "pearson_z": round(
                abs(metrics.pearson(searched.z[:, 0], sim.conformation[args.n_train :])), 3
            ),
            "circ_fl": round(abs(metrics.circular_correlation_fl(searched.theta, truth)), 3),
            "angle_align": round(metrics.angle_alignment(searched.theta, truth), 3),
            "half_turned": round(metrics.half_turn_fraction(searched.theta, truth), 3),
        }
    if sim.ctf is not None:
        defocus = 0.5 * (sim.ctf.column("defocus_u") + sim.ctf.column("defocus_v"))
        row["pearson_z_defocus"] = round(
            max(
                (
                    abs(metrics.pearson(poses.z[:, k], defocus[args.n_train :]))
                    for k in range(poses.z.shape[1])
                ),
                default=0.0,
            ),
            3,
        )
    if args.figure is not None and correlations:
        if args.ctf:
            save_ctf_figure(result.model, config, test_images, correlations, args.figure, row)
        else:
            save_traversal(result.model, correlations, args.figure, row["overrides"])
    data_dir.cleanup()
    print(json.dumps(row))


def benchmark_particles(args: argparse.Namespace, folder: Path):
    """``(simulation, train stack, test stack)`` of the benchmark's settings in ``args``.

    Data seed 1000 + ``args.seed``; with ``args.ctf`` the stacks are RELION .star files in
    ``folder`` (read back lazily), else arrays. ``args`` needs ``n_train``, ``n_test``,
    ``size``, ``snr``, ``tilt``, ``seed``, ``ctf``, ``dark`` and ``pixel_size``.
    """
    sim = simulate_particles(
        args.n_train + args.n_test,
        args.size,
        snr=args.snr,
        max_tilt_deg=args.tilt,
        seed=1000 + args.seed,
        ctf=CtfSimulation(dark=args.dark, pixel_size=args.pixel_size) if args.ctf else None,
    )
    if args.ctf:
        return sim, *star_files(sim, args.n_train, folder, args.pixel_size)
    return sim, sim.images[: args.n_train], sim.images[args.n_train :]


def star_files(sim, n_train: int, folder: Path, pixel_size: float):
    """Write the train and test particles as RELION .star + .mrcs and open them (lazily)."""
    import pandas as pd

    from napari_spatial_vae.io import read_stack
    from napari_spatial_vae.io.ctf_params import write_particles_star

    stacks = []
    for name, rows in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        truth = pd.DataFrame(
            {
                "conformation": sim.conformation[rows],
                "theta": sim.theta[rows],
                "dx": sim.shift_px[rows, 0],
                "dy": sim.shift_px[rows, 1],
            }
        )
        ctf = sim.ctf.subset(np.arange(len(sim.images))[rows])
        write_particles_star(folder / f"{name}.star", sim.images[rows], pixel_size, ctf, truth)
        stacks.append(read_stack(folder / f"{name}.star"))
    return stacks[0], stacks[1]


def save_ctf_figure(model, config, test_stack, correlations, path: Path, row) -> None:
    """Raw test particles, their CTF-free reconstructions (theta = dx = 0) and the traversal."""
    from figures import montage, save_panels

    n = TRAVERSAL_STEPS
    batch = next(
        iter_inference(model, config, test_stack.subset(np.arange(n)), n, reconstructions=True)
    )
    raw = test_stack.read_batch(np.arange(n))
    walk = latent_traversal(model, n)[0]
    walk = walk[::-1] if correlations[0] < 0 else walk

    def unit(images):
        images = np.asarray(images, dtype=np.float32)
        low = images.min(axis=(1, 2), keepdims=True)
        return (images - low) / np.maximum(np.ptp(images, axis=(1, 2), keepdims=True), 1e-8)

    tiles = np.stack([unit(raw), unit(batch.reconstructions), unit(walk)])
    label = "CTF modelled" if config.ctf != "off" else "CTF ignored"
    middle = "CTF-free reconstructions" if config.ctf != "off" else "reconstructions"
    title = f"{label}: raw test particles / {middle} / z traversal"
    save_panels([montage(tiles)], [title], path)


def save_traversal(model, correlations: list[float], path: Path, label: str) -> None:
    """The true motion (top row) above the learned traversal of each latent (paper Fig. 4)."""
    # matplotlib (the bench extra) only when a figure is asked for; particles_trace imports us
    from figures import montage, save_panels

    quantiles = np.linspace(0.05, 0.95, TRAVERSAL_STEPS)
    zeros = np.zeros(TRAVERSAL_STEPS)
    size = model.image_shape[-1]
    truth = render_particles(quantiles, zeros, np.zeros((TRAVERSAL_STEPS, 2)), zeros, size)
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
