"""Training throughput of this package against the naive baseline, in one process.

Prints, for the paper's configurations

* (a) 28x28 Bernoulli, z=2, H=500, rotation + translation,
* (b) 40x40 Gaussian, z=1, H=500, rotation with augmentation,
* (c) the same with H=1000,
* the project's defaults (equivariant encoder, H=128, 40x40, fit-noise),

the images/s of the naive baseline (``../shared/bench/naive_svae.py``, imported from its path,
never copied) and of our training step (MLP encoder and the paper's settings for (a)-(c):
batch 100; fp32, and bf16 where asked), the ratio ours/naive and the achieved GFLOP/s
counted from the layer shapes. It also measures the GEMM rate of the generator's hidden
layer shape (the ceiling: the per-pixel HxH layers are GEMMs). Timed blocks of the
contenders are interleaved, so a machine shared with other work slows them alike; the
median over repeats is reported.

    python benchmarks/throughput.py                       # everything, ~1 min per config
    python benchmarks/throughput.py --configs a --steps 4 --repeats 3
    python benchmarks/throughput.py --elbo-epochs 2 --configs a   # ELBO at equal epochs
    python benchmarks/throughput.py --device cuda --steps 20      # GPU (naive on the GPU too)
    python benchmarks/throughput.py --configs default half_turn_check=on  # a setting's cost
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch
from particles_accuracy import apply_overrides  # same folder: run as a script

from napari_spatial_vae.core.config import ModelConfig, TrainConfig
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.performance import (
    generator_autocast,
    make_adam,
    matmul_precision,
    retained_freed_memory,
)
from napari_spatial_vae.core.step import draw_noise, loss_terms

NAIVE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "naive_svae.py"


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration (the paper's names)."""

    name: str
    size: int
    likelihood: str
    z_dim: int
    hidden: int
    translate: bool
    augment: bool
    batch: int = 100
    encoder: str = "mlp"
    fit_noise: bool = False
    naive: bool = True
    encoder_noise: float = 0.0  # the training default's extra noise in the encoder's view


SETTINGS = {
    "a": Setting("(a) 28px bern z2 H500 rot+tr", 28, "bernoulli", 2, 500, True, False),
    "b": Setting("(b) 40px gauss z1 H500 rot+aug", 40, "gaussian", 1, 500, False, True),
    "c": Setting("(c) 40px gauss z1 H1000 rot+aug", 40, "gaussian", 1, 1000, False, True),
    "default": Setting(
        "defaults 40px equivariant H128",
        40,
        "gaussian",
        2,
        128,
        True,
        True,
        batch=64,
        encoder="equivariant",
        fit_noise=True,
        naive=False,
        encoder_noise=TrainConfig().encoder_noise,
    ),
}


def load_naive(path: Path) -> ModuleType:
    """Import the baseline script as a module, from where it lives."""
    spec = importlib.util.spec_from_file_location("naive_svae", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import the naive baseline from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(setting: Setting, mask: bool) -> ModelConfig:
    """Our model with the paper's settings (dx prior 0.05 = the baseline's 0.1 coordinate units)."""
    return ModelConfig(
        z_dim=setting.z_dim,
        hidden_dim=setting.hidden,
        num_layers=2,
        encoder=setting.encoder,  # type: ignore[arg-type]
        likelihood=setting.likelihood,  # type: ignore[arg-type]
        translate=setting.translate,
        fit_noise=setting.fit_noise,
        dx_prior=0.05,
        circular_mask=mask,
    )


def flops_per_image(setting: Setting, n_pixels: int, dense_first_layer: bool) -> float:
    """Training FLOPs per image from the layer shapes (backward = 2x forward).

    Generator: per pixel a first layer (K = 3 for ours: x, y, bias/z folded; K = 2 + z for
    the baseline's concatenation), one HxH layer, an H x n_out output layer. Encoder: MLP on
    the flattened image (times the number of rotated copies for the equivariant encoder).
    """
    h, d = setting.hidden, setting.size * setting.size
    n_out = 2 if setting.fit_noise else 1
    k_first = 2 + setting.z_dim if dense_first_layer else 3
    generator = n_pixels * 2 * (k_first * h + h * h + h * n_out)
    n_latent = setting.z_dim + 1 + (2 if setting.translate else 0)
    copies = 16 if setting.encoder == "equivariant" else 1
    encoder = copies * 2 * (d * h + h * h + h * 2 * n_latent)
    return 3.0 * (generator + encoder)


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> float:
    """GFLOP/s of ``(m, k) @ (k, n)``, best of a few."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best = math.inf
    for _ in range(4):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(naive: ModuleType | None, n: int, size: int, seed: int = 0) -> np.ndarray:
    """The baseline's hinge images (or simple blobs when the baseline is not available)."""
    if naive is not None:
        return naive.synthetic_images(n, size, seed)
    from napari_spatial_vae.core.simulate import simulate_particles

    images = simulate_particles(n, size=size, seed=seed).images.astype(np.float32)
    return (images - images.min()) / (images.max() - images.min())


def our_stepper(
    setting: Setting,
    images: torch.Tensor,
    precision: str,
    mask: bool,
    device: torch.device,
    overrides: list[str] | None = None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], SpatialVAE]:
    """Our training step (the one ``train`` runs) on resident images; returns (step, model).

    ``overrides``: model ``field=value`` items on top of the setting's configuration.
    """
    torch.manual_seed(0)
    config = TrainConfig(model=model_config(setting, mask))
    apply_overrides(config, overrides or [])
    model = SpatialVAE(config.model, (1, setting.size, setting.size)).to(device)
    optimizer = make_adam(model.parameters(), 1e-4, device)
    generator = torch.Generator(device=device).manual_seed(0)
    augment = setting.augment and model.config.infers_rotation

    def step(batch: torch.Tensor) -> torch.Tensor:
        with matmul_precision(precision, device):  # TF32 for this contender alone
            return _step(batch)

    def _step(batch: torch.Tensor) -> torch.Tensor:
        noise = draw_noise(
            generator,
            len(batch),
            model.n_latent,
            augment,
            slice(None),
            device,
            setting.encoder_noise,
            tuple(batch.shape[1:]),
        )
        terms = loss_terms(model, batch, noise, False, generator_autocast(precision, device))
        optimizer.zero_grad(set_to_none=True)
        terms.neg_elbo.mean().backward()
        optimizer.step()
        return terms.neg_elbo.detach()

    return step, model


def naive_stepper(
    naive: ModuleType, setting: Setting, device: torch.device
) -> Callable[[torch.Tensor], Any]:
    """The baseline's ``train_step`` with its own model and Adam (lr 1e-4)."""
    torch.manual_seed(0)
    model = naive.SpatialVAE(
        setting.size, setting.z_dim, setting.hidden, True, setting.translate
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    args = SimpleNamespace(
        augment_rotation=setting.augment, size=setting.size, likelihood=setting.likelihood
    )

    def step(batch: torch.Tensor) -> Any:
        return naive.train_step(model, optimizer, batch.flatten(1), args)

    if device.type != "cpu" and not getattr(naive, "_patched_for_device", False):
        # its per-image PIL rotation needs host tensors: round-trip them, as a naive GPU port would
        rotate = naive.rotate_with_pil
        naive.rotate_with_pil = lambda y, size: tuple(t.to(y.device) for t in rotate(y.cpu(), size))
        naive._patched_for_device = True

    return step


def time_steps(step: Callable, batches: list[torch.Tensor], device: torch.device) -> float:
    """Images/s over ``batches`` (one untimed warm-up step first)."""
    step(batches[0])
    _sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    _sync(device)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def benchmark(
    setting: Setting,
    naive: ModuleType | None,
    args: argparse.Namespace,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Interleaved timing of the baseline and our variants; one row per contender."""
    n = setting.batch * (args.steps + 1)
    data = torch.from_numpy(synthetic(naive, n, setting.size)).float()
    if setting.likelihood == "gaussian":
        flat = data.flatten(1)
        data = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).reshape(data.shape)
    images = data[:, None].to(device)
    batches = list(images.split(setting.batch))[: args.steps]
    contenders: dict[str, tuple[Callable, float]] = {}
    n_all = setting.size**2
    if setting.naive and naive is not None:
        naive_step = naive_stepper(naive, setting, device)
        contenders["naive (fp32)"] = (
            naive_step,
            flops_per_image(setting, n_all, dense_first_layer=True),
        )
    for precision in args.precisions:
        for mask in (False, True):
            step, model = our_stepper(setting, images, precision, mask, device)
            pixels = len(model.pixel_index)
            label = f"ours {precision}" + (" mask" if mask else "")
            contenders[label] = (step, flops_per_image(setting, pixels, dense_first_layer=False))
        if args.compile:
            # the generator compiled as `spatial-vae train --compile` does (mode as given)
            step, model = our_stepper(setting, images, precision, True, device)
            model.generator.compile(mode=None if args.compile == "default" else args.compile)
            label = f"ours {precision} mask compiled {args.compile}"
            pixels = len(model.pixel_index)
            contenders[label] = (step, flops_per_image(setting, pixels, dense_first_layer=False))
        if args.overrides and setting.encoder == "equivariant":
            # the same step with the given settings, timed in the same interleaved blocks
            step, model = our_stepper(setting, images, precision, True, device, args.overrides)
            label = f"ours {precision} mask {' '.join(args.overrides)}"
            pixels = len(model.pixel_index)
            contenders[label] = (step, flops_per_image(setting, pixels, dense_first_layer=False))
    rates: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(args.repeats):
        for label, (step, _) in contenders.items():
            if label.startswith("naive"):
                rates[label].append(time_steps(step, batches, device))
            else:
                with retained_freed_memory(device.type == "cpu"):
                    rates[label].append(time_steps(step, batches, device))
    naive_rate = statistics.median(rates["naive (fp32)"]) if "naive (fp32)" in rates else None
    rows = []
    for label, (_, flops) in contenders.items():
        rate = statistics.median(rates[label])
        rows.append(
            {
                "config": setting.name,
                "contender": label,
                "images/s": rate,
                "GFLOP/s": rate * flops / 1e9,
                "ratio": rate / naive_rate if naive_rate else float("nan"),
            }
        )
    return rows


def elbo_at_equal_epochs(
    setting: Setting, naive: ModuleType | None, args: argparse.Namespace, device: torch.device
) -> None:
    """Train baseline, ours fp32 and ours bf16 for the same epochs; print the final ELBOs.

    Ours runs without the circular mask here so that every contender models the same pixels
    (with the mask the likelihood covers fewer pixels and the ELBO is not comparable).
    """
    data = torch.from_numpy(synthetic(naive, args.elbo_images, setting.size, seed=1)).float()
    images = data[:, None].to(device)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = [images[order[i : i + setting.batch]] for i in range(0, len(images), setting.batch)]
    print(f"\nELBO after {args.elbo_epochs} epoch(s) of {len(images)} images, {setting.name}")
    if setting.likelihood != "bernoulli":
        print("(gaussian: the baseline drops the 0.5 log 2 pi constant, compare ours with ours)")
    contenders: dict[str, Callable] = {}
    if setting.naive and naive is not None:
        contenders["naive (fp32)"] = naive_stepper(naive, setting, device)
    for precision in args.precisions:
        contenders[f"ours {precision}"] = our_stepper(setting, images, precision, False, device)[0]
    for label, step in contenders.items():
        t0 = time.perf_counter()
        for _epoch in range(args.elbo_epochs):
            total = 0.0
            for batch in batches:
                out = step(batch)
                total += (out[0] * len(batch)) if isinstance(out, tuple) else float(out.sum())
        print(
            f"  {label:14s} ELBO {-total / len(images):10.2f} (last epoch)"
            f"  {time.perf_counter() - t0:6.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="model field=value items: the defaults config also times our masked step with them",
    )
    parser.add_argument("--configs", default="a,b,c,default", help="comma list of a,b,c,default")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16,tf32")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive", type=Path, default=NAIVE, help="path of naive_svae.py")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMM rate")
    parser.add_argument(
        "--compile",
        choices=("default", "reduce-overhead", "max-autotune"),
        help="also time our masked step with the generator under torch.compile in this mode "
        "(the first, untimed step compiles it: minutes on a small CPU)",
    )
    parser.add_argument("--elbo-epochs", type=int, default=0, help="ELBO comparison instead")
    parser.add_argument("--elbo-images", type=int, default=1000)
    args = parser.parse_args()
    args.precisions = args.precisions.split(",")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    naive = load_naive(args.naive) if args.naive.exists() else None
    if naive is None:
        print(f"naive baseline not found at {args.naive}: timing ours only", file=sys.stderr)
    settings = [SETTINGS[name] for name in args.configs.split(",")]
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")

    # each of our contenders sets its own matmul precision (the naive baseline stays fp32)
    if args.elbo_epochs:
        for setting in settings:
            elbo_at_equal_epochs(setting, naive, args, device)
        return
    if not args.no_gemm:
        for hidden in sorted({s.hidden for s in settings}):
            m = 100 * int(math.pi / 4 * 40 * 40)
            fp32 = gemm_rate(m, hidden, hidden, torch.float32, device)
            bf16 = gemm_rate(m, hidden, hidden, torch.bfloat16, device)
            print(
                f"GEMM ({m} x {hidden}) @ ({hidden} x {hidden}): fp32 {fp32:.0f} GFLOP/s,"
                f" bf16 {bf16:.0f} GFLOP/s"
            )
    header = f"{'config':34s} {'contender':38s} {'images/s':>9s} {'GFLOP/s':>8s} {'x naive':>8s}"
    print(header)
    print("-" * len(header))
    for setting in settings:
        for row in benchmark(setting, naive, args, device):
            print(
                f"{row['config']:34s} {row['contender']:38s} {row['images/s']:9.1f}"
                f" {row['GFLOP/s']:8.1f} {row['ratio']:8.2f}"
            )


if __name__ == "__main__":
    main()
