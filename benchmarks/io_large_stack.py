"""Benchmark lazy reading of a large MRC stack.

Creates a sparse MRC stack (default 100,000 x 128 x 128 float32, 6.55 GB, almost no disk
used) in a temporary folder, then prints the time to open it with ``read_stack``, the time
to read every image in batches of 1,000 with ``read_batch`` (in order, then a few random
batches) and the peak resident memory of the process. The file is deleted at the end.

Run::

    python benchmarks/io_large_stack.py [--n 100000] [--size 128] [--batch 1000] [--dir /tmp]

Holes in a sparse file read as zeros straight from the kernel, so this measures the io
layer's overhead (gathering, conversion, memory), not the disk.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

from napari_spatial_vae.io import read_stack


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of images")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1000, help="images per read_batch")
    parser.add_argument("--random-batches", type=int, default=20)
    parser.add_argument("--dir", default=None, help="folder for the temporary file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "large.mrcs"
        shape = (args.n, args.size, args.size)
        with mrcfile.new_mmap(path, shape=shape, mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = 1.0
        size_gb = path.stat().st_size / 1e9
        print(f"file: {shape[0]} x {shape[1]} x {shape[2]} float32, {size_gb:.2f} GB (sparse)")
        print(f"peak RSS before opening: {peak_rss_mb():.0f} MB")

        t0 = time.perf_counter()
        stack = read_stack(path)
        t_open = time.perf_counter() - t0
        print(f"read_stack (open): {t_open * 1e3:.2f} ms")

        # first pass: the kernel fills its page cache (zeros for the holes); second pass:
        # served from the cache, so it isolates the io layer's own cost
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            total = 0.0
            for start in range(0, len(stack), args.batch):
                batch = stack.read_batch(range(start, min(start + args.batch, len(stack))))
                total += float(batch[:, 0, 0].sum())  # touch the result
            t_all = time.perf_counter() - t0
            print(
                f"read all {len(stack)} images in batches of {args.batch} ({label} cache):"
                f" {t_all:.2f} s ({size_gb / t_all:.2f} GB/s, {len(stack) / t_all:,.0f} images/s)"
            )

        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(args.random_batches):
            stack.read_batch(rng.choice(len(stack), args.batch, replace=False))
        t_rand = time.perf_counter() - t0
        print(
            f"{args.random_batches} random batches of {args.batch}:"
            f" {t_rand:.2f} s ({t_rand / args.random_batches * 1e3:.1f} ms per batch)"
        )
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
    print("temporary file deleted")


if __name__ == "__main__":
    main()
