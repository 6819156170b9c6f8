"""How well could any method read the motion from these particles? An oracle bound per design.

For each held-out particle of a design (``core/designs.py``) the oracle knows everything but
the conformation: the true rotation, shift and tilt, the exact renderer and the noise level.
It scores every conformation on a grid by the Gaussian likelihood of the noisy image and
takes the posterior mean under the uniform prior, the estimate that correlates best with the
truth. Its |Pearson(estimate, conformation)| per motion is an upper bound for what z can
reach at that SNR (a model must also infer the pose and learn the object): a target above it
cannot be met by any method.

With ``--rotation-window DEG`` the oracle no longer knows the in-plane rotation: it also
scores rotations within +-DEG of the truth (1-degree steps) and takes the posterior mean of
the conformation over both (uniform prior). A model must infer the rotation from the same
noisy image; where part of the motion looks like a small rotation of the whole particle,
the two trade against each other in the likelihood, and this bound falls below the
known-pose one. (Half turns and rotations outside the window are left out: the bound is
for a model that aligns each particle to within the window.)

With ``--shift-window PX`` the shift is unknown too, within +-PX pixels of the truth in x and
y (``--shift-step`` apart). A model must also centre each particle from the noisy image, and
the motion moves the particle's centre of mass, so the two trade as well. Rotation and shift
unknown together is the bound that applies to a model, which knows neither. Steps must be
fine against the pose posterior's width, or they *lower* the bound: on `out-of-plane` at SNR
0.5, 3-degree and half-pixel steps gave 0.940 where 1.5-degree and quarter-pixel steps (in
windows half as wide, 2 % of the posterior on their edge) gave 0.985 on the same 30
particles. (Presumably because the true conformation is not a grid point: the grid's
conformation nearest to it fits best at a pose between the pose grid's points.) Halve the
steps and check that the bound holds.

With ``--tilt-step DEG`` the out-of-plane tilt is unknown too: the oracle scores every tilt
of the design's prior (uniform within +-``max_tilt_deg``, ``DEG`` apart) and marginalises it
like the pose. A model has no latent for the tilt, so with z-dim 1 it must tell the motion
from the tilt in the same image; on designs whose motion leans out of the plane the two
change the projection alike. Designs with no tilt are unchanged by it.

With ``--tilt-average`` (and ``--tilt-step``) the oracle scores each conformation and pose
against the *mean* of its renderings over the tilt prior instead of marginalising the tilt:
one template per conformation, as a generator with no latent for the tilt renders one image
per z (the image it learns under a Gaussian likelihood is that mean). A tilted particle then
differs from every template by its tilt as well as by the noise, so this estimate, not the
marginalised one, says what a model of spatial-VAE's form, with z-dim 1, could read from
particles with the true renderer's shapes. (It is not a strict bound: a model may spend
part of z on the tilt.)

For two motions it also bounds reading their sum and their difference (the estimates'
multiple correlation with each, as the benchmarks score z): with the rotation unknown, a
sum bound near the per-motion ones says the particles tell both domains swinging one way
from a turn of the whole particle, so a model that loses the sum to its rotation loses it
to its own training, not to the data.

    python benchmarks/design_oracle.py --designs out-of-plane,small-arm --snr 0.5,0.1
    python benchmarks/design_oracle.py --designs two-motions --snr 0.5 --n 100 \
        --rotation-window 30 --rotation-step 1.5
    python benchmarks/design_oracle.py --designs out-of-plane --snr 0.5 --rotation-window 20
    python benchmarks/design_oracle.py --designs three-domain --snr 0.1 --n 30 --steps 21 \
        --rotation-window 9 --rotation-step 1.5 --shift-window 1.5 --shift-step 0.25
    python benchmarks/design_oracle.py --designs out-of-plane --snr 0.5 --n 100 --tilt-step 1
    python benchmarks/design_oracle.py --designs out-of-plane --snr 0.5 --n 100 \
        --tilt-step 1.5 --tilt-average
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core.designs import (
    DESIGNS,
    REPORT_DESIGNS,
    TUNE_DESIGNS,
    Design,
    render_design,
    simulate_design,
)


def pose_offsets(
    rotation_window_deg: float,
    rotation_step_deg: float,
    shift_window_px: float,
    shift_step_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Every pose the oracle scores around the true one, the true pose among them.

    Returns
    -------
    turns, shifts
        ``(P,)`` radians and ``(P, 2)`` pixels (x, y), every rotation with every shift.
    """

    def steps(window: float, step: float) -> np.ndarray:
        count = int(np.floor(window / step + 1e-9))
        return np.arange(-count, count + 1) * step

    turns = np.radians(steps(rotation_window_deg, rotation_step_deg))
    along = steps(shift_window_px, shift_step_px)
    turn, x, y = (a.ravel() for a in np.meshgrid(turns, along, along, indexing="ij"))
    return turn, np.stack([x, y], axis=1)


def conformation_grid(motions: int, steps: int) -> np.ndarray:
    """``(steps ** motions, motions)`` every combination of ``steps`` values in 0..1 per motion."""
    axis = np.linspace(0.0, 1.0, steps)
    return np.stack(np.meshgrid(*[axis] * motions, indexing="ij"), -1).reshape(-1, motions)


def tilt_grid(max_tilt_deg: float, step_deg: float) -> np.ndarray:
    """``(T,)`` radians: the tilts the oracle scores when it does not know the particle's.

    The design's prior (uniform within +-``max_tilt_deg``) sampled ``step_deg`` apart,
    symmetric about 0 and reaching both ends of the prior; ``[0]`` for an untilted design.
    """
    if max_tilt_deg <= 0:
        return np.zeros(1)
    count = max(1, int(np.ceil(max_tilt_deg / step_deg - 1e-9)))
    return np.radians(np.linspace(-max_tilt_deg, max_tilt_deg, 2 * count + 1))


def window_edge(turns: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``(P,)`` True for the poses on the edge of the windows :func:`pose_offsets` spans.

    A pose is on the edge when its rotation offset is the largest scored, or either of its
    shift offsets is; with only the true pose scored, none is.
    """
    on_edge = np.zeros(len(turns), dtype=bool)
    if np.abs(turns).max() > 0:
        on_edge |= np.isclose(np.abs(turns), np.abs(turns).max())
    if np.abs(shifts).max() > 0:
        on_edge |= np.isclose(np.abs(shifts), np.abs(shifts).max()).any(axis=1)
    return on_edge


@dataclass(frozen=True)
class OracleReading:
    """What the oracle reads of a design's motions from its held-out particles.

    Attributes
    ----------
    pearson
        |Pearson| of the posterior-mean estimate with the truth, per motion: the bound.
    edge_mass
        The posterior's mean mass on the poses at the edge of the windows (near 0: the
        windows hold the pose's posterior, so a wider window would not lower the bound).
    sum_difference
        Two motions: the bound on reading their sum and their difference
        (:func:`~napari_spatial_vae.core.metrics.sum_and_difference` of the estimates, as the
        benchmarks score z); None otherwise. With the rotation unknown the sum's bound says
        whether a model could keep it from the rotation at all.
    spearman
        |Spearman| of the estimate with the truth, per motion: the order it reads.
    prior_shaped
        |Pearson| with the truth, per motion, of the estimate's order spread as an N(0, 1)
        prior spreads a latent (the normal quantile of each particle's rank): what a z in the
        oracle's order but shaped like spatial-VAE's prior would read. A uniformly drawn
        motion caps it at sqrt(3 / pi) = 0.977 even in perfect order.
    """

    pearson: list[float]
    edge_mass: float
    sum_difference: list[float] | None
    spearman: list[float]
    prior_shaped: list[float]


def oracle_pearson(
    design: Design,
    snr: float,
    n: int,
    seed: int,
    steps: int,
    rotation_window_deg: float = 0,
    rotation_step_deg: float = 1.0,
    shift_window_px: float = 0.0,
    shift_step_px: float = 0.5,
    chunk: int = 4096,
    tilt_step_deg: float = 0.0,
    tilt_average: bool = False,
) -> OracleReading:
    """The oracle's posterior-mean conformation against the truth (:class:`OracleReading`).

    ``steps`` grid points per motion, each scored at every pose of :func:`pose_offsets`
    around the true one (only the true pose with both windows 0) and, with ``tilt_step_deg``
    positive, at every tilt of :func:`tilt_grid` instead of the true tilt; the
    conformation's posterior is marginalised over the poses and tilts; with ``tilt_average``
    each conformation and pose is scored once, against the mean of its renderings over those
    tilts. Renderings are made about ``chunk`` at a time.

    """
    particles = simulate_design(design, n, seed, snr=snr)
    noise_var = float(np.var(particles.images - particles.clean))
    motions = particles.conformation.shape[1]
    grid = conformation_grid(motions, steps)
    turns, shifts = pose_offsets(
        rotation_window_deg, rotation_step_deg, shift_window_px, shift_step_px
    )
    on_edge = window_edge(turns, shifts)
    tilt_known = tilt_step_deg <= 0
    if tilt_average and tilt_known:
        raise ValueError("tilt_average needs tilt_step_deg > 0: the tilts to average over")
    tilt_values = np.zeros(1) if tilt_known else tilt_grid(design.max_tilt_deg, tilt_step_deg)
    # every (conformation, pose, tilt), conformation-major, then pose, then tilt
    n_tilts, n_poses = len(tilt_values), len(turns)
    conformations = np.repeat(grid, n_poses * n_tilts, axis=0)
    turns = np.tile(np.repeat(turns, n_tilts), len(grid))
    shifts = np.tile(np.repeat(shifts, n_tilts, axis=0), (len(grid), 1))
    on_edge = np.tile(np.repeat(on_edge, n_tilts), len(grid))
    tilts = np.tile(tilt_values, len(grid) * n_poses)
    estimate, edge_mass = np.empty((n, motions)), np.empty(n)
    # a chunk holds whole groups of tilts, so that each group's mean can be taken in it
    chunk = max(1, chunk // n_tilts) * n_tilts
    for i in range(n):
        log_likelihood = np.empty(len(conformations))
        for start in range(0, len(conformations), chunk):
            rows = slice(start, start + chunk)
            count = len(conformations[rows])
            renderings = render_design(
                design,
                conformations[rows],
                particles.theta[i] + turns[rows],
                particles.shift_px[i] + shifts[rows],
                np.full(count, particles.tilt[i]) if tilt_known else tilts[rows],
            )
            if tilt_average:
                size = renderings.shape[-1]
                groups = renderings.reshape(-1, n_tilts, size, size)
                renderings = np.repeat(groups.mean(axis=1), n_tilts, axis=0)
            squared = ((renderings - particles.images[i]) ** 2).sum((1, 2))
            # with the tilt averaged, each template appears once per tilt: equal weights, so
            # the conformation's posterior is the same as with each scored once
            log_likelihood[rows] = -squared / (2 * noise_var)
        weights = np.exp(log_likelihood - log_likelihood.max())
        estimate[i] = weights @ conformations / weights.sum()
        edge_mass[i] = weights[on_edge].sum() / weights.sum()
    truth = particles.conformation
    prior_shaped = norm.ppf((np.stack([metrics.ranks(e) for e in estimate.T], 1) - 0.5) / n)
    sum_difference = None
    if motions == 2:
        both = metrics.sum_and_difference(estimate, truth)
        sum_difference = [round(value, 3) for value in both]

    def per_motion(score, estimates: np.ndarray) -> list[float]:
        return [round(abs(score(estimates[:, k], truth[:, k])), 3) for k in range(motions)]

    return OracleReading(
        pearson=per_motion(metrics.pearson, estimate),
        edge_mass=round(float(edge_mass.mean()), 3),
        sum_difference=sum_difference,
        spearman=per_motion(metrics.spearman, estimate),
        prior_shaped=per_motion(metrics.pearson, prior_shaped),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--designs", default=",".join(TUNE_DESIGNS + REPORT_DESIGNS))
    parser.add_argument("--snr", default="0.5,0.1", help="comma-separated SNRs")
    parser.add_argument("--n", type=int, default=300, help="particles per design and SNR")
    parser.add_argument("--steps", type=int, default=0, help="grid points per motion")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument(
        "--rotation-window",
        type=float,
        default=0,
        metavar="DEG",
        help="the rotation is unknown within +-DEG of the truth (0: known)",
    )
    parser.add_argument(
        "--rotation-step", type=float, default=1.0, metavar="DEG",
        help="degrees between the rotations scored in the window",
    )  # fmt: skip
    parser.add_argument(
        "--shift-window", type=float, default=0.0, metavar="PX",
        help="the shift is unknown within +-PX pixels of the truth in x and y (0: known)",
    )  # fmt: skip
    parser.add_argument(
        "--shift-step", type=float, default=0.5, metavar="PX",
        help="pixels between the shifts scored in the window",
    )  # fmt: skip
    parser.add_argument(
        "--tilt-step", type=float, default=0.0, metavar="DEG",
        help="the tilt is unknown: score the design's tilt prior DEG apart (0: known)",
    )  # fmt: skip
    parser.add_argument(
        "--tilt-average", action="store_true",
        help="with --tilt-step: score one template per conformation, the mean over the tilts",
    )  # fmt: skip
    args = parser.parse_args()
    if not 0 <= args.rotation_window <= 90:
        parser.error("--rotation-window must be between 0 and 90 degrees")
    if not 0 <= args.shift_window <= 10:
        parser.error("--shift-window must be between 0 and 10 pixels")
    if args.tilt_step < 0:
        parser.error("--tilt-step must be 0 (tilt known) or positive")
    if args.tilt_average and not args.tilt_step:
        parser.error("--tilt-average needs --tilt-step (the tilts to average over)")
    if args.rotation_step <= 0 or args.shift_step <= 0:
        parser.error("--rotation-step and --shift-step must be positive")
    if 0 < args.rotation_window < args.rotation_step or 0 < args.shift_window < args.shift_step:
        parser.error("a window smaller than its step scores only the true pose: widen it or use 0")
    names = args.designs.split(",")
    unknown = sorted(set(names) - set(DESIGNS))
    if unknown:
        parser.error(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(DESIGNS)}")
    unknowns = [
        f"rotation within +-{args.rotation_window:g} deg ({args.rotation_step:g}-deg steps)"
        * bool(args.rotation_window),
        f"shift within +-{args.shift_window:g} px ({args.shift_step:g}-px steps)"
        * bool(args.shift_window),
        f"tilt ({args.tilt_step:g}-deg steps over each design's prior"
        f"{', averaged into one template' if args.tilt_average else ''})" * bool(args.tilt_step),
    ]
    print("oracle: " + (" and ".join(filter(None, unknowns)) + " unknown" if any(unknowns)
                        else "pose and tilt known"))  # fmt: skip
    print("| design | SNR | oracle \\|Pearson\\| per motion | \\|Spearman\\| | prior-shaped "
          "\\|Pearson\\| |\n|---|---|---|---|---|")  # fmt: skip
    for name in names:
        design = DESIGNS[name]
        steps = args.steps or (41 if len(design.motions) == 1 else 21)
        for snr in (float(s) for s in args.snr.split(",")):
            reading = oracle_pearson(
                design, snr, args.n, args.seed, steps, args.rotation_window,
                args.rotation_step, args.shift_window, args.shift_step,
                tilt_step_deg=args.tilt_step, tilt_average=args.tilt_average,
            )  # fmt: skip
            sum_difference = reading.sum_difference
            both = (
                f" (sum {sum_difference[0]}, difference {sum_difference[1]})"
                if sum_difference
                else ""
            )
            cells = [
                " / ".join(map(str, reading.pearson)) + both,
                " / ".join(map(str, reading.spearman)),
                " / ".join(map(str, reading.prior_shaped)),
            ]
            print(f"| {name} | {snr} | {' | '.join(cells)} |", flush=True)
            row = {
                "design": name, "snr": snr, "rotation_window_deg": args.rotation_window,
                "rotation_step_deg": args.rotation_step, "shift_window_px": args.shift_window,
                "shift_step_px": args.shift_step, "tilt_step_deg": args.tilt_step,
                "tilt_average": args.tilt_average,
            }  # fmt: skip
            row.update(
                oracle_pearson=reading.pearson,
                oracle_spearman=reading.spearman,
                oracle_prior_shaped=reading.prior_shaped,
                pose_mass_on_window_edge=reading.edge_mass,
            )
            if sum_difference is not None:
                row.update(oracle_sum=sum_difference[0], oracle_difference=sum_difference[1])
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
