"""Where does z lose the motion? The encoder, the pose, or what the generator learned.

For each kept run (``design_family.py --keep-runs DIR``: ``DIR/<design>_s<seed>``), new
particles of its design (data seed 2000 + seed, as ``--apply-snr`` draws them) at ``--snr``
are read nine ways, each scored by how much of the motion z holds (|Pearson| with it; for
two motions the multiple correlation of both latents with the worse one, ``linear_z`` of
``design_family.py``, whichever way the axes are turned):

* ``encoder``: the encoder's posterior mean; ``inferred``: as ``spatial-vae infer`` reports
  it (``core/infer.read_z``: the posterior mean on a grid for one latent, for a run that kept
  its training particles' z, else the refined z); ``refined``: the encoder's mean refined
  against the generator (``core/refine.py``, what inference reported before 2026-12-05);
* ``generator``: the posterior mean of z under the trained generator's own likelihood, on a
  grid of z (prior N(0, 1)), the particle aligned by the encoder's pose; ``+ pose``: the
  same with the pose marginalised over +-8 degrees and +-1 pixel around the encoder's;
* ``generator, clean pose``: the noisy particle aligned by the pose the encoder reads from its
  noise-free image, the pose as well as this model could know it;
* ``clean: encoder``, ``clean: generator``: the noise-free particles themselves, what the
  model's z can tell at all (a model whose generator renders only part of the motion scores
  low here, however good its encoder);
* ``own renderings``: the generator's renderings of the z it reads from the noise-free
  particles (``clean: generator``), with white noise added at the particles' own SNR inside
  the circular mask (on these designs about 1.27 times the SNR over the whole box), read back
  at their exact pose: how far apart the generator renders the conformations, the ceiling
  for any reading at a known pose with this generator. Well below ``truth`` means the
  generator renders the motion with less contrast than the particles have;
* ``truth``: the same reading with the design's own renderer in place of the generator, each
  particle aligned by its true pose and scored against renderings of every conformation at
  its true tilt: what this way of reading allows on these particles (near the oracle of
  ``design_oracle.py`` with the pose known), the ceiling for the generator columns.

With ``--any-rotation`` a column ``generator + any rotation`` marginalises the rotation over
the whole circle (3-degree steps, and the shift within +-1 pixel): a particle whose encoder
pose is far off (a half turn, say) is then read at the rotations that fit it. Every row also
says how far the model's frame turns with the motion (``frame turn``: the spread, 5th to
95th percentile in degrees, of the part of the encoder's rotation error on the noise-free
particles that a cubic in the motion explains, and that part's share of the error's
variance): a model may hold the body still and move the arm, or turn its frame with the
arm, and the generator renders the motion differently in each.

The likelihood compares each particle, aligned into the model's frame (bilinear) and
centred inside the circular mask, with each rendering scaled to it (its amplitude profiled
out, as the refinement does), with white noise of variance 1 / (1 + SNR) of the
standardised particle: the generator's renderings, not its learned per-pixel noise. A low
``clean: generator`` may also come from the encoder's pose of the noise-free particle. A
generator column well above ``refined`` says the encoder (an amortised reading) is what
loses the motion; ``clean: generator`` well below 1 says the generator never learned the
whole motion. Compare with ``design_oracle.py`` (what the data allow).

    python benchmarks/z_gap.py RUNS/tilted-hinge_s0 RUNS/three-domain_s3 --snr 0.1
    python benchmarks/z_gap.py RUNS/tilted-hinge_s0 --snr 0.1 --any-rotation --n 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import torch
from design_family import _model_input, _motion_scores  # same folder: run as a script
from design_oracle import conformation_grid, pose_offsets

from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.coords import (
    align_images,
    circular_mask,
    pixels_to_shift,
    rotation_matrices,
)
from napari_spatial_vae.core.designs import (
    DESIGNS,
    Design,
    DesignParticles,
    render_design,
    simulate_design,
)
from napari_spatial_vae.core.errors import SpatialVAEError
from napari_spatial_vae.core.infer import read_z
from napari_spatial_vae.core.refine import refine_z

COLUMNS = ("encoder", "inferred", "refined", "generator", "generator + pose",
           "generator, clean pose", "clean: encoder", "clean: generator", "own renderings",
           "truth")  # fmt: skip
ANY_ROTATION = "generator + any rotation"


def z_grid(z_dim: int) -> torch.Tensor:
    """``(G, Z)`` the z values scored: 57 per axis for one latent, 25 per axis for two."""
    axis = torch.linspace(-3.5, 3.5, 57 if z_dim == 1 else 25)
    return torch.stack(torch.meshgrid(*[axis] * z_dim, indexing="ij"), -1).reshape(-1, z_dim)


def nearby_poses(window_deg: float, window_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The poses ``generator_z`` marginalises over, around the given one.

    ``(P,)`` radians and ``(P, 2)`` pixels: the oracle's grid (2-degree and half-pixel steps)
    within the windows, or with ``window_deg`` 180 or more every rotation of the circle in
    3-degree steps (each once) with every shift of the pixel window.
    """
    if window_deg < 180:
        return pose_offsets(window_deg, 2.0, window_px, 0.5)
    _, moves = pose_offsets(0.0, 1.0, window_px, 0.5)
    turns = np.radians(np.arange(-180.0, 180.0, 3.0))
    return np.repeat(turns, len(moves)), np.tile(moves, (len(turns), 1))


@torch.no_grad()
def posterior_mean(
    templates: torch.Tensor,
    grid: torch.Tensor,
    images: torch.Tensor,
    theta: torch.Tensor,
    shift: torch.Tensor,
    noise_var: float,
    turns: np.ndarray,
    moves: np.ndarray,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """The posterior mean of a latent over a bank of templates, the pose marginalised.

    Parameters
    ----------
    templates
        ``(G, M)`` or per particle ``(N, G, M)``: the rendering of each grid value, its
        ``M`` pixels inside the circular mask, in the frame ``theta`` and ``shift`` align to.
    grid
        ``(G, D)`` the latent's value of each template.
    images
        ``(N, 1, H, W)`` preprocessed particles.
    theta, shift
        ``(N,)`` radians and ``(N, 2)`` coordinate units: the pose each particle is aligned by.
    noise_var
        Per-pixel white-noise variance of the preprocessed particles.
    turns, moves
        ``(P,)`` radians and ``(P, 2)`` pixels added to the pose (:func:`nearby_poses`).
    log_prior
        ``(G,)`` the grid's log prior (default uniform).

    Returns
    -------
    torch.Tensor
        ``(N, D)``.
    """
    height, width = images.shape[-2:]
    inside = circular_mask(height, width).flatten()
    unit = templates - templates.mean(-1, keepdim=True)
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    total = None  # log-sum over the poses so far, (N, G): a running sum keeps memory to one pose
    for turn, move in zip(turns, moves, strict=True):
        moved = shift + pixels_to_shift(shift.new_tensor(move), height, width)
        aligned = align_images(images, theta + float(turn), moved).flatten(1)[:, inside]
        aligned = aligned - aligned.mean(1, keepdim=True)
        # each template scaled to the particle: the amplitude profiled out
        if unit.dim() == 2:
            projection = aligned @ unit.T
        else:
            projection = torch.einsum("nm,ngm->ng", aligned, unit)
        log_likelihood = projection.double() ** 2 / (2 * noise_var)
        total = log_likelihood if total is None else torch.logaddexp(total, log_likelihood)
    assert total is not None
    if log_prior is not None:
        total = total + log_prior.double()
    return (torch.softmax(total, dim=1) @ grid.double()).float()


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
        Marginalise the pose over :func:`nearby_poses` of these windows (0: the pose as
        given; 180 degrees: any rotation).

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
    turns, moves = nearby_poses(window_deg, window_px)
    log_prior = -0.5 * (grid**2).sum(1)
    return posterior_mean(
        renderings, grid, images, theta, shift, noise_var, turns, moves, log_prior
    )


@torch.no_grad()
def own_renderings_reading(model, z: torch.Tensor, snr: float, seed: int) -> torch.Tensor:
    """The generator's renderings of ``z`` ``(N, Z)`` with white noise of ``snr``, read back.

    Each rendering is standardised inside the circular mask, noise is added so that signal
    over noise variance there is ``snr``, and z is read by :func:`generator_z` at the exact
    pose (the model's frame, no rotation or shift). Returns ``(N, Z)``.
    """
    height, width = model.image_shape[1:]
    zeros = torch.zeros(len(z))
    rendering = model.expected_image(model.decode(z, zeros, z.new_zeros(len(z), 2))[0]).float()
    # inside the circular mask, as the particles are compared
    inside = circular_mask(height, width).reshape(1, 1, height, width)
    signal = rendering - (rendering * inside).sum((2, 3), keepdim=True) / inside.sum()
    signal = signal / (signal * inside).pow(2).sum((2, 3), keepdim=True).div(inside.sum()).sqrt()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(rendering.shape, generator=generator)
    noisy = (snr / (1 + snr)) ** 0.5 * signal + (1 / (1 + snr)) ** 0.5 * noise
    return generator_z(model, noisy, zeros, z.new_zeros(len(z), 2), 1 / (1 + snr), z.shape[1])


def true_pose(particles: DesignParticles, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose that aligns each particle onto the design rendered at no rotation and shift.

    ``(N,)`` radians and ``(N, 2)`` coordinate units, for :func:`~.coords.align_images`. The
    design moves the object (rotated, then shifted); the model's convention moves the
    coordinates, so the shift enters turned back by the rotation.
    """
    theta = torch.from_numpy(particles.theta).float()
    pixels = torch.from_numpy(particles.shift_px).float()
    turned_back = -torch.einsum("nji,nj->ni", rotation_matrices(theta), pixels)
    return theta, pixels_to_shift(turned_back, size, size)


@torch.no_grad()
def truth_reading(
    design: Design, particles: DesignParticles, images: torch.Tensor, noise_var: float
) -> torch.Tensor:
    """The motion read from ``images`` by :func:`posterior_mean` with the design's renderer.

    Each particle aligned by its true pose, against renderings of every conformation of a
    grid (41 per motion, 15 per motion for two) at its own tilt; the prior uniform.

    Returns
    -------
    torch.Tensor
        ``(N, K)`` the posterior mean of the conformation.
    """
    size = images.shape[-1]
    motions = particles.conformation.shape[1]
    grid = conformation_grid(motions, 41 if motions == 1 else 15)
    inside = circular_mask(size, size).flatten()
    theta, shift = true_pose(particles, size)
    grid_values, no_offset = torch.from_numpy(grid), (np.zeros(1), np.zeros((1, 2)))
    readings = []
    # per-particle templates (each at its own tilt), a few particles at a time for memory
    for rows in np.array_split(np.arange(len(images)), max(1, len(images) // 32)):
        count = len(rows) * len(grid)
        renderings = render_design(
            design, np.tile(grid, (len(rows), 1)), np.zeros(count), np.zeros((count, 2)),
            np.repeat(particles.tilt[rows], len(grid)), size=size,
        )  # fmt: skip
        templates = torch.from_numpy(renderings).reshape(len(rows), len(grid), -1)[..., inside]
        index = torch.from_numpy(rows)
        pose = theta[index], shift[index]
        readings.append(
            posterior_mean(templates, grid_values, images[index], *pose, noise_var, *no_offset)
        )
    return torch.cat(readings)


def frame_turn(encoder_theta: np.ndarray, particles: DesignParticles) -> tuple[float, float]:
    """How far the model's frame turns with the motion.

    The encoder's rotation error (``(N,)`` radians, against the truth after the best global
    offset) fitted by a cubic in each motion; returns the fit's spread (5th to 95th
    percentile, degrees) and its share of the error's variance.
    """
    difference = np.exp(1j * (encoder_theta - particles.theta))
    error = np.degrees(np.angle(difference * np.conj(difference.mean())))
    conformation = particles.conformation
    columns = [np.ones(len(error))]
    columns += [conformation[:, k] ** j for k in range(conformation.shape[1]) for j in (1, 2, 3)]
    features = np.column_stack(columns)
    fitted = features @ np.linalg.lstsq(features, error, rcond=None)[0]
    spread = float(np.percentile(fitted, 95) - np.percentile(fitted, 5))
    share = 1.0 - float(np.var(error - fitted) / max(np.var(error), 1e-12))
    return round(spread, 1), round(share, 3)


class UnusableRun(ValueError):
    """A folder this benchmark cannot read (the message is one line)."""


def gap_row(run_dir: str, snr: float | None, n: int, any_rotation: bool = False) -> dict:
    """The readings of one kept run on ``n`` new particles of its design.

    ``snr`` None: the design's own (not the one the run may have been trained at);
    ``any_rotation`` adds the column :data:`ANY_ROTATION` (slow: 3,000 poses).
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
        posterior = model.encode(noisy_in)
        theta, shift, z = model.split_latent(posterior.mu)
        z_std = model.split_latent(torch.exp(posterior.logstd))[2]
        clean_theta, clean_shift, clean_z = model.split_latent(model.encode(clean_in).mu)
    noise_var = 1.0 / (1.0 + snr)  # of a standardised particle
    readings = {
        "encoder": z,
        "inferred": read_z(model, noisy_in, theta, shift, z, z_std)[0],
        "refined": refine_z(model, noisy_in, theta, shift, z),
        "generator": generator_z(model, noisy_in, theta, shift, noise_var, z_dim),
        "generator + pose": generator_z(model, noisy_in, theta, shift, noise_var, z_dim, 8.0, 1.0),
        "generator, clean pose": generator_z(
            model, noisy_in, clean_theta, clean_shift, noise_var, z_dim
        ),
        "clean: encoder": clean_z,
        # noise-free: a sharp likelihood, the best-fitting z
        "clean: generator": generator_z(model, clean_in, clean_theta, clean_shift, 1e-3, z_dim),
        "truth": truth_reading(design, particles, noisy_in, noise_var),
    }
    # the particles' SNR where they are compared (inside the mask), not over the whole box
    inside = circular_mask(size, size).numpy().reshape(size, size)
    noise = float(np.var(particles.images - particles.clean))
    snr_inside = float(particles.clean[:, inside].var(1).mean()) / noise
    readings["own renderings"] = own_renderings_reading(
        model, readings["clean: generator"], snr_inside, 2000 + int(seed)
    )
    if any_rotation:
        readings[ANY_ROTATION] = generator_z(
            model, noisy_in, theta, shift, noise_var, z_dim, 180.0, 1.0
        )
    # the multiple correlation of all latents (|Pearson| for one): how much of the motion z
    # holds, whichever way its axes are turned
    scores = {
        k: round(min(_motion_scores(v.numpy(), particles)[1]), 3) for k, v in readings.items()
    }
    spread, share = frame_turn(clean_theta.numpy(), particles)
    return {
        "run": run_dir, "design": name, "seed": int(seed), "snr": snr, "n": n, **scores,
        "frame turn (deg)": spread, "frame turn share": share,
    }  # fmt: skip


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
    parser.add_argument(
        "--any-rotation", action="store_true",
        help=f"add the column '{ANY_ROTATION}' (every rotation of the circle; slow)",
    )  # fmt: skip
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
            rows.append(gap_row(run_dir, args.snr, args.n, args.any_rotation))
        except UnusableRun as error:
            parser.error(str(error))
        print(json.dumps(rows[-1]), flush=True)
    columns = (*COLUMNS, ANY_ROTATION) if args.any_rotation else COLUMNS
    print("| run | SNR | " + " | ".join(columns) + " | frame turn (deg, share) |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    for row in rows:
        cells = " | ".join(f"{row[c]:.3f}" for c in columns)
        turn = f"{row['frame turn (deg)']:.1f} ({row['frame turn share']:.2f})"
        print(f"| {row['design']} s{row['seed']} | {row['snr']} | {cells} | {turn} |")


if __name__ == "__main__":
    main()
