"""Benchmark ``spatial-vae extract``: time and peak memory over many large micrographs.

Writes synthetic micrographs (default 20 of 4096 x 4096 float32, 1.3 GB, with 200
particles each; :func:`~napari_spatial_vae.micrograph_samples.write_synthetic_micrographs`)
with their micrographs STAR (CTF) and picks, then runs the real command in a child process::

    spatial-vae extract micrographs_ctf.star --coords picks.star --box 256 --size 64 -o ...

and prints its wall time and its peak resident memory (the child's own ``ru_maxrss``, so
writing the data does not count). The target is a peak under 1.5 GB: one micrograph, its
boxes and its output stack are in memory at a time. The folder is deleted at the end.

Run::

    python benchmarks/extract_micrographs.py [--micrographs 20] [--side 4096]
        [--particles 200] [--box 256] [--size 64] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from napari_spatial_vae.micrograph_samples import write_synthetic_micrographs


def run_measured(command: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Run ``command``; wall seconds, the child's peak RSS in MB, exit status, stderr."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return wall, usage.ru_maxrss * scale / 1e6, child.returncode, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micrographs", type=int, default=20)
    parser.add_argument("--side", type=int, default=4096, help="micrograph side in pixels")
    parser.add_argument("--particles", type=int, default=200, help="particles per micrograph")
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--particle-size", type=int, default=160, help="render size of a particle in pixels"
    )
    parser.add_argument("--dir", default=None, help="folder for the temporary files")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        root = Path(folder)
        t0 = time.perf_counter()
        data = write_synthetic_micrographs(
            root,
            n_micrographs=args.micrographs,
            shape=(args.side, args.side),
            n_particles=args.particles,
            particle_size=args.particle_size,
            pixel_size=1.0,
        )
        t_write = time.perf_counter() - t0
        size_gb = sum(p.stat().st_size for p in data.micrographs) / 1e9
        print(
            f"wrote {args.micrographs} micrographs of {args.side}x{args.side} ({size_gb:.2f} GB)"
            f" with {len(data.truth)} particles in {t_write:.1f} s",
            flush=True,
        )
        command = [
            sys.executable,
            "-m",
            "napari_spatial_vae",
            "extract",
            str(data.micrographs_star),
            "--coords",
            str(data.coordinates_star),
            "--box",
            str(args.box),
            "--size",
            str(args.size),
            "-o",
            str(root / "Extract" / "particles.star"),
        ]
        wall, peak_mb, code, err = run_measured(command, root)
        print(err.rstrip())
        if code != 0:
            raise SystemExit(f"extract failed with exit status {code}")
        row = {
            "micrographs": args.micrographs,
            "side": args.side,
            "picks": len(data.truth),
            "box": args.box,
            "size": args.size,
            "seconds": round(wall, 2),
            "micrographs_per_s": round(args.micrographs / wall, 2),
            "peak_rss_mb": round(peak_mb),
        }
        print(f"extract: {wall:.1f} s, peak RSS {peak_mb:.0f} MB")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
