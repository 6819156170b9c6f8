"""The defaults on particles from a simulator written apart from the project's own.

``core/simulate.py`` and ``core/designs.py`` make every particle the defaults were tuned and
reported on, and every one of their motions is a hinge. This simulator shares no code with
them (numpy, scipy's rotations and mrcfile only) and moves the molecule in ways the family
never does:

* ``slide``: a 3-blob domain slides 5 px against a 6-blob body, along a direction 20° out of
  the image plane (a translation, not a turn);
* ``breathe``: two 4-blob lobes move apart and together (+-3 px each) about a 3-blob core,
  a nearly two-fold symmetric dimer, so the rotation is ambiguous by about a half turn while
  the conformation is not;
* ``two-slides`` and ``two-swings`` (two independent motions, trained with z-dim 2): the
  same 6-blob body with two 3-blob domains (above it and left of it), which either slide
  (5 px, along directions 20° and 30° out of the plane) or swing about in-plane hinges
  (+-25° about an axis normal to the image, as both of the family's ``two-motions`` do).
  The pair tells whether what z-dim 2 misses on ``two-motions`` comes from two motions at
  once or from hinges turning in the plane, where part of a swing looks like a turn of the
  whole particle.

Each particle: projected 3-D Gaussian blobs, a random 3-D tilt of up to 12° about an in-plane
axis, a uniform in-plane rotation, a shift ~ N(0, 1.5^2) px, 40 x 40 px, white noise with SNR
= a clean particle's variance over the whole box (averaged over the stack) / the noise's
variance, written as a detector might: a dark particle on a bright offset (1000 - 40 x
image), 2 Å/px. The truth goes to a CSV beside the stack (``conformation`` in -1..1, or
``conformation_1`` and ``conformation_2`` for two motions, ``psi_deg``, ``shift_x``,
``shift_y``).

``run`` does what a user does, through the command line: ``spatial-vae train STACK -o RUN
--z-dim K --max-minutes M --seed S --device cpu`` (K the kind's number of motions), then
``spatial-vae infer RUN TEST -o POSES.csv``, and scores the held-out particles: for each
motion the best |Pearson| of one latent with it (as a user reads one slider) and the multiple
correlation of all latents with it (``linear_z``, blind to how z's axes are turned), the
worse motion reported; Spearman of the best latent; and Fisher-Lee of theta with the true
rotation (and of the doubled angles, blind to a half turn).

    python benchmarks/independent_particles.py run --kinds slide breathe --seeds 0 1 \\
        --minutes 20 --threads 1 --apply-snr 0.1 --dir DIR
    python benchmarks/independent_particles.py run --kinds two-slides two-swings \\
        --seeds 0 1 2 --minutes 20 --threads 1 --apply-snr 0.1 --dir DIR
    python benchmarks/independent_particles.py simulate --kind slide --n 4000 --snr 0.5 \\
        --seed 100 -o DIR/slide_train
    python benchmarks/independent_particles.py score DIR/poses.csv DIR/slide_test_truth.csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from napari_spatial_vae.core.metrics import (
    angle_error_from_motions,
    circular_correlation_fl,
    multiple_correlation,
    pearson,
    spearman,
    sum_and_difference,
    sum_with_angle_error,
)

BOX = 40
BLOB_SIGMA_PX = 1.9
MAX_TILT_DEG = 12.0
SHIFT_STD_PX = 1.5
TRAIN_SEED, TEST_SEED, APPLIED_SEED = 100, 200, 300

# one molecule per kind, the same for every seed: conformation(s) in -1..1 -> (blob centres
# (n, 3) px, weights (n,)); one-motion kinds take a float, two-motion kinds a pair
Molecule = Callable[..., tuple[np.ndarray, np.ndarray]]

_BODY = np.array([[-6, -3, 0], [-2, -5, 1], [2, -4, -1], [-4, 2, 0], [0, 0, 0], [4, 1, 1]], float)
_DOMAIN = np.array([[3, 7, 0], [7, 6, 1], [5, 10, -1]], float)
# the second domain, left of the body (the first is above it): an L, no two-fold look-alike
_DOMAIN_LEFT = np.array([[-10, 1, 0], [-11, 5, -1], [-13, 2, 1]], float)
# where the L's middle lies, moved to the box's centre so its ends stay 9 px from the edge
_L_MIDDLE = np.array([-2.0, 1.5, 0.0])


def _direction(out_of_plane_deg: float, in_plane_deg: float = 0.0) -> np.ndarray:
    """A unit vector ``out_of_plane_deg`` out of the image plane, turned ``in_plane_deg``."""
    tilt, turn = np.radians(out_of_plane_deg), np.radians(in_plane_deg)
    return np.array([np.cos(tilt) * np.cos(turn), np.cos(tilt) * np.sin(turn), np.sin(tilt)])


def _swung(domain: np.ndarray, pivot: np.ndarray, degrees: float) -> np.ndarray:
    """``domain`` turned ``degrees`` about the axis through ``pivot`` normal to the image."""
    return Rotation.from_euler("z", degrees, degrees=True).apply(domain - pivot) + pivot


def _weights(*parts: np.ndarray) -> np.ndarray:
    """The body's blobs weigh 1, each domain's 1.3."""
    return np.concatenate([np.ones(len(parts[0]))] + [1.3 * np.ones(len(p)) for p in parts[1:]])


def _slide(conformation: float) -> tuple[np.ndarray, np.ndarray]:
    centres = np.vstack([_BODY, _DOMAIN + 2.5 * conformation * _direction(20.0)])
    return centres, _weights(_BODY, _DOMAIN)


def _breathe(conformation: float) -> tuple[np.ndarray, np.ndarray]:
    lobe = np.array([[0, -2, 0], [0, 2, 0], [2, 0, 1], [-1, 0, -1]], float)
    core = np.array([[0, 0, 0], [0, 6, 0], [0, -6, 0]], float)
    separation = 6.0 + 3.0 * conformation
    first = lobe + np.array([separation, 1.0, 0.0])
    second = lobe * np.array([1.0, 1.0, -1.0]) + np.array([-separation, -1.0, 0.0])
    centres = np.vstack([core, first, second])
    return centres, np.r_[0.7 * np.ones(len(core)), np.ones(2 * len(lobe))]


def _two_slides(conformations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = _DOMAIN + 2.5 * conformations[0] * _direction(20.0)
    second = _DOMAIN_LEFT + 2.5 * conformations[1] * _direction(30.0, in_plane_deg=90.0)
    return np.vstack([_BODY, first, second]) - _L_MIDDLE, _weights(_BODY, _DOMAIN, _DOMAIN_LEFT)


def _two_swings(conformations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # hinges where each domain meets the body; the domains' far blobs travel about 7 px
    first = _swung(_DOMAIN, np.array([2.0, 3.0, 0.0]), 25.0 * conformations[0])
    second = _swung(_DOMAIN_LEFT, np.array([-7.0, 0.0, 0.0]), 25.0 * conformations[1])
    return np.vstack([_BODY, first, second]) - _L_MIDDLE, _weights(_BODY, _DOMAIN, _DOMAIN_LEFT)


KINDS: dict[str, Molecule] = {
    "slide": _slide,
    "breathe": _breathe,
    "two-slides": _two_slides,
    "two-swings": _two_swings,
}
MOTIONS: dict[str, int] = {"slide": 1, "breathe": 1, "two-slides": 2, "two-swings": 2}


def conformation_columns(motions: int) -> list[str]:
    """The truth table's conformation column(s)."""
    return ["conformation"] if motions == 1 else [f"conformation_{k + 1}" for k in range(motions)]


def simulate(kind: str, n: int, snr: float, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """``(n, 40, 40)`` float32 particles in detector-like units and their truth table."""
    molecule, motions = KINDS[kind], MOTIONS[kind]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:BOX, 0:BOX] - (BOX - 1) / 2.0
    # (n,) for one motion (the draws the runs in the docs were made with), (n, K) for K
    conformation = rng.uniform(-1.0, 1.0, n if motions == 1 else (n, motions))
    psi = rng.uniform(0.0, 2.0 * np.pi, n)
    shifts = rng.normal(0.0, SHIFT_STD_PX, (n, 2))
    clean = np.zeros((n, BOX, BOX))
    for i in range(n):
        centres, weights = molecule(conformation[i])
        # each particle's tilt drawn in turn (the order the runs in the docs were made with)
        tilt_axis = rng.uniform(0.0, 2.0 * np.pi)
        tilt = np.radians(rng.uniform(0.0, MAX_TILT_DEG))
        axis = np.array([np.cos(tilt_axis), np.sin(tilt_axis), 0.0])
        pose = Rotation.from_euler("z", psi[i]) * Rotation.from_rotvec(tilt * axis)
        x, y, _ = (pose.apply(centres) + np.array([*shifts[i], 0.0])).T
        blobs = (xx[None] - x[:, None, None]) ** 2 + (yy[None] - y[:, None, None]) ** 2
        clean[i] = np.tensordot(weights, np.exp(-blobs / (2.0 * BLOB_SIGMA_PX**2)), axes=1)
    # each clean image's own variance, averaged (cryoDRGN takes the whole stack's: the same
    # up to the spread of the images' means, which is small with one molecule in every box)
    noise_std = np.sqrt(clean.reshape(n, -1).var(axis=1).mean() / snr)
    noisy = clean + rng.normal(0.0, noise_std, clean.shape)
    states = conformation.reshape(n, motions)
    truth = pd.DataFrame(
        {
            **dict(zip(conformation_columns(motions), states.T, strict=True)),
            "psi_deg": np.degrees(psi),
            "shift_x": shifts[:, 0],
            "shift_y": shifts[:, 1],
        }
    )
    return (1000.0 - 40.0 * noisy).astype(np.float32), truth


def write_stack(prefix: Path, kind: str, n: int, snr: float, seed: int) -> Path:
    """Write ``PREFIX.mrcs`` and ``PREFIX_truth.csv``; return the stack's path."""
    images, truth = simulate(kind, n, snr, seed)
    stack = prefix.with_name(prefix.name + ".mrcs")
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.voxel_size = 2.0
    truth.to_csv(prefix.with_name(prefix.name + "_truth.csv"), index=False)
    return stack


def score(poses: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """z against the conformation(s), theta against the true rotation.

    For each motion: the best |Pearson| of one latent with it, its |Spearman|, and the
    multiple correlation of all latents; the worse motion's go to ``pearson_z``,
    ``spearman_z`` and ``linear_z`` (with one motion, ``linear_z`` is ``pearson_z``), each
    motion's best |Pearson| to ``pearson_z_1``, ``pearson_z_2``, ... Then |Fisher-Lee| of
    theta, and of the doubled angles. With two motions also the multiple correlation of all
    latents with the motions' sum (both domains moving the same way: for two in-plane swings
    nearly a turn of the whole particle) and with their difference (``linear_z_sum``,
    ``linear_z_difference``), and how much of theta's error a linear function of the two
    motions explains (``angle_error_from_motions``, a multiple correlation): a sum that z
    misses while the angle error follows it is a motion the rotation took; and how well z
    and the angle error together read the sum (``linear_z_sum_with_angle_error``): near 1
    when the sum is split between z and the frame rather than lost.

    Raises ValueError (one line) when a table lacks its columns or the two differ in length.
    """
    motions = (
        1
        if "conformation" in truth.columns
        else max(sum(column.startswith("conformation_") for column in truth.columns), 1)
    )
    # every latent the run has (z-dim may exceed the motions), at least one per motion
    z_dim = max(motions, sum(f"z{k + 1}" in poses.columns for k in range(len(poses.columns))))
    latents = [f"z{k + 1}" for k in range(z_dim)]
    wanted = (
        (poses, ["theta", *latents], "poses"),
        (truth, [*conformation_columns(motions), "psi_deg"], "truth"),
    )
    for table, columns, name in wanted:
        missing = [column for column in columns if column not in table.columns]
        if missing:
            raise ValueError(f"the {name} table lacks column(s) {', '.join(missing)}")
    if len(poses) != len(truth):
        raise ValueError(f"{len(poses)} poses for {len(truth)} particles of the truth table")
    z = poses[latents].to_numpy()
    states = truth[conformation_columns(motions)].to_numpy()
    psi = np.radians(truth["psi_deg"].to_numpy())
    theta = poses["theta"].to_numpy()
    best, ranked, linear = [], [], []
    for state in states.T:
        # the project's one definition (0, not NaN, for a collapsed, constant z)
        each = [abs(pearson(latent, state)) for latent in z.T]
        closest = z[:, int(np.argmax(each))]
        best.append(max(each))
        ranked.append(abs(spearman(closest, state)))
        linear.append(multiple_correlation(z, state))
    row = {
        "pearson_z": min(best),
        "linear_z": min(linear),
        "spearman_z": min(ranked),
        "circ_fl": abs(circular_correlation_fl(theta, psi)),
        "circ_fl_doubled": abs(circular_correlation_fl(2.0 * theta, 2.0 * psi)),
    }
    row |= {f"pearson_z_{k + 1}": value for k, value in enumerate(best)}
    if motions == 2:
        sum_reading, difference_reading = sum_and_difference(z, states)
        row |= {
            "linear_z_sum": sum_reading,
            "linear_z_difference": difference_reading,
            "angle_error_from_motions": angle_error_from_motions(theta, psi, states),
            "linear_z_sum_with_angle_error": sum_with_angle_error(z, theta, psi, states),
        }
    return row


def _cli(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # the spatial-vae console script's entry point, in this interpreter
    entry = "import sys; from napari_spatial_vae.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", entry, *args]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def run(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    header = ("kind", "seed", "SNR", "wall_s", "pearson_z", "linear_z", "spearman_z", "circ_fl",
              "circ_fl_doubled", "pearson_each", "sum / difference")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for kind in args.kinds:
        test = write_stack(folder / f"{kind}_test", kind, args.n_test, args.snr, TEST_SEED)
        tests = [(args.snr, test)]
        if args.apply_snr:
            applied = folder / f"{kind}_test_snr{args.apply_snr}"
            applied_stack = write_stack(applied, kind, args.n_test, args.apply_snr, APPLIED_SEED)
            tests.append((args.apply_snr, applied_stack))
        for seed in args.seeds:
            train = write_stack(
                folder / f"{kind}_train_s{seed}", kind, args.n_train, args.snr, TRAIN_SEED + seed
            )
            run_dir = folder / f"run_{kind}_s{seed}"
            started = time.perf_counter()
            epochs = () if args.epochs is None else ("--epochs", str(args.epochs))
            _cli(
                "train", str(train), "-o", str(run_dir), "--z-dim", str(MOTIONS[kind]),
                "--max-minutes", str(args.minutes), "--seed", str(seed), "--device", "cpu", "-q",
                *epochs,
                threads=args.threads,
            )  # fmt: skip
            wall = time.perf_counter() - started
            for snr, stack in tests:
                poses_csv = run_dir / f"poses_snr{snr}.csv"
                infer = ("infer", str(run_dir), str(stack), "-o", str(poses_csv), "-q")
                _cli(*infer, threads=args.threads)
                truth_csv = stack.with_name(stack.name.removesuffix(".mrcs") + "_truth.csv")
                row = score(pd.read_csv(poses_csv), pd.read_csv(truth_csv))
                each = " / ".join(f"{row[f'pearson_z_{k + 1}']:.3f}" for k in range(MOTIONS[kind]))
                numbers = " | ".join(f"{row[name]:.3f}" for name in header[4:-2])
                modes = ("linear_z_sum", "linear_z_difference")
                both = " / ".join(f"{row[name]:.3f}" for name in modes if name in row)
                cells = f"{kind} | {seed} | {snr} | {wall:.0f} | {numbers} | {each} | {both}"
                print(f"| {cells} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="write PREFIX.mrcs and PREFIX_truth.csv")
    sim.add_argument("--kind", choices=sorted(KINDS), required=True)
    sim.add_argument("--n", type=int, default=4000)
    sim.add_argument("--snr", type=float, default=0.5)
    sim.add_argument("--seed", type=int, default=TRAIN_SEED)
    sim.add_argument("-o", "--output", required=True, help="PREFIX")
    scoring = commands.add_parser("score", help="score a POSES.csv against a truth CSV")
    scoring.add_argument("poses")
    scoring.add_argument("truth")
    end_to_end = commands.add_parser("run", help="simulate, train, infer and score")
    end_to_end.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=sorted(KINDS))
    end_to_end.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    end_to_end.add_argument("--snr", type=float, default=0.5)
    end_to_end.add_argument("--apply-snr", type=float, default=None)
    end_to_end.add_argument("--n-train", type=int, default=4000)
    end_to_end.add_argument("--n-test", type=int, default=1000)
    end_to_end.add_argument("--minutes", type=float, default=8.0)
    end_to_end.add_argument("--epochs", type=int, default=None, help="default: train's")
    end_to_end.add_argument("--threads", type=int, default=2)
    end_to_end.add_argument("--dir", required=True, help="folder for stacks and runs")
    args = parser.parse_args(argv)
    if args.command == "simulate":
        stack = write_stack(Path(args.output), args.kind, args.n, args.snr, args.seed)
        print(f"wrote {stack} and its truth CSV")
    elif args.command == "score":
        try:
            row = score(pd.read_csv(args.poses), pd.read_csv(args.truth))
        except (OSError, ValueError) as error:  # pandas' parse errors are ValueErrors
            parser.error(f"score: {error}")
        print(", ".join(f"{name} {value:.3f}" for name, value in row.items()))
    else:
        run(args)


if __name__ == "__main__":
    main()
