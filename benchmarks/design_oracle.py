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

    python benchmarks/design_oracle.py --designs out-of-plane,small-arm --snr 0.5,0.1
    python benchmarks/design_oracle.py --designs out-of-plane --snr 0.5 --rotation-window 20
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core.designs import (
    DESIGNS,
    REPORT_DESIGNS,
    TUNE_DESIGNS,
    Design,
    render_design,
    simulate_design,
)


def oracle_pearson(
    design: Design, snr: float, n: int, seed: int, steps: int, rotation_window_deg: int = 0
) -> list[float]:
    """|Pearson| of the oracle's posterior-mean conformation with the truth, per motion.

    ``steps`` grid points per motion; with ``rotation_window_deg`` > 0 also every whole
    degree within that many of the true rotation (``steps ** K * (2 * window + 1)``
    renderings per particle), the conformation's posterior marginalised over them.
    """
    particles = simulate_design(design, n, seed, snr=snr)
    noise_var = float(np.var(particles.images - particles.clean))
    motions = particles.conformation.shape[1]
    axis = np.linspace(0.0, 1.0, steps)
    grid = np.stack(np.meshgrid(*[axis] * motions, indexing="ij"), -1).reshape(-1, motions)
    offsets = np.radians(np.arange(-rotation_window_deg, rotation_window_deg + 1))
    # every (conformation, rotation offset) pair, conformation-major
    conformations = np.repeat(grid, len(offsets), axis=0)
    turns = np.tile(offsets, len(grid))
    m = len(conformations)
    estimate = np.empty((n, motions))
    for i in range(n):
        renderings = render_design(
            design,
            conformations,
            particles.theta[i] + turns,
            np.repeat(particles.shift_px[i : i + 1], m, axis=0),
            np.full(m, particles.tilt[i]),
        )
        log_likelihood = -((renderings - particles.images[i]) ** 2).sum((1, 2)) / (2 * noise_var)
        weights = np.exp(log_likelihood - log_likelihood.max())
        estimate[i] = weights @ conformations / weights.sum()
    return [
        round(abs(metrics.pearson(estimate[:, k], particles.conformation[:, k])), 3)
        for k in range(motions)
    ]


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
        type=int,
        default=0,
        metavar="DEG",
        help="the rotation is unknown within +-DEG of the truth (0: known)",
    )
    args = parser.parse_args()
    if not 0 <= args.rotation_window <= 90:
        parser.error("--rotation-window must be between 0 and 90 degrees")
    names = args.designs.split(",")
    unknown = sorted(set(names) - set(DESIGNS))
    if unknown:
        parser.error(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(DESIGNS)}")
    pose = (
        f"rotation unknown within +-{args.rotation_window} deg"
        if args.rotation_window
        else "pose known"
    )
    print(f"oracle: {pose}")
    print("| design | SNR | oracle \\|Pearson\\| per motion |\n|---|---|---|")
    for name in names:
        design = DESIGNS[name]
        steps = args.steps or (41 if len(design.motions) == 1 else 21)
        for snr in (float(s) for s in args.snr.split(",")):
            best = oracle_pearson(design, snr, args.n, args.seed, steps, args.rotation_window)
            print(f"| {name} | {snr} | {' / '.join(map(str, best))} |", flush=True)
            row = {"design": name, "snr": snr, "rotation_window_deg": args.rotation_window}
            print(json.dumps({**row, "oracle_pearson": best}), flush=True)


if __name__ == "__main__":
    main()
