"""Peak memory of training steps against the estimate training uses to pick a batch size.

Each case runs in a fresh process: two full training steps (forward, backward, Adam) on
random images, then the growth of the peak resident memory over the process before the steps
is compared with :func:`napari_spatial_vae.core.memory.step_bytes_per_image` (without its
25 % margin). Prints one line per case and a JSON row.

    python benchmarks/training_memory.py                      # the calibration cases
    python benchmarks/training_memory.py --case 256:64        # SIZE:BATCH[:field=value,...]
"""

from __future__ import annotations

import argparse
import ast
import json
import resource
import subprocess
import sys

import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.memory import step_bytes_per_image
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.step import draw_noise, loss_terms

CASES = [
    "32:32", "64:32", "64:64", "96:32", "128:16", "128:32", "64:32:hidden_dim=256",
    "64:32:encoder_rotations=32", "64:32:num_layers=4", "64:32:rotation_search=False",
    "64:32:circular_mask=False",
]  # fmt: skip
MARGIN = 1.25  # step_bytes_per_image's safety margin, removed for the comparison


def parse_case(case: str) -> tuple[int, int, dict]:
    size, batch, *rest = case.split(":")
    fields = {}
    for item in ",".join(rest).split(","):
        if item:
            key, _, text = item.partition("=")
            fields[key] = ast.literal_eval(text)
    return int(size), int(batch), fields


def measure(case: str) -> dict:
    """Run in this process: peak RSS growth (MB) over two steps of the case."""
    size, batch, fields = parse_case(case)
    torch.set_num_threads(2)
    model = SpatialVAE(ModelConfig(**fields), (1, size, size))
    optimizer = torch.optim.Adam(model.parameters())
    images = torch.randn(batch, 1, size, size)
    generator = torch.Generator().manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        noise = draw_noise(generator, batch, model.n_latent, True, slice(None), torch.device("cpu"))
        loss = loss_terms(model, images, noise, False).neg_elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    estimate = step_bytes_per_image(model.config, (1, size, size)) * batch / MARGIN
    return {
        "case": case,
        "measured_mb": round((peak - before) / 1024, 1),
        "estimate_mb": round(estimate / 1024**2, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", action="append", help="SIZE:BATCH[:field=value,...]")
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(measure(args.inside)))
        return
    rows = []
    for case in args.case or CASES:
        done = subprocess.run(
            [sys.executable, __file__, "--inside", case], capture_output=True, text=True, check=True
        )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["ratio"] = round(row["estimate_mb"] / row["measured_mb"], 2)
        rows.append(row)
        print(
            f"{case:32s} measured {row['measured_mb']:8.1f} MB  estimate {row['estimate_mb']:8.1f}"
            f" MB  ratio {row['ratio']:.2f}",
            flush=True,
        )
    print(json.dumps({"cases": rows, "worst_ratio": min(r["ratio"] for r in rows)}))


if __name__ == "__main__":
    main()
