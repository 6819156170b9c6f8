"""Training images/s with and without the CTF, in one process (issue 11's speed target).

Default model (equivariant encoder with rotation search over 16 candidates, H=128, batch 64)
on simulated 64-px particles at 3 Å/px. Timed blocks of the two contenders are interleaved,
so a machine shared with other work slows them alike; the median over repeats is reported
with the ratio (the target is a slowdown under 1.5x).

    python benchmarks/ctf_throughput.py                     # 64 px, 10 steps x 5 repeats
    python benchmarks/ctf_throughput.py --size 40 --steps 5 --repeats 3
    python benchmarks/ctf_throughput.py --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.data import standardize
from napari_spatial_vae.core.device import resolve_device
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.performance import make_adam
from napari_spatial_vae.core.simulate import CtfSimulation, simulate_particles
from napari_spatial_vae.core.step import draw_noise, loss_terms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    sim = simulate_particles(
        4 * args.batch, args.size, snr=0.3, ctf=CtfSimulation(), seed=0, max_shift_px=2.0
    )
    images = standardize(torch.from_numpy(sim.images)[:, None]).to(device)
    assert sim.ctf is not None
    filters = CtfBatches(sim.ctf, (args.size, args.size), device)
    config = ModelConfig(z_dim=1)
    models = {}
    for name in ("without CTF", "with CTF"):
        torch.manual_seed(0)
        model = SpatialVAE(config, (1, args.size, args.size)).to(device)
        models[name] = (model, make_adam(model.parameters(), 1e-3, device))
    generator = torch.Generator(device=device).manual_seed(0)

    def block(name: str) -> float:
        model, optimizer = models[name]
        started = time.perf_counter()
        for step in range(args.steps):
            positions = torch.arange(args.batch) + (step % 4) * args.batch
            batch = images[positions.to(device)]
            noise = draw_noise(generator, args.batch, model.n_latent, True, slice(None), device)
            # the CTF is built once per batch from the batch's parameters
            ctf = filters.filters(positions) if name == "with CTF" else None
            terms = loss_terms(model, batch, noise, False, None, ctf)
            optimizer.zero_grad(set_to_none=True)
            terms.neg_elbo.mean().backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return args.steps * args.batch / (time.perf_counter() - started)

    for name in models:  # warm-up
        block(name)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name in models:
            rates[name].append(block(name))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        json.dumps(
            {
                "size": args.size,
                "batch": args.batch,
                "device": str(device),
                "threads": args.threads,
                "img_per_s_without_ctf": round(medians["without CTF"], 1),
                "img_per_s_with_ctf": round(medians["with CTF"], 1),
                "slowdown": round(medians["without CTF"] / medians["with CTF"], 3),
                "spread_without": [round(v, 1) for v in np.sort(rates["without CTF"])],
                "spread_with": [round(v, 1) for v in np.sort(rates["with CTF"])],
            }
        )
    )


if __name__ == "__main__":
    main()
