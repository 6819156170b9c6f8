"""Whole-process training speed: what a user waits for, next to the naive baseline.

Each contender is one fresh process, timed from launch to exit: interpreter start, imports,
reading the stack, every epoch's evaluation and checkpoint, and the training itself. The
stack is 40x40 simulated hinge particles saved as ``.npy``; the naive baseline
(``../shared/bench/naive_svae.py``, run from its path, never copied) trains the paper's
config (b) on the same file: z-dim 1, H=500, rotation with augmentation, no translation,
batch 100. Ours runs ``spatial-vae train`` with

* ``defaults``: the package's defaults (z-dim 1), the way a user runs it;
* ``defaults (full size)``: the same with ``--coarse-fraction 0`` (no coarse-to-fine);
* ``defaults (z from copies)``: the same with ``--no-z-from-aligned`` (z read from the
  encoder's pooled copies, the default before 2026-12-02: the cost of the aligned read-out);
* ``paper (b)``: the paper's model (``--encoder mlp --no-rotation-search``, H=500, no
  translation, batch 100), defaults otherwise;
* ``paper (b) (full size)``: the same with ``--coarse-fraction 0``.

images/s = training images x epochs / wall seconds of the whole process (ours trains on the
90 % it does not hold out; the naive script on all of them). The startup row is
``spatial-vae --version`` (interpreter and CLI imports).

    python benchmarks/process_throughput.py                    # 1,000 images, 2 epochs
    python benchmarks/process_throughput.py --images 2000 --epochs 4 --contenders naive,defaults
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_spatial_vae.core.simulate import simulate_particles

NAIVE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "naive_svae.py"
PAPER_B = ["--encoder", "mlp", "--no-rotation-search", "--hidden-dim", "500", "--no-translate",
           "--batch-size", "100"]  # fmt: skip
CONTENDERS = {
    "defaults": [],
    "defaults (full size)": ["--coarse-fraction", "0"],
    "defaults (z from copies)": ["--no-z-from-aligned"],
    "defaults (batch 16)": ["--batch-size", "16"],
    "defaults (batch 32)": ["--batch-size", "32"],
    "defaults (batch 64)": ["--batch-size", "64"],
    "paper (b)": PAPER_B,
    "paper (b) (full size)": [*PAPER_B, "--coarse-fraction", "0"],
}


def timed(command: list[str], threads: int) -> float:
    """Wall seconds of one process; its output is discarded, a failure is raised."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--contenders",
        default="naive," + ",".join(CONTENDERS),
        help="comma list of naive and: " + ", ".join(CONTENDERS),
    )
    parser.add_argument("--naive", type=Path, default=NAIVE, help="path of naive_svae.py")
    args = parser.parse_args()
    names = args.contenders.split(",")
    unknown = [n for n in names if n != "naive" and n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s): {', '.join(unknown)}")
    cli = [sys.executable, "-m", "napari_spatial_vae"]
    with tempfile.TemporaryDirectory() as scratch:
        stack = Path(scratch) / "particles.npy"
        sim = simulate_particles(args.images, size=40, seed=0)
        np.save(stack, sim.images.astype(np.float32))
        startup = timed([*cli, "--version"], args.threads)
        print(f"{args.images} particles 40x40, {args.epochs} epochs, {args.threads} threads")
        print(f"startup (spatial-vae --version): {startup:.2f} s")
        print(f"{'contender':24s} {'wall s':>8s} {'images/s':>9s} {'x naive':>8s}")
        naive_rate = None
        for name in names:
            if name == "naive":
                if not args.naive.exists():
                    print(f"{'naive':24s} not found at {args.naive}")
                    continue
                command = [
                    sys.executable, str(args.naive), "--data", str(stack), "--z-dim", "1",
                    "--hidden", "500", "--no-translate", "--augment-rotation",
                    "--epochs", str(args.epochs), "--threads", str(args.threads),
                ]  # fmt: skip
                trained = args.images
            else:
                run_dir = Path(scratch) / f"run{names.index(name)}"
                command = [
                    *cli, "train", str(stack), "-o", str(run_dir), "--z-dim", "1",
                    "--epochs", str(args.epochs), "--device", "cpu", "-q", *CONTENDERS[name],
                ]  # fmt: skip
                trained = args.images - round(args.images * 0.1)
            wall = timed(command, args.threads)
            rate = trained * args.epochs / wall
            if name == "naive":
                naive_rate = rate
            ratio = f"{rate / naive_rate:8.2f}" if naive_rate else f"{'':8s}"
            print(f"{name:24s} {wall:8.1f} {rate:9.1f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
