"""What each z axis carries: the motion, the rotation's error, or something neither explains.

Reads the ``.npz`` files ``benchmarks/design_family.py --save-latents DIR`` writes (held-out
posterior means next to the truth) and prints, per file and z axis, the share of the axis's
variance over the particles (R^2 of a least-squares fit) that is explained by

* ``motion``: a cubic in each true motion coordinate;
* ``rotation error``: sin and cos of the inferred angle's error (after the best global offset,
  and the direction mirrored where that concentrates it more: ``metrics.aligned_angle_errors``);
* ``both``: the two together, plus the out-of-plane tilt and its magnitude;

then ``error beyond motion`` (both minus motion: what z carries of the pose's error that the
motion does not explain), ``neither`` (1 - both) and ``reliability``, the model's own view of
how precisely z is read: var(z mean) / (var(z mean) + mean posterior variance), which a
calibrated posterior would make the squared correlation of z with whatever z encodes.

    python benchmarks/design_family.py --designs tilted-hinge --seeds 0 --snr 0.1 \\
        --from-runs RUNS --save-latents LATENTS
    python benchmarks/latent_anatomy.py LATENTS/*.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_spatial_vae.core import metrics


def explained(features: np.ndarray, target: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``(N,)`` target by ``(N, F)`` features and a constant."""
    return metrics.multiple_correlation(features, target) ** 2


def anatomy(saved: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """One dict of shares per z axis of one ``--save-latents`` file."""
    z = np.asarray(saved["z_mu"], np.float64).reshape(len(saved["z_mu"]), -1)
    z_dim = z.shape[1]
    z_var = np.exp(2.0 * np.asarray(saved["z_logstd"], np.float64)[:, -z_dim:])
    motion = np.asarray(saved["true_conformation"], np.float64).reshape(len(z), -1)
    cubic = np.column_stack([motion**power for power in (1, 2, 3)])
    error = metrics.aligned_angle_errors(saved["theta"], saved["true_theta"])
    pose = np.column_stack([np.sin(error), np.cos(error)])
    tilt = np.asarray(saved["true_tilt"], np.float64)
    both = np.column_stack([cubic, pose, tilt, np.abs(tilt)])
    shares = []
    for axis in range(z_dim):
        values = z[:, axis]
        of_motion, of_both = explained(cubic, values), explained(both, values)
        shares.append(
            {
                "motion": of_motion,
                "rotation error": explained(pose, values),
                "both": of_both,
                "error beyond motion": of_both - of_motion,
                "neither": 1.0 - of_both,
                "reliability": float(values.var() / (values.var() + z_var[:, axis].mean())),
            }
        )
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("latents", nargs="+", type=Path, help=".npz files of --save-latents")
    args = parser.parse_args()
    columns = ("motion", "rotation error", "both", "error beyond motion", "neither", "reliability")
    print("| file | z axis | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for path in args.latents:
        try:
            with np.load(path) as saved:
                shares = anatomy(dict(saved))
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"{path}: not a --save-latents file of design_family.py ({error})")
        for axis, share in enumerate(shares, start=1):
            cells = " | ".join(f"{share[name]:.2f}" for name in columns)
            print(f"| {path.parent.name}/{path.stem} | {axis} | {cells} |")


if __name__ == "__main__":
    main()
