"""The rotation measured in the frame of a part held still (``--hold-still``), on kept runs.

A flexible particle's inferred angle drifts with z from the simulator's (which measures the
angle on the body): the model overlays the whole particle. This script scores a kept run's
held-out particles three ways, each with the truth the simulator kept:

* ``circ_fl``: Fisher-Lee of the model's own angle (what the other benchmarks report);
* ``circ_fl_held``: Fisher-Lee once a disk drawn on the reference template is held still
  (``spatial-vae infer --hold-still``, ``core/frame.py``);
* ``circ_fl_state``: Fisher-Lee once the whole drift along z is taken out with the truth
  (``metrics.circular_correlation_fl_within_state``): a reference for the best frame (a
  cubic in z fitted with the truth, not a bound).

The disk is placed by eye, as a user paints it: ``--reference-png`` first writes the
reference template (z = 0) with a pixel grid to place it on. The particles are those the
run was scored on: a design of ``core/designs.py`` (``--design D --seed S``, as
``design_family.py``) or the CTF benchmark's (``--ctf --seed S``, as
``particles_accuracy.py --ctf``; needs ``--snr``/``--size`` only if they were changed).

    python benchmarks/hold_still.py RUN --design three-domain --seed 3 --reference-png ref.png
    python benchmarks/hold_still.py RUN --design three-domain --seed 3 --disk 14,21,8
    python benchmarks/hold_still.py RUN --ctf --seed 0 --disk 30,36,12 --figure trav.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.frame import fit_pose_frame
from napari_spatial_vae.core.infer import encode_stack, latent_traversal, reference_template

sys.path.insert(0, str(Path(__file__).parent))


def disk_mask(shape: tuple[int, int], disk: str) -> np.ndarray:
    """``(H, W)`` bool: the disk ``"x,y,r"`` (pixels: column, row, radius)."""
    x, y, r = (float(v) for v in disk.split(","))
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return (columns - x) ** 2 + (rows - y) ** 2 <= r * r


def held_out(args: argparse.Namespace, folder: Path):
    """``(images, true theta)`` of the held-out particles the run was scored on."""
    if args.ctf:
        from particles_accuracy import benchmark_particles

        # the CTF benchmark's defaults (particles_accuracy.py --ctf): 64 px, SNR 0.3, 3 Å/px
        settings = argparse.Namespace(
            n_train=args.n_train, n_test=args.n_test, size=args.size or 64,
            snr=args.snr or 0.3, tilt=0.0, seed=args.seed, ctf=True, dark=False,
            pixel_size=3.0,
        )  # fmt: skip
        sim, _, test = benchmark_particles(settings, folder)
        return test, sim.theta[args.n_train :]
    from napari_spatial_vae.core.designs import DESIGNS, simulate_design

    data = simulate_design(
        DESIGNS[args.design], args.n_train + args.n_test, 1000 + args.seed,
        snr=args.snr, size=args.size,
    )  # fmt: skip
    return data.images[args.n_train :], data.theta[args.n_train :]


def save_reference(model, path: Path) -> None:
    """The reference template with a pixel grid, to place the disk on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    template = reference_template(model)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(template if template.ndim == 2 else template.mean(-1), cmap="gray")
    step = max(1, template.shape[0] // 10)
    ax.set_xticks(range(0, template.shape[1], step))
    ax.set_yticks(range(0, template.shape[0], step))
    ax.grid(alpha=0.3)
    ax.set_title("reference template (z = 0): x = column, y = row")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def save_traversals(model, frame, mask: np.ndarray, path: Path) -> None:
    """Traversal of z1 in the model's frame (top) and with the disk held still (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [latent_traversal(model, 9)[0], latent_traversal(model, 9, frame=frame)[0]]
    fig, axes = plt.subplots(2, 9, figsize=(13, 3.3))
    for row, images in enumerate(rows):
        for k, image in enumerate(images):
            ax = axes[row, k]
            ax.imshow(image if image.ndim == 2 else image.mean(-1), cmap="gray")
            if row == 1:
                ax.contour(mask, [0.5], colors="y", linewidths=0.7)
            ax.axis("off")
    axes[0, 0].set_title("the model's frame", loc="left", fontsize=10)
    axes[1, 0].set_title("the painted disk held still", loc="left", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a kept run folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--design", help="the design the run was trained on")
    which.add_argument("--ctf", action="store_true", help="the CTF benchmark's particles")
    parser.add_argument("--seed", type=int, required=True, help="the run's seed (data 1000 + S)")
    parser.add_argument("--snr", type=float, default=None, help="if the run changed it")
    parser.add_argument("--size", type=int, default=None, help="if the run changed it")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--disk", help="x,y,r in pixels of the reference template")
    parser.add_argument("--reference-png", type=Path, help="write the reference template here")
    parser.add_argument("--figure", type=Path, help="traversals in both frames (PNG)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, config, _ = load_model(args.run, "cpu")
    if args.reference_png is not None:
        save_reference(model, args.reference_png)
        print(f"wrote {args.reference_png}")
    if args.disk is None:
        return
    mask = disk_mask(model.image_shape[1:], args.disk)
    started = time.perf_counter()
    frame = fit_pose_frame(model, mask)
    fit_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        images, truth = held_out(args, Path(folder))
        poses = encode_stack(model, config, images)
        held = encode_stack(model, config, images, frame=frame)
    row = {
        "run": str(args.run),
        "design": "ctf" if args.ctf else args.design,
        "seed": args.seed,
        "disk": args.disk,
        "fit_s": round(fit_s, 1),
        "frame": frame.describe(),
        "circ_fl": round(abs(metrics.circular_correlation_fl(poses.theta, truth)), 3),
        "circ_fl_held": round(abs(metrics.circular_correlation_fl(held.theta, truth)), 3),
        "circ_fl_state": round(
            abs(metrics.circular_correlation_fl_within_state(poses.theta, truth, poses.z)), 3
        ),
        "angle_align": round(metrics.angle_alignment(poses.theta, truth), 3),
        "angle_align_held": round(metrics.angle_alignment(held.theta, truth), 3),
    }
    if args.figure is not None:
        save_traversals(model, frame, mask, args.figure)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
