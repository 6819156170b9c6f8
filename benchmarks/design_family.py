"""The defaults on a family of simulated particles: z vs the motion, theta, reconstructions.

For each design (``core/designs.py``) and seed: simulate training and held-out particles
(data seed 1000 + seed), train with the defaults (z-dim = the design's number of motions
unless overridden) under a time budget, then score the held-out particles:

* ``pearson_z``: for each motion, the largest |Pearson| of a latent with it (the worst motion
  is reported when there are two), z as ``spatial-vae infer`` reports it (``core/infer.read_z``:
  for z-dim 1 its posterior mean under the generator, ``core/posterior_z.py``, else the
  encoder's mean refined against the generator, ``core/refine.py``); ``pearson_z_encoder`` and
  ``linear_z_encoder`` score the encoder's mean itself;
* ``linear_z``: for each motion, the multiple correlation of all latents with it (how well a
  linear function of z predicts it; equals ``pearson_z`` for z-dim 1, and unlike it does not
  count a rotated mix of two motions over two latent axes as missing; worst motion);
* ``spearman_z``: |Spearman| of the latent ``pearson_z`` picks, per motion (worst motion):
  z's order along the motion whatever its scale (a z spread as its N(0, 1) prior over a
  uniformly drawn motion reads |Pearson| 0.977 at most even in perfect order);
* ``linear_sum_difference`` (two motions): the multiple correlation of all latents with
  the motions' sum and with their difference, ``sum_with_angle_error``, how well the latents
  and the angle error together read the sum, and ``angle_error_from_motions``, how much of
  theta's error a linear function of the motions explains (``metrics.sum_and_difference``:
  a sum z misses while the angle error follows the motions went to the rotation);
* ``pearson_tilt``: the largest |Pearson| of a latent with the out-of-plane tilt (a nuisance
  factor z may take instead of the motion; absent for designs without tilt);
* ``circ_fl``: Fisher-Lee circular correlation of theta with the true rotation;
* ``circ_fl_state``: the same once the part of the angle error that follows z is taken out
  (``metrics.circular_correlation_fl_within_state``): how well each particle is aligned to
  the others of its state, whatever frame the model measures a flexible particle in;
* ``half_turned``: the share of particles aligned a half turn away from the rest
  (``metrics.half_turn_fraction``);
* ``half_turn_better``: the share of held-out particles the half turn of their inferred pose
  fits better, the model's own signal of the same fault without the truth (training's last
  held-out evaluation; what ``spatial-vae train`` warns about);
* ``z_outliers`` (one motion, z-dim 1): the share of particles whose z lies far (3 robust
  standard deviations) from a cubic in the motion, |Pearson| without them, and the share of
  them turned more than 45 degrees off or tilted beyond two thirds of the design's range;
* ``recon_corr``: mean correlation, inside the circular mask, between each particle's
  reconstruction (pose removed) and its noise-free image aligned by the same inferred pose;
* ``test_elbo`` (nats per image);
* ``unrendered``: the strongest variation the training particles share that the model does
  not render, as a share of the strongest one z renders (``core/unrendered.py``; what
  ``spatial-vae train`` warns about above 0.25: a folded or missing z), measured without the
  truth; ``unrendered_second``: its second strongest direction as a share of the first
  (``UnrenderedVariation.runner_up_ratio``: low when one variation stands out, as a fold
  leaves, about 1 when several do);
* ``restarts``: how many times (0-2) training found z folded a third of the way through an
  attempt and started again from a fresh initialisation (``core/fold_restart.py``);
  ``fold_check``: the measure the last attempt's check judged (the same share, above 0.6
  starts again; in ``history.csv`` since 2026-12-07, None when that attempt was not checked,
  e.g. with z-dim 2 or after the second restart);
* with ``--apply-snr S``, the same scores of the trained model on new held-out particles of
  the same design at SNR S (a model trained at SNR 0.5 applied to SNR 0.1 data).

``--from-runs DIR`` scores the runs a ``--keep-runs DIR`` call trained (``DIR/<design>_s<seed>``)
instead of training again: epochs, test ELBO and the half-turn signal come from their
history, ``wall_s`` is empty. A z-dim 1 run saved before 2026-12-05 is given the summary of
its training particles' z that training keeps since (``core/posterior_z.TrainingZ``), so it
is scored as inference now reads a new run. ``--search-rotation`` scores the poses and z of
``spatial-vae infer --search-rotation`` (z-dim 1 runs).

Tune on ``--split tune`` (designs and seeds defaults may be chosen on); report
``--split report`` (held out). One JSON row per run, then a markdown table:

    python benchmarks/design_family.py --split report --minutes 8
    python benchmarks/design_family.py --designs three-domain --seeds 0 --minutes 2 lr=1e-3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time

import numpy as np
import torch
from particles_accuracy import apply_overrides  # same folder: run as a script

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core.checkpoint import load_model, read_history
from napari_spatial_vae.core.config import REFINE_Z_STEPS, ModelConfig, TrainConfig
from napari_spatial_vae.core.coords import align_images, circular_mask
from napari_spatial_vae.core.data import ImageFeeder, input_scale, preprocess
from napari_spatial_vae.core.designs import (
    DESIGNS,
    REPORT_DESIGNS,
    REPORT_SEEDS,
    TUNE_DESIGNS,
    TUNE_SEEDS,
    DesignParticles,
    simulate_design,
)
from napari_spatial_vae.core.fold_restart import fold_check_share
from napari_spatial_vae.core.infer import read_z
from napari_spatial_vae.core.latent_axes import (
    LATENT_AXES_SAMPLE,
    align_latent_axes,
    latent_posteriors,
)
from napari_spatial_vae.core.posterior_z import (
    TemplateCache,
    likeliest_rotation,
    summarise_training_z,
)
from napari_spatial_vae.core.train import train
from napari_spatial_vae.core.unrendered import measure_unrendered

COLUMNS = ("design", "seed", "snr", "epochs", "wall_s", "pearson_z", "linear_z", "spearman_z",
           "circ_fl", "circ_fl_state", "half_turned", "half_turn_better", "recon_corr",
           "test_elbo", "unrendered", "unrendered_second", "restarts", "fold_check")  # fmt: skip


def _model_input(config: TrainConfig, particles: DesignParticles) -> torch.Tensor:
    """``(N, 1, H, W)`` the particles preprocessed as in training."""
    images = torch.from_numpy(particles.images)[:, None]
    scale = input_scale(config.model.likelihood, np.dtype(np.float32))
    return preprocess(images, scale, config.normalize)


@torch.no_grad()
def _posterior(model, model_input: torch.Tensor):
    """The model's posterior over preprocessed particles (eval mode)."""
    model.eval()
    return model.encode(model_input)


def _motion_scores(
    latents: np.ndarray, particles: DesignParticles
) -> tuple[list[float], list[float], list[float]]:
    """Per motion: the largest |Pearson| of one latent, the multiple correlation of all, and
    the |Spearman| of that best latent (all 0 without latents)."""
    best, linear, ranked = [], [], []
    for motion in particles.conformation.T:
        each = [abs(metrics.pearson(latent, motion)) for latent in latents.T]
        closest = latents[:, int(np.argmax(each))] if each else None
        best.append(max(each, default=0.0))
        linear.append(metrics.multiple_correlation(latents, motion))
        ranked.append(0.0 if closest is None else abs(metrics.spearman(closest, motion)))
    return best, linear, ranked


def _z_outliers(
    z: np.ndarray, particles: DesignParticles, theta: np.ndarray
) -> dict[str, float] | None:
    """Where z's Pearson is lost, for one motion read by one latent (else None).

    Outliers: particles whose z lies more than 3 robust standard deviations (1.4826 x the
    median absolute deviation) from a cubic in the motion fitted to all. Reported: their
    share, |Pearson| without them, and the share of them whose rotation is more than 45
    degrees off (``far_turned``) or whose out-of-plane tilt is beyond two thirds of the
    design's range (``tilted``).
    """
    if z.shape[1] != 1 or particles.conformation.shape[1] != 1:
        return None
    latent, motion = z[:, 0].astype(np.float64), particles.conformation[:, 0]
    residual = latent - np.polyval(np.polyfit(motion, latent, 3), motion)
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    outlier = np.abs(residual) > 3.0 * spread
    if not outlier.any():
        return {"share": 0.0, "pearson_without": round(abs(metrics.pearson(latent, motion)), 3)}
    error = np.abs(metrics.aligned_angle_errors(theta, particles.theta))[outlier]
    tilt_range = np.abs(particles.tilt).max()
    tilted = np.abs(particles.tilt[outlier]) > 2.0 / 3.0 * tilt_range if tilt_range > 0 else None
    return {
        "share": round(float(outlier.mean()), 3),
        "pearson_without": round(abs(metrics.pearson(latent[~outlier], motion[~outlier])), 3),
        "far_turned": round(float(np.mean(error > np.radians(45.0))), 2),
        "tilted": None if tilted is None else round(float(tilted.mean()), 2),
    }


def _fl_within_state(theta: np.ndarray, true: np.ndarray, latents: np.ndarray) -> float | None:
    """|Fisher-Lee| once the angle's drift along z is taken out (None without z)."""
    if not latents.shape[1]:
        return None
    return round(abs(metrics.circular_correlation_fl_within_state(theta, true, latents)), 3)


@torch.no_grad()
def score(
    model,
    config: TrainConfig,
    particles: DesignParticles,
    refine_steps: int = REFINE_Z_STEPS,
    search_rotation: bool = False,
) -> dict[str, float]:
    """Held-out scores of a trained model on a simulated stack with its ground truth.

    z is read against the generator as inference does (``core/infer.read_z``; 0 steps: the
    encoder's mean); ``search_rotation`` first replaces the encoder's rotation by the
    likeliest on the whole circle (``spatial-vae infer --search-rotation``).
    """
    images = torch.from_numpy(particles.images)[:, None]
    clean = torch.from_numpy(particles.clean)[:, None]
    model_input = _model_input(config, particles)
    posterior = _posterior(model, model_input)
    theta, shift, z = model.split_latent(posterior.mu)
    encoder_z = z
    # one canvas of templates for the search and the reading of z, as inference keeps
    templates = TemplateCache()
    if search_rotation:
        theta, shift = likeliest_rotation(
            model, model_input, theta, shift, model.training_z, templates=templates
        )
    if z is not None and refine_steps:
        z_std = model.split_latent(torch.exp(posterior.logstd))[2]
        assert z_std is not None
        z, _ = read_z(model, model_input, theta, shift, z, z_std, refine_steps=refine_steps,
                      templates=templates)  # fmt: skip
    zeros = images.new_zeros(len(images))
    theta = theta if theta is not None else zeros
    shift = shift if shift is not None else images.new_zeros(len(images), 2)
    reconstructions = model.expected_image(model.decode(z, batch_size=len(images))[0])
    aligned_clean = align_images(clean, theta, shift)
    inside = circular_mask(*images.shape[-2:]).flatten()
    a = reconstructions.flatten(1)[:, inside].double()
    b = aligned_clean.flatten(1)[:, inside].double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    per_image = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    empty = np.zeros((len(images), 0))
    latents = z.numpy() if z is not None else empty
    best, linear, ranked = _motion_scores(latents, particles)
    plain, plain_linear, _ = _motion_scores(
        encoder_z.numpy() if encoder_z is not None else empty, particles
    )
    # a nuisance factor z may take instead of the motion: the out-of-plane tilt (signed,
    # about the particle's x axis before its in-plane rotation)
    tilt = (
        max((abs(metrics.pearson(latents[:, j], particles.tilt))
             for j in range(latents.shape[1])), default=0.0)
        if np.ptp(particles.tilt) > 0 else None
    )  # fmt: skip
    return {
        "pearson_z": round(min(best), 3),
        "pearson_each": [round(b, 3) for b in best],
        "linear_z": round(min(linear), 3),
        "linear_each": [round(r, 3) for r in linear],
        # z's order along the motion, whatever its scale: a z shaped like its N(0, 1) prior
        # reads a uniformly drawn motion at |Pearson| 0.977 at most, in perfect order
        "spearman_z": round(min(ranked), 3),
        "pearson_tilt": None if tilt is None else round(tilt, 3),
        "pearson_z_encoder": round(min(plain), 3),
        "linear_z_encoder": round(min(plain_linear), 3),
        "circ_fl": round(abs(metrics.circular_correlation_fl(theta.numpy(), particles.theta)), 3),
        # the same once the angle's drift along z (the frame a flexible particle is measured
        # in, docs/results.md "Which frame the angle is measured in") is taken out
        "circ_fl_state": _fl_within_state(theta.numpy(), particles.theta, latents),
        # particles aligned upside down (docs/defaults.md, "Known limitation: 180-degree flips")
        "half_turned": round(metrics.half_turn_fraction(theta.numpy(), particles.theta), 3),
        "recon_corr": round(float(per_image.mean()), 3),
        "z_outliers": _z_outliers(latents, particles, theta.numpy()),
        **_two_motion_scores(latents, particles, theta.numpy()),
    }


def _two_motion_scores(
    latents: np.ndarray, particles: DesignParticles, theta: np.ndarray
) -> dict[str, object]:
    """Two motions: z against their sum and difference, and the angle error against both.

    Empty for other designs. See ``metrics.sum_and_difference``: a sum z misses while the
    angle error follows the motions is a motion the rotation took.
    """
    if particles.conformation.shape[1] != 2 or latents.shape[1] == 0:
        return {}
    motions = particles.conformation
    return {
        "linear_sum_difference": [
            round(r, 3) for r in metrics.sum_and_difference(latents, motions)
        ],
        "angle_error_from_motions": round(
            metrics.angle_error_from_motions(theta, particles.theta, motions), 3
        ),
        "sum_with_angle_error": round(
            metrics.sum_with_angle_error(latents, theta, particles.theta, motions), 3
        ),
    }


def _rows(particles: DesignParticles, rows: slice) -> DesignParticles:
    """The same rows of every per-particle array (images, truth)."""
    return DesignParticles(*(getattr(particles, f)[rows] for f in DesignParticles.__annotations__))


@torch.no_grad()
def _save_latents(model, config: TrainConfig, particles: DesignParticles, path: str) -> None:
    """The held-out posterior means next to the ground truth, for offline diagnosis."""
    posterior = _posterior(model, _model_input(config, particles))
    theta, shift, z = model.split_latent(posterior.mu)
    arrays = {"z_mu": z, "theta": theta, "shift": shift}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(
        path,
        **{k: v.numpy() for k, v in arrays.items() if v is not None},
        z_logstd=posterior.logstd.numpy(),
        true_conformation=particles.conformation,
        true_theta=particles.theta,
        true_shift_px=particles.shift_px,
        true_tilt=particles.tilt,
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _config(name: str, seed: int, overrides: list[str]) -> TrainConfig:
    """The defaults with z-dim = the design's number of motions, then ``overrides``."""
    config = TrainConfig(model=ModelConfig(z_dim=len(DESIGNS[name].motions)), seed=seed)
    apply_overrides(config, overrides)
    return config


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict:
    design = DESIGNS[name]
    data = simulate_design(
        design, args.n_train + args.n_test, 1000 + seed, snr=args.snr, size=args.size
    )
    train_part = _rows(data, slice(None, args.n_train))
    test_part = _rows(data, slice(args.n_train, None))
    config = _config(name, seed, args.overrides)
    config.max_minutes = args.minutes
    if args.epochs is not None:
        config.epochs = args.epochs
    trace_part = _rows(test_part, slice(None, args.trace))

    def trace(update) -> None:
        # per-epoch scores of the live model on the first --trace held-out particles
        if update.kind != "epoch":
            return
        # the encoder's z (no refinement): the trace's time counts against the budget
        scores = score(update.model, config, trace_part, refine_steps=0)
        update.model.train()
        print(
            f"  {name} seed {seed} epoch {update.epoch:3d} {update.seconds:5.0f}s"
            f"  test ELBO {update.test.elbo:8.1f}  KL theta {update.train.kl_theta:5.2f}"
            f"  KL z {' '.join(f'{kl:5.2f}' for kl in update.train.kl_z_dims)}"
            f"  pearson {scores['pearson_z']:.3f}  linear {scores['linear_z']:.3f}"
            f"  FL {scores['circ_fl']:.3f}  half-turned {scores['half_turned']:.2f}"
            f"  recon {scores['recon_corr']:.3f}"
            f"  turn better {_share(update.test.half_turn_better)}",
            flush=True,
        )
        if update.message:  # the half-turn check switched on (half_turn_check=auto)
            print(f"  {update.message}", flush=True)

    if args.from_runs:
        run_dir = f"{args.from_runs}/{name}_s{seed}"
        model, config, saved = load_model(run_dir)
        history, wall, restarts = read_history(run_dir), None, saved.restarts
        feed = ImageFeeder(train_part.images, None, torch.device("cpu"),
                           normalize=config.normalize)  # fmt: skip
        if args.align_axes:
            # what training does at its end since 2026-12-04 (idempotent on later runs)
            align_latent_axes(model, feed)
        if config.model.z_dim == 1 and model.training_z is None:
            # what training does at its end since 2026-12-05: keep the training particles' z,
            # which inference reads z with (a run saved before has none and would be refined)
            first = torch.arange(min(LATENT_AXES_SAMPLE, len(feed)))
            mean, std = latent_posteriors(model, feed, None, first)
            model.training_z = summarise_training_z(mean, std)
        epochs = max((r["epoch"] for r in history), default=0)
        unrendered = measure_unrendered(model, feed, None, seed=config.seed)
    else:
        with (
            contextlib.nullcontext(f"{args.keep_runs}/{name}_s{seed}")
            if args.keep_runs
            else tempfile.TemporaryDirectory()
        ) as run_dir:
            started = time.perf_counter()
            result = train(
                config,
                train_part.images,
                run_dir,
                test_images=test_part.images,
                on_update=trace if args.trace else None,
            )
            wall = round(time.perf_counter() - started, 1)
        # scored on the CPU whatever the device trained (the held-out tensors live there)
        model, history, epochs = result.model.cpu(), result.history, result.epochs_completed
        unrendered, restarts = result.unrendered, result.restarts
    test_rows = [r for r in history if r["split"] == "test"]
    if args.save_latents:
        _save_latents(model, config, test_part, f"{args.save_latents}/{name}_s{seed}.npz")
    row = {
        "design": name, "seed": seed, "snr": args.snr or design.snr,
        "size": args.size or design.size, "epochs": epochs,
        "wall_s": wall, **score(model, config, test_part, search_rotation=args.search_rotation),
        "test_elbo": round(test_rows[-1]["elbo"], 1) if test_rows else None,
        # the model's own signal (no truth): held-out particles its half turn fits better
        "half_turn_better": test_rows[-1]["half_turn_better"] if test_rows else None,
        "unrendered": None if unrendered is None else round(unrendered.share, 3),
        "unrendered_second": None if unrendered is None else round(unrendered.runner_up_ratio, 3),
        "restarts": restarts,
        "fold_check": fold_check_share(history),
        "overrides": " ".join(args.overrides) or "(defaults)",
    }  # fmt: skip
    if args.apply_snr is not None:
        other = simulate_design(
            design, args.n_test, 2000 + seed, snr=args.apply_snr, size=args.size
        )
        row["applied_snr"] = args.apply_snr
        row["applied"] = score(model, config, other, search_rotation=args.search_rotation)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="field=value of TrainConfig/ModelConfig")
    parser.add_argument("--split", choices=("tune", "report"), default="tune")
    parser.add_argument("--designs", help="comma-separated names (default: the split's)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the split's)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--snr", type=float, default=None, help="override the designs' SNR")
    parser.add_argument("--size", type=int, default=None, help="override the box size")
    parser.add_argument("--apply-snr", type=float, default=None, help="also score at this SNR")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per run")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--trace", type=int, default=0, metavar="N",
        help="after every epoch, print the scores on the first N held-out particles",
    )  # fmt: skip
    parser.add_argument(
        "--save-latents", metavar="DIR",
        help="write each run's held-out posterior means and truth to DIR/<design>_s<seed>.npz",
    )  # fmt: skip
    parser.add_argument(
        "--from-runs", metavar="DIR",
        help="score the runs in DIR/<design>_s<seed> (from --keep-runs) instead of training",
    )  # fmt: skip
    parser.add_argument(
        "--keep-runs", metavar="DIR",
        help="train into DIR/<design>_s<seed> (a run folder spatial-vae can load) instead of "
        "a temporary folder",
    )  # fmt: skip
    parser.add_argument(
        "--align-axes", action="store_true",
        help="with --from-runs: turn z's axes towards independent factors first, as training "
        "does at its end since 2026-12-04 (for runs trained before)",
    )  # fmt: skip
    parser.add_argument(
        "--search-rotation", action="store_true",
        help="score with each particle's rotation searched on the whole circle (z-dim 1)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.align_axes and not args.from_runs:
        parser.error("--align-axes applies to --from-runs (training aligns the axes itself)")
    if args.from_runs and (args.overrides or args.keep_runs):
        parser.error("--from-runs scores runs as they were trained: no overrides, no --keep-runs")
    torch.set_num_threads(args.threads)
    tune = args.split == "tune"
    names = args.designs.split(",") if args.designs else (TUNE_DESIGNS if tune else REPORT_DESIGNS)
    seeds = (
        [int(s) for s in args.seeds.split(",")]
        if args.seeds
        else (TUNE_SEEDS if tune else REPORT_SEEDS)
    )
    unknown = sorted(set(names) - set(DESIGNS))
    if unknown:
        parser.error(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(DESIGNS)}")
    if args.search_rotation:
        # refused before anything trains: the search reads one latent z
        dims = {n: _config(n, 0, args.overrides).model.z_dim for n in names}
        other = [f"{n} has z-dim {z}" for n, z in dims.items() if z != 1]
        if other:
            parser.error(f"--search-rotation reads one latent z; {', '.join(other)}")
    rows = []
    for name in names:
        for seed in seeds:
            row = run_one(name, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(c)) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
