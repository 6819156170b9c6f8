"""How well the half-turn warning's signal finds the particles a run learned upside down.

For a run folder kept by ``design_family.py --keep-runs`` (trained without the half-turn
check), rebuild that run's held-out particles (same design, seed, sizes and SNR: pass the
options the run was made with) and print one JSON row:

* ``signal_reported``: the share ``spatial-vae train`` reports and warns on (the first
  ``metrics.HALF_TURN_SAMPLE`` or so held-out particles, as in ``history.csv``);
* ``signal_all``: the same question over every held-out particle;
* ``flipped``: the truth (``metrics.half_turned``: particles aligned a half turn from the
  rest), and which shares of the flipped and of the upright particles the signal names.

    python benchmarks/design_family.py --split report --designs three-domain --seeds 4 \\
        --epochs 38 --minutes 60 --threads 1 --keep-runs runs
    python benchmarks/half_turn_signal.py runs/three-domain_s4 --design three-domain --seed 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from design_family import _rows  # same folder: run as a script

from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.designs import DESIGNS, simulate_design
from napari_spatial_vae.core.errors import SpatialVAEError
from napari_spatial_vae.core.infer import encode_stack
from napari_spatial_vae.core.metrics import evaluate_elbo, half_turned


def _share(mask: np.ndarray) -> float | None:
    return round(float(mask.mean()), 4) if mask.size else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder from design_family.py --keep-runs")
    parser.add_argument("--design", required=True, choices=sorted(DESIGNS))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--snr", type=float, default=None, help="as the run was trained")
    parser.add_argument("--size", type=int, default=None, help="as the run was trained")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, config, _ = load_model(args.run)
    except SpatialVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not model.can_check_half_turns:
        parser.error(f"{args.run}: this model's architecture cannot try half turns")
    model.config.half_turn_check = "off"  # the encoder's own poses, as the warning sees them
    data = simulate_design(
        DESIGNS[args.design], args.n_train + args.n_test, 1000 + args.seed, args.snr, args.size
    )
    test = _rows(data, slice(args.n_train, None))
    feeder = ImageFeeder(test.images, None, torch.device("cpu"), normalize=config.normalize)
    reported = evaluate_elbo(model, feeder, config.batch_size).half_turn_better
    with torch.no_grad():
        named = torch.cat([model.half_turn_fits_better(b) for b in feeder.batches(256)]).numpy()
    # the rotation only: z's refinement would not change it
    flipped = half_turned(
        encode_stack(model, config, test.images, refine_steps=0).theta, test.theta
    )
    row = {
        "run": str(args.run), "design": args.design, "seed": args.seed,
        "signal_reported": reported, "signal_all": _share(named),
        "flipped": _share(flipped), "named_of_flipped": _share(named[flipped]),
        "named_of_upright": _share(named[~flipped]),
    }  # fmt: skip
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
