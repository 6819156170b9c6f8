"""How well could any method read the motion from these particles? An oracle bound per design.

For each held-out particle of a design (``core/designs.py``) the oracle knows everything but
the conformation: the true rotation, shift and tilt, the exact renderer and the noise level.
It scores every conformation on a grid by the Gaussian likelihood of the noisy image and
takes the posterior mean under the uniform prior, the estimate that correlates best with the
truth. Its |Pearson(estimate, conformation)| per motion is an upper bound for what z can
reach at that SNR (a model must also infer the pose and learn the object): a target above it
cannot be met by any method.

    python benchmarks/design_oracle.py --designs out-of-plane,small-arm --snr 0.5,0.1
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


def oracle_pearson(design: Design, snr: float, n: int, seed: int, steps: int) -> list[float]:
    """|Pearson| of the oracle's posterior-mean conformation with the truth, per motion.

    ``steps`` grid points per motion (``steps ** K`` renderings per particle).
    """
    particles = simulate_design(design, n, seed, snr=snr)
    noise_var = float(np.var(particles.images - particles.clean))
    motions = particles.conformation.shape[1]
    axis = np.linspace(0.0, 1.0, steps)
    grid = np.stack(np.meshgrid(*[axis] * motions, indexing="ij"), -1).reshape(-1, motions)
    m = len(grid)
    estimate = np.empty((n, motions))
    for i in range(n):
        renderings = render_design(
            design,
            grid,
            np.full(m, particles.theta[i]),
            np.repeat(particles.shift_px[i : i + 1], m, axis=0),
            np.full(m, particles.tilt[i]),
        )
        log_likelihood = -((renderings - particles.images[i]) ** 2).sum((1, 2)) / (2 * noise_var)
        weights = np.exp(log_likelihood - log_likelihood.max())
        estimate[i] = weights @ grid / weights.sum()
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
    args = parser.parse_args()
    names = args.designs.split(",")
    unknown = sorted(set(names) - set(DESIGNS))
    if unknown:
        parser.error(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(DESIGNS)}")
    print("| design | SNR | oracle \\|Pearson\\| per motion |\n|---|---|---|")
    for name in names:
        design = DESIGNS[name]
        steps = args.steps or (41 if len(design.motions) == 1 else 21)
        for snr in (float(s) for s in args.snr.split(",")):
            best = oracle_pearson(design, snr, args.n, args.seed, steps)
            print(f"| {name} | {snr} | {' / '.join(map(str, best))} |", flush=True)
            print(json.dumps({"design": name, "snr": snr, "oracle_pearson": best}), flush=True)


if __name__ == "__main__":
    main()
