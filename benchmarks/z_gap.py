"""Where does z lose the motion? The encoder, the pose, or what the generator learned.

For each kept run (``design_family.py --keep-runs DIR``: ``DIR/<design>_s<seed>``), new
particles of its design (data seed 2000 + seed, as ``--apply-snr`` draws them) at ``--snr``
are read seven ways, each scored by how much of the motion z holds (|Pearson| with it; for
two motions the multiple correlation of both latents with the worse one, ``linear_z`` of
``design_family.py``, whichever way the axes are turned):

* ``encoder``: the encoder's posterior mean, and ``refined``: as ``spatial-vae infer``
  reports it (``core/refine.py``);
* ``generator``: the posterior mean of z under the trained generator's own likelihood, on a
  grid of z (prior N(0, 1)), the particle aligned by the encoder's pose; ``+ pose``: the
  same with the pose marginalised over +-8 degrees and +-1 pixel around the encoder's;
* ``generator, clean pose``: the noisy particle aligned by the pose the encoder reads from its
  noise-free image, the pose as well as this model could know it;
* ``clean: encoder``, ``clean: generator``: the noise-free particles themselves, what the
  model's z can tell at all (a model whose generator renders only part of the motion scores
  low here, however good its encoder).

The likelihood compares each particle, aligned into the model's frame (bilinear) and
centred inside the circular mask, with each rendering scaled to it (its amplitude profiled
out, as the refinement does), with white noise of variance 1 / (1 + SNR) of the
standardised particle: the generator's renderings, not its learned per-pixel noise. A low
``clean: generator`` may also come from the encoder's pose of the noise-free particle. A
generator column well above ``refined`` says the encoder (an amortised reading) is what
loses the motion; ``clean: generator`` well below 1 says the generator never learned the
whole motion. Compare with ``design_oracle.py`` (what the data allow).

    python benchmarks/z_gap.py RUNS/tilted-hinge_s0 RUNS/three-domain_s3 --snr 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch
from design_family import _model_input, _motion_scores  # same folder: run as a script
from design_oracle import pose_offsets

from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.coords import align_images, circular_mask, pixels_to_shift
from napari_spatial_vae.core.designs import DESIGNS, simulate_design
from napari_spatial_vae.core.errors import SpatialVAEError
from napari_spatial_vae.core.refine import refine_z

COLUMNS = ("encoder", "refined", "generator", "generator + pose", "generator, clean pose",
           "clean: encoder", "clean: generator")  # fmt: skip


def z_grid(z_dim: int) -> torch.Tensor:
    """``(G, Z)`` the z values scored: 57 per axis for one latent, 25 per axis for two."""
    axis = torch.linspace(-3.5, 3.5, 57 if z_dim == 1 else 25)
    return torch.stack(torch.meshgrid(*[axis] * z_dim, indexing="ij"), -1).reshape(-1, z_dim)


@torch.no_grad()
def generator_z(
    model,
    images: torch.Tensor,
    theta: torch.Tensor,
    shift: torch.Tensor,
    noise_var: float,
    z_dim: int,
    window_deg: float = 0.0,
    window_px: float = 0.0,
) -> torch.Tensor:
    """The posterior mean of z under the generator's likelihood, the pose near the given one.

    Parameters
    ----------
    images
        ``(N, 1, H, W)`` preprocessed particles.
    theta, shift
        ``(N,)`` radians and ``(N, 2)`` coordinate units: the pose the particles are aligned by.
    noise_var
        Per-pixel noise variance of the preprocessed particles.
    z_dim
        The model's number of latents (1 or 2).
    window_deg, window_px
        Marginalise the pose over this many degrees (2-degree steps) and pixels (half-pixel
        steps, in x and y) around the given one (0: the pose as given).

    Returns
    -------
    torch.Tensor
        ``(N, Z)``.
    """
    height, width = images.shape[-2:]
    inside = circular_mask(height, width).flatten()
    grid = z_grid(z_dim)
    renderings = model.decode(grid, None, None, len(grid))[0].float().flatten(1)
    if renderings.shape[1] != int(inside.sum()):  # rendered on the whole box
        renderings = renderings[:, inside]
    templates = renderings - renderings.mean(1, keepdim=True)
    templates = templates / templates.norm(dim=1, keepdim=True).clamp_min(1e-12)
    log_prior = -0.5 * (grid**2).sum(1)

    turns, moves = pose_offsets(window_deg, 2.0, window_px, 0.5)  # the oracle's pose grid
    log_likelihoods = []
    for turn, move in zip(turns, moves, strict=True):
        moved = shift + pixels_to_shift(shift.new_tensor(move), height, width)
        aligned = align_images(images, theta + float(turn), moved).flatten(1)[:, inside]
        aligned = aligned - aligned.mean(1, keepdim=True)
        # each rendering scaled to the particle: the amplitude profiled out
        log_likelihoods.append((aligned @ templates.T) ** 2 / (2 * noise_var))
    log_posterior = torch.logsumexp(torch.stack(log_likelihoods), 0) + log_prior
    weights = torch.softmax(log_posterior.double(), dim=1)
    return (weights @ grid.double()).float()


class UnusableRun(ValueError):
    """A folder this benchmark cannot read (the message is one line)."""


def gap_row(run_dir: str, snr: float | None, n: int) -> dict:
    """The seven readings of one kept run on ``n`` new particles of its design.

    ``snr`` None: the design's own (not the one the run may have been trained at).
    """
    name, _, seed = os.path.basename(os.path.normpath(run_dir)).rpartition("_s")
    if name not in DESIGNS or not seed.isdigit():
        raise UnusableRun(f"{run_dir}: not a design_family run folder (<design>_s<seed>)")
    design = DESIGNS[name]
    try:
        model, config, _ = load_model(run_dir)
    except SpatialVAEError as error:
        raise UnusableRun(f"{run_dir}: {error}") from None
    model.eval()
    z_dim = config.model.z_dim
    if z_dim not in (1, 2):
        raise UnusableRun(f"{run_dir}: z_dim {z_dim}; this benchmark grids z-dim 1 or 2")
    snr = snr or design.snr
    # the box the run was trained on (design_family.py --size may have changed it)
    size = model.image_shape[-1]
    particles = simulate_design(design, n, 2000 + int(seed), snr=snr, size=size)
    clean = dataclasses.replace(particles, images=particles.clean)
    noisy_in, clean_in = _model_input(config, particles), _model_input(config, clean)
    with torch.no_grad():
        theta, shift, z = model.split_latent(model.encode(noisy_in).mu)
        clean_theta, clean_shift, clean_z = model.split_latent(model.encode(clean_in).mu)
    noise_var = 1.0 / (1.0 + snr)  # of a standardised particle
    readings = {
        "encoder": z,
        "refined": refine_z(model, noisy_in, theta, shift, z),
        "generator": generator_z(model, noisy_in, theta, shift, noise_var, z_dim),
        "generator + pose": generator_z(model, noisy_in, theta, shift, noise_var, z_dim, 8.0, 1.0),
        "generator, clean pose": generator_z(
            model, noisy_in, clean_theta, clean_shift, noise_var, z_dim
        ),
        "clean: encoder": clean_z,
        # noise-free: a sharp likelihood, the best-fitting z
        "clean: generator": generator_z(model, clean_in, clean_theta, clean_shift, 1e-3, z_dim),
    }
    # the multiple correlation of all latents (|Pearson| for one): how much of the motion z
    # holds, whichever way its axes are turned
    scores = {
        k: round(min(_motion_scores(v.numpy(), particles)[1]), 3) for k, v in readings.items()
    }
    return {"run": run_dir, "design": name, "seed": int(seed), "snr": snr, "n": n, **scores}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders <design>_s<seed> (--keep-runs)")
    parser.add_argument(
        "--snr", type=float, default=None, help="the particles' SNR (default the design's)"
    )
    parser.add_argument("--n", type=int, default=600, help="particles per run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.snr is not None and args.snr <= 0:
        parser.error("--snr must be positive")
    if args.n < 3:
        parser.error("--n must be at least 3")
    torch.set_num_threads(args.threads)
    rows = []
    for run_dir in args.runs:
        if not os.path.isdir(run_dir):
            parser.error(f"{run_dir}: no such run folder")
        try:
            rows.append(gap_row(run_dir, args.snr, args.n))
        except UnusableRun as error:
            parser.error(str(error))
        print(json.dumps(rows[-1]), flush=True)
    print("| run | SNR | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
        print(f"| {row['design']} s{row['seed']} | {row['snr']} | {cells} |")


if __name__ == "__main__":
    main()
