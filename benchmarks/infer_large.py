"""Inference over a stack larger than memory: images/s and peak RSS.

Creates a sparse MRC stack (default 300,000 x 64 x 64 float32, 4.9 GB, almost no disk used)
in a temporary folder, trains nothing (a tiny freshly initialised model is saved as a run),
then runs ``iter_inference`` over the whole stack, keeping the poses (as the CLI does) and
writing the aligned particles and reconstructions through ``io.MrcsWriter``, as
``spatial-vae infer --aligned --reconstructions`` does. Prints images/s and the peak resident
memory, which should stay far below the stack size (target < 2 GB at any size).

    python benchmarks/infer_large.py [--n 300000] [--size 64] [--batch 1024] [--limit N]
    python benchmarks/infer_large.py --model defaults --batch 256 --limit 4096 [--refine-steps 0]
        [--half-turn-check auto|on|off]

``--model tiny`` (the default here) is a small MLP-encoder model that measures the pipeline;
``--model defaults`` is the model ``spatial-vae train`` builds by default (z-dim 1), for the
cost of inference as users meet it, with z read as ``spatial-vae infer`` reads it (one latent:
its posterior on a grid; ``--refine-steps 0``: the encoder's z).

Holes in a sparse file read as zeros straight from the page cache, so this measures the
pipeline's own cost (reading, encoding, decoding, writing), not the disk. The outputs are
written next to the input in the temporary folder (sparse too) and deleted at the end.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import torch

from napari_spatial_vae.core.config import (
    HALF_TURN_CHECK_CHOICES,
    REFINE_Z_STEPS,
    ModelConfig,
    TrainConfig,
)
from napari_spatial_vae.core.infer import iter_inference
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.performance import release_large_blocks
from napari_spatial_vae.core.posterior_z import summarise_training_z
from napari_spatial_vae.io import MrcsWriter, read_stack


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def rss_breakdown_mb() -> str:
    """Current anonymous vs file-backed resident memory (Linux): mapped file pages are page
    cache the kernel can drop, anonymous pages are what the process really holds."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
    except OSError:
        return "n/a"
    parts = [f"{k} {int(fields[k].split()[0]) / 1024:.0f} MB" for k in ("RssAnon", "RssFile")]
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000, help="images in the stack")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=0, help="stop after this many images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", default=None, help="folder for the temporary files")
    parser.add_argument("--model", choices=("tiny", "defaults"), default="tiny")
    parser.add_argument("--refine-steps", type=int, default=REFINE_Z_STEPS)
    parser.add_argument(
        "--search-rotation", action="store_true",
        help="each particle's rotation searched on the whole circle (--model defaults)",
    )  # fmt: skip
    parser.add_argument(
        "--half-turn-check", choices=HALF_TURN_CHECK_CHOICES, default="auto",
        help="the run's setting (--model defaults): unless off, each particle is also read "
        "a half turn away",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_config = (
        ModelConfig(z_dim=2, hidden_dim=32, encoder="mlp")
        if args.model == "tiny"
        else ModelConfig(z_dim=1, half_turn_check=args.half_turn_check)
    )
    config = TrainConfig(model=model_config, device="cpu")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "large.mrcs"
        with mrcfile.new_mmap(
            path, shape=(args.n, args.size, args.size), mrc_mode=2, overwrite=True
        ) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = 1.0
        print(
            f"stack: {args.n} x {args.size} x {args.size} float32, "
            f"{path.stat().st_size / 1e9:.2f} GB (sparse)"
        )
        print(f"peak RSS before: {peak_rss_mb():.0f} MB")
        stack = read_stack(path)
        model = SpatialVAE(config.model, (1, args.size, args.size)).eval()
        if config.model.z_dim == 1:
            # what training keeps at its end (core/posterior_z.py): z's range and prior, here
            # N(0, 1)'s, so inference reads z on a grid as for a trained run
            model.training_z = summarise_training_z(torch.zeros(1, 1), torch.ones(1, 1))
        shape = (args.size, args.size)
        total = args.limit or len(stack)
        done = 0
        poses: list = []
        release_large_blocks()  # as `spatial-vae infer` does
        t0 = time.perf_counter()
        with (
            MrcsWriter(Path(folder) / "aligned.mrcs", total, shape, 1.0) as aligned,
            MrcsWriter(Path(folder) / "recon.mrcs", total, shape, 1.0) as recon,
        ):
            for batch in iter_inference(
                model,
                config,
                stack,
                args.batch,
                aligned=True,
                reconstructions=True,
                refine_steps=args.refine_steps,
                search_rotation=args.search_rotation,
            ):
                take = min(len(batch.poses.theta), total - done)
                poses.append(batch.poses)  # small: ~12 numbers per image, as the CLI keeps
                aligned.write(batch.start, batch.aligned[:take])
                recon.write(batch.start, batch.reconstructions[:take])
                done += take
                if done >= total:
                    break
        seconds = time.perf_counter() - t0
        if not args.refine_steps:
            reading = "the encoder's z"
        elif model.training_z is not None:
            reading = "z read from its posterior"
        else:
            reading = f"z refined in {args.refine_steps} steps"
        if args.search_rotation:
            reading += ", the rotation searched on the whole circle"
        if model.reads_half_turns:
            reading += ", each particle also read a half turn away"
        print(
            f"inferred {done} images in {seconds:.1f} s: {done / seconds:,.0f} images/s "
            f"({args.model} model, {reading}; encode + aligned particles + reconstructions, "
            "written as .mrcs)"
        )
        print(f"peak RSS: {peak_rss_mb():.0f} MB (now: {rss_breakdown_mb()})")


if __name__ == "__main__":
    main()
